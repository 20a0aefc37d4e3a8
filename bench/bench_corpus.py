"""The corpus as it is: STimage-1K4M-layout slides through the CLI, the release's scripts, and serially.

The slides hold a PNG, a dense count CSV and a coordinate CSV each, at the sizes of the release's Visium
slides. A release root of ``--slides`` Visium slides is generated once (cached under ``--data``): one
large slide (``--large-side`` px wide PNG, 85 % as high: 1.47 GB decoded at the default 24,000 px,
4,000 spots) and smaller ones (``--side`` px, 2,000-4,000 spots), ``--genes`` genes each. Then,
interleaved over ``--rounds`` rounds in this one run, each path in its own child process:

- *release*: the STimage-1K4M scripts' method, one process: per slide ``PIL.Image.open`` +
  ``convert('RGB')``, the coordinate CSV read with pandas, one PNG file per spot cropped at
  ``(x - r, y - r, x + r, y + r)``, the counts read with ``pd.read_csv(index_col=0)`` and written as
  sparse rows (``scipy.sparse.save_npz``);
- *stlake CLI*: ``stlake ingest --source ROOT --lake LAKE`` as a user runs it, Spark ``local[2]`` (JVM
  start-up included); its report's ``seconds`` is the ingest without the session's start;
- *serial*: the CLI's stage-1 plans and stage-2 units one after another in one process, no Spark;
- *two processes*: the same units split over two plain processes running at once (stage 1 first, then
  the units dealt longest first to the less loaded process), no Spark: what this machine gives two
  processes, which separates Spark's own cost from the machine's parallel scaling;
- *one slide*: the CLI and serial runs on the smallest slide alone, which gives the fixed cost of a job
  (CLI minus serial) and the marginal cost of a slide (the full batch minus one slide); and the CLI
  once more with Spark's own driver JVM options (``STLAKE_JVM_START=off``: no class archive, full JIT).

Reported per path: pairs/s per core (pairs / wall / cores: 1 for release and serial, 2 for the CLI),
CPU-ms per pair and the peak RSS of the whole process tree (driver, JVM, PySpark daemon and workers,
polled with psutil). Spark efficiency per core: serial wall / (ingest wall x 2), and by CPU: serial CPU /
CLI CPU, of the whole batch and of its marginal slides (the one-slide job subtracted from both); the same
for the two plain processes, and the Spark ingest's speed against theirs.

    PYTHONPATH=lib .venv/bin/python bench/bench_corpus.py    # ~25 min on 2 cores (+ ~12 min generation once)

Results: ``results/corpus.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procstats import run_tree  # noqa: E402

CORES = 2


def corpus(data: Path, slides: int, side: int, large_side: int, genes: int) -> Path:
    """The release root (written once): one large slide and ``slides - 1`` smaller ones."""
    from stlake.synth import StimageSpec, generate_stimage_slide

    root = data / f"corpus_{slides}_{side}_{large_side}_{genes}"
    done = root / "done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    specs = [StimageSpec("large_1", "Visium", 4000, large_side, genes, annotate=False)]
    specs += [StimageSpec(f"visium_{i}", "Visium", 2000 + 2000 * i // max(1, slides - 2), side, genes, annotate=False,
                          tissue=("breast", "colon", "lung", "brain")[i % 4]) for i in range(slides - 1)]
    for spec in specs:
        generate_stimage_slide(str(root), spec, 0, truth_root=str(data / "truth"))
        print(f"generated {spec.slide_id}", flush=True)
    done.write_text("ok")
    return root


def slide_files(root: Path) -> list[tuple[str, Path, Path, Path]]:
    """(slide, image, coords, counts) of every slide of the release."""
    out = []
    for image in sorted((root / "Visium" / "image").glob("*.png")):
        slide = image.stem
        out.append((slide, image, root / "Visium" / "coord" / f"{slide}_coord.csv",
                    root / "Visium" / "gene_exp" / f"{slide}_count.csv"))
    return out


def one_slide_root(root: Path, data: Path) -> Path:
    """A release root holding only the batch's smallest slide (links to its files)."""
    smallest = min(slide_files(root), key=lambda files: files[1].stat().st_size)
    one = data / "one_slide"
    shutil.rmtree(one, ignore_errors=True)
    for path in smallest[1:]:
        link = one / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    meta = (root / "meta" / "meta_all_gene.csv").read_text().splitlines()
    (one / "meta").mkdir()
    (one / "meta" / "meta_all_gene.csv").write_text("\n".join([meta[0], *(line for line in meta[1:]
                                                                         if smallest[0] in line)]) + "\n")
    return one


