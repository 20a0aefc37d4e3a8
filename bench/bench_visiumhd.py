"""VisiumHD scaling: cost per pair and peak memory at 40k / 160k / 640k / 2.56M bins, all at 2 µm.

Each size is a synthetic VisiumHD slide (``stlake synth --hd-bins N``: N x N 8-µm bins, 4N x 4N 2-µm
bins) ingested at ``--bin-size 2`` in a fresh child process (Spark ``local[2]``, one warm-up ingest of
a tiny slide first, so JVM and worker start-up are not counted). The 160k size runs twice (before and
after the largest) to show the machine's noise. Per size: pairs landed, wall seconds, CPU seconds of
the whole process tree (driver, JVM, Python workers) per pair, the peak RSS of the driver (sampled, and
its VmHWM), the JVM, one Python worker and the whole tree, and the pickled size of the largest tile and
expression unit.

    PYTHONPATH=lib .venv/bin/python bench/bench_visiumhd.py            # ~15 min on 2 busy cores
    PYTHONPATH=lib .venv/bin/python bench/bench_visiumhd.py --quick    # 40k and 160k only

Results: ``results/visiumhd.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: (label, 8 µm bins per side): the 2 µm level has (4 N)^2 bins.
SIZES = (("40k", 50), ("160k", 100), ("640k", 200), ("2.56M", 400), ("160k again", 100))
BIN_UM = 2


def dataset(data: Path, n_side: int) -> Path:
    """The synthetic slide with ``n_side`` 8-µm bins per side (written once, then reused)."""
    from stlake.synth import generate
    from stlake.synth.specs import get_sizes

    root = data / f"hd{n_side}"
    if not (root / "manifest.csv").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(str(root), size=dataclasses.replace(get_sizes("small"), hd_bins=n_side), layouts=("visiumhd",))
    return root


def unit_bytes(manifest: str) -> dict[str, int]:
    """Pickled size of the largest tile unit and expression unit of the slide's plan."""
    from stlake.ingestion.discover import find_slides
    from stlake.ingestion.options import IngestOptions
    from stlake.ingestion.plan import TileUnit, plan_slide

    options = IngestOptions(source=manifest, lake="", bin_size_um=BIN_UM)
    plan = plan_slide(find_slides(manifest).refs[0], options)
    sizes: dict[str, int] = {"tiles": 0, "expression": 0}
    for unit in plan.units:
        kind = "tiles" if isinstance(unit, TileUnit) else "expression"
        sizes[kind] = max(sizes[kind], len(pickle.dumps(unit)))
    return sizes


def child(root: str, warm_root: str, lake: str) -> dict:
    """One timed ingest at 2 µm in this fresh process, after a warm-up ingest."""
    from procstats import TreeSampler, proc_status, reset_peak
    from stlake.ingestion.driver import ingest
    from stlake.ingestion.options import IngestOptions
    from stlake.lake import tables
    from stlake.spark import spark_session

    sampler = TreeSampler(0.2)
    sampler.start()
    spark = spark_session("bench-visiumhd", master="local[2]")
    ingest(spark, IngestOptions(source=os.path.join(warm_root, "manifest.csv"), lake=lake + "-warm",
                                bin_size_um=8))
    sampler.reset()
    reset_peak()  # the driver's VmHWM from here on
    before = sampler.cpu_seconds()
    started = time.perf_counter()
    report = ingest(spark, IngestOptions(source=os.path.join(root, "manifest.csv"), lake=lake, bin_size_um=BIN_UM))
    wall = time.perf_counter() - started
    driver_hwm = proc_status()["VmHWM"]
    cpu = sampler.cpu_seen_by_kind(before)  # processes that ended during the run count too
    window = sampler.window()
    sampler.stop()
    pairs = report.rows.get("spots", 0)
    assert report.landed == ["visiumhd_1"], report.rejected
    assert report.rows.get("expression") == pairs
    bins = len(tables.read_table(lake, "spots", columns=["spot_id"]))
    return {"pairs": pairs, "bins_landed": bins, "wall_s": wall, "cpu_s": sum(cpu.values()), "cpu_by_kind": cpu,
            "tasks": report.tasks, "unit_seconds": report.unit_seconds,
            "peak_decoded_bytes": max(report.peak_decoded_bytes.values()), "driver_vmhwm": driver_hwm, **window}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/stlake_bench/visiumhd")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these sizes (e.g. 640k 2.56M)")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "WARM", "LAKE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        os._exit(0)  # no interpreter teardown with a live JVM and sampler thread
    from procstats import run_child

    data = Path(args.data)
    sizes = SIZES[:2] if args.quick else SIZES
    if args.only:
        sizes = tuple(size for size in SIZES if size[0] in args.only)
    warm = dataset(data, 10)
    rows = []
    for label, n_side in sizes:
        root = dataset(data, n_side)
        lake = data / "lake"
        shutil.rmtree(lake, ignore_errors=True)
        shutil.rmtree(str(lake) + "-warm", ignore_errors=True)
        result = run_child(__file__, "--child", str(root), str(warm), str(lake))
        result.update(label=label, bins_2um=(4 * n_side) ** 2, unit_bytes=unit_bytes(str(root / "manifest.csv")))
        result["cpu_ms_per_pair"] = 1000 * result["cpu_s"] / result["pairs"]
        result["wall_ms_per_pair"] = 1000 * result["wall_s"] / result["pairs"]
        rows.append(result)
        peaks = result["peak_by_kind"]
        print(f"{label:>10s}: {result['pairs']:>9,} pairs  {result['wall_s']:7.1f} s  "
              f"{result['cpu_ms_per_pair']:.3f} CPU-ms/pair  {result['wall_ms_per_pair']:.3f} wall-ms/pair  "
              f"driver {peaks.get('driver', 0) / 2**20:.0f} MiB (VmHWM {result['driver_vmhwm'] / 2**20:.0f})  "
              f"jvm {peaks.get('jvm', 0) / 2**20:.0f} MiB  "
              f"worker {peaks.get('python worker', 0) / 2**20:.0f} MiB  tree {result['max_tree_rss'] / 2**20:.0f} MiB  "
              f"units {result['unit_bytes']}", flush=True)
    base = [r for r in rows if r["label"].startswith("160k")]
    summary = {"rows": rows}
    if base and len(rows) > 2:
        ref = min(r["cpu_ms_per_pair"] for r in base)
        summary["cpu_per_pair_vs_160k"] = {r["label"]: r["cpu_ms_per_pair"] / ref for r in rows}
        print("CPU per pair vs the better 160k run:", json.dumps(summary["cpu_per_pair_vs_160k"]))
    name = "quick" if args.quick else "-".join(args.only) if args.only else ""
    out = HERE / "results" / (f"visiumhd.{name}.json" if name else "visiumhd.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