# ---------------------------------------------------------------- the paths (each runs in a child process)

def release(root: Path, out: Path) -> dict:
    """The release scripts' preprocessing of every slide."""
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    shutil.rmtree(out, ignore_errors=True)
    pairs = 0
    for slide, image_path, coord_path, count_path in slide_files(root):
        tiles = out / slide
        tiles.mkdir(parents=True)
        image = Image.open(image_path).convert("RGB")
        coords = pd.read_csv(coord_path, index_col=0)
        for spot, (y, x, r) in zip(coords.index, coords[["yaxis", "xaxis", "r"]].to_numpy()):
            image.crop((int(x - r), int(y - r), int(x + r), int(y + r))).save(tiles / f"{spot}.png")
        counts = pd.read_csv(count_path, index_col=0)
        sp.save_npz(out / f"{slide}_count.npz", sp.csr_matrix(counts.to_numpy()))
        (out / f"{slide}_spots.txt").write_text("\n".join(map(str, counts.index)))
        pairs += len(coords)
        del image
    return {"pairs": pairs}


def plan_all(root: Path, lake: Path) -> list:
    """The CLI's stage 1 for every slide of ``root``, in this process, tile units split as for 2 cores."""
    from stlake.ingestion.discover import find_slides
    from stlake.ingestion.options import IngestOptions
    from stlake.ingestion.plan import fill_cores, plan_slide

    options = IngestOptions(source=str(root), lake=str(lake))
    plans = [plan_slide(ref, options) for ref in find_slides(str(root)).refs]
    fill_cores(plans, CORES)
    return plans


def run_all(units: list, lake: Path, run_id: str) -> dict:
    """Stage-2 ``units`` one after another in this process; raises when one fails."""
    from stlake.ingestion.units import run_unit

    results = [run_unit(unit, str(lake), run_id) for unit in units]
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"units failed: {errors}")
    return {"pairs": sum(r.rows for r in results if r.kind == "tiles"), "units": len(results)}


def serial(root: Path, lake: Path) -> dict:
    """The CLI's stage-1 plans and stage-2 units, one after another in this process (no Spark, no commit)."""
    shutil.rmtree(lake, ignore_errors=True)
    return run_all([unit for plan in plan_all(root, lake) for unit in plan.units], lake, "serial")


def plan_halves(root: Path, out: Path) -> dict:
    """Stage 1 of every slide, its units split into ``CORES`` bins of equal estimated cost, pickled to ``out``."""
    import pickle

    from stlake.ingestion.plan import longest_first, unit_cost

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plans = plan_all(root, out / "lake")
    images = {plan.ref.slide_id: plan.image for plan in plans}
    bins: list[list] = [[] for _ in range(CORES)]
    loads = [0.0] * CORES
    for unit in longest_first(plans):  # greedy: the next longest unit to the least loaded process
        k = loads.index(min(loads))
        bins[k].append(unit)
        loads[k] += unit_cost(unit, images[unit.slide_id])
    for k, units in enumerate(bins):
        (out / f"units-{k}.pkl").write_bytes(pickle.dumps(units))
    return {"units": sum(len(b) for b in bins)}


def run_units_file(units_file: Path, lake: Path) -> dict:
    """The pickled units of one process, one after another."""
    import pickle

    return run_all(pickle.loads(units_file.read_bytes()), lake, "processes")


def processes(root: Path, out: Path) -> dict:
    """The units split over ``CORES`` plain processes running at once (no Spark): what the machine gives two.

    Stage 1 runs first in one process; its wall and CPU are added to the processes' (wall: the slowest).
    """
    from concurrent.futures import ThreadPoolExecutor

    planned = run_part("plan-halves", root, out)
    with ThreadPoolExecutor(CORES) as pool:
        halves = list(pool.map(lambda k: run_part("units", out / f"units-{k}.pkl", out / "lake"), range(CORES)))
    return {"pairs": sum(h["pairs"] for h in halves), "wall_s": planned["wall_s"] + max(h["wall_s"] for h in halves),
            "cpu_s": planned["cpu_s"] + sum(h["cpu_s"] for h in halves),
            "peak_tree_rss": sum(h["peak_tree_rss"] for h in halves), "process_walls": [h["wall_s"] for h in halves]}


def run_part(part: str, root: Path, out: Path) -> dict:
    """``release`` or ``serial`` in a child process: its result plus wall, CPU and peak RSS of the tree."""
    measured = run_tree([sys.executable, __file__, "--part", part, str(root), str(out)])
    return {**json.loads(measured.pop("stdout").strip().splitlines()[-1]), **measured}


def stlake_cli(root: Path, lake: Path, jvm_start: bool = True) -> dict:
    """``stlake ingest`` in a child process: wall, CPU and peak RSS of its process tree, and its report.

    ``jvm_start=False`` starts the driver JVM with Spark's own options (``STLAKE_JVM_START=off``).
    """
    from stlake.jvmstart import SWITCH_VARIABLE

    shutil.rmtree(lake, ignore_errors=True)
    env = None if jvm_start else {**os.environ, SWITCH_VARIABLE: "off"}
    measured = run_tree([sys.executable, "-m", "stlake.cli", "ingest", "--source", str(root), "--lake", str(lake),
                         "--json"], env=env)
    text = measured.pop("stdout")
    report = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return {**measured, "ingest_s": report["seconds"], "pairs": report["rows"]["spots"],
            "landed": len(report["landed"]), "rejected": report["rejected"], "tasks": report["tasks"]}


# ---------------------------------------------------------------- one round

def per_core(path: dict, cores: int, wall: str = "wall_s") -> float:
    """Pairs per second per core of a path."""
    return path["pairs"] / path[wall] / cores


def ratios(rel: dict, cli: dict, ser: dict, one_cli: dict, one_ser: dict, procs: dict) -> dict:
    """The round's ratios (see the module docstring)."""
    marginal_cli = cli["cpu_s"] - one_cli["cpu_s"]
    marginal_ser = ser["cpu_s"] - one_ser["cpu_s"]
    return {
        "ratio_pairs_per_core": per_core(cli, CORES) / per_core(rel, 1),
        "ratio_pairs_per_core_warm": per_core(cli, CORES, "ingest_s") / per_core(rel, 1),
        "ratio_cpu_per_pair": (rel["cpu_s"] / rel["pairs"]) / (cli["cpu_s"] / cli["pairs"]),
        "spark_efficiency": ser["wall_s"] / (cli["ingest_s"] * CORES),
        "spark_efficiency_cpu": ser["cpu_s"] / cli["cpu_s"],
        "spark_efficiency_cpu_marginal": marginal_ser / marginal_cli,
        "fixed_cpu_s": one_cli["cpu_s"] - one_ser["cpu_s"],
        "processes_efficiency": ser["wall_s"] / (procs["wall_s"] * CORES),
        "processes_cpu_ratio": procs["cpu_s"] / ser["cpu_s"],
        "spark_vs_processes": procs["wall_s"] / cli["ingest_s"],
    }


def start_ratios(one_cli: dict, one_plain: dict) -> dict:
    """The one-slide job with stlake's JVM start options against Spark's own: CPU and wall of the whole run."""
    return {"jvm_start_cpu_ratio": one_plain["cpu_s"] / one_cli["cpu_s"],
            "jvm_start_jvm_cpu_ratio": one_plain["cpu_by_kind"].get("jvm", 0.0) / one_cli["cpu_by_kind"]["jvm"],
            "jvm_start_wall_ratio": one_plain["wall_s"] / one_cli["wall_s"]}


def round_line(number: int, row: dict) -> str:
    """One printed line per round."""
    rel, cli, ser = row["release"], row["stlake_cli"], row["serial"]
    return (f"round {number}: release {per_core(rel, 1):.0f} pairs/s/core ({1000 * rel['cpu_s'] / rel['pairs']:.2f} "
            f"CPU-ms/pair) | CLI {per_core(cli, CORES):.0f} pairs/s/core, ingest alone "
            f"{per_core(cli, CORES, 'ingest_s'):.0f} ({1000 * cli['cpu_s'] / cli['pairs']:.2f} CPU-ms/pair) | serial "
            f"{per_core(ser, 1):.0f} pairs/s ({1000 * ser['cpu_s'] / ser['pairs']:.2f} CPU-ms/pair) | CLI/release "
            f"{row['ratio_pairs_per_core']:.2f}x (warm {row['ratio_pairs_per_core_warm']:.2f}x), Spark efficiency "
            f"{row['spark_efficiency']:.2f} (CPU {row['spark_efficiency_cpu']:.2f}, marginal "
            f"{row['spark_efficiency_cpu_marginal']:.2f}), fixed {row['fixed_cpu_s']:.1f} CPU-s per job | two plain "
            f"processes: efficiency {row['processes_efficiency']:.2f}, {row['processes_cpu_ratio']:.2f}x serial's CPU; "
            f"Spark ingest {row['spark_vs_processes']:.2f}x their speed | one-slide "
            f"job with Spark's own JVM options: {row['jvm_start_cpu_ratio']:.2f}x the CPU (JVM "
            f"{row['jvm_start_jvm_cpu_ratio']:.2f}x), {row['jvm_start_wall_ratio']:.2f}x the wall")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/stlake_bench/corpus")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--side", type=int, default=10000)
    parser.add_argument("--large-side", type=int, default=24000)
    parser.add_argument("--genes", type=int, default=15000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generate-only", action="store_true", help="write the release root and stop")
    parser.add_argument("--part", nargs=3, metavar=("PART", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        part, root_arg, out_arg = args.part
        work = {"release": release, "serial": serial, "plan-halves": plan_halves, "units": run_units_file}[part]
        print(json.dumps(work(Path(root_arg), Path(out_arg))))
        return 0
    data = Path(args.data)
    root = corpus(data, args.slides, args.side, args.large_side, args.genes)
    if args.generate_only:
        return 0
    one = one_slide_root(root, data)
    rounds = []
    for number in range(1, args.rounds + 1):
        row = {"release": run_part("release", root, data / "release_out"),
               "stlake_cli": stlake_cli(root, data / "lake"),
               "serial": run_part("serial", root, data / "serial_lake"),
               "processes": processes(root, data / "processes"),
               "one_slide_cli": stlake_cli(one, data / "lake_one"),
               "one_slide_serial": run_part("serial", one, data / "serial_lake_one"),
               "one_slide_cli_spark_jvm_options": stlake_cli(one, data / "lake_one", jvm_start=False)}
        row.update(ratios(row["release"], row["stlake_cli"], row["serial"], row["one_slide_cli"],
                          row["one_slide_serial"], row["processes"]))
        row.update(start_ratios(row["one_slide_cli"], row["one_slide_cli_spark_jvm_options"]))
        rounds.append(row)
        write(root, args, rounds)
        print(round_line(number, row), flush=True)
    print("medians:", json.dumps({k: round(v, 2) for k, v in write(root, args, rounds).items()}))
    return 0


def write(root: Path, args: argparse.Namespace, rounds: list[dict]) -> dict:
    """``results/corpus.json`` with the rounds so far and their medians; returns the medians."""
    keys = [key for key, value in rounds[0].items() if isinstance(value, float)]
    summary = {key: statistics.median(r[key] for r in rounds) for key in keys}
    out = HERE / "results" / "corpus.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "slides": len(slide_files(root)), "rounds": rounds,
                               "medians": summary}, indent=2))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(HERE.parent / "lib"))
    sys.exit(main())
