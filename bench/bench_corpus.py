"""The corpus as it is: STimage-1K4M-layout slides through the CLI, the release's scripts, and serially.

The slides hold a PNG, a dense count CSV and a coordinate CSV each. They run through the CLI, through
the release's own preprocessing (re-implemented faithfully), and serially in one process.

A release root of ``--slides`` Visium slides is generated once (cached under ``--data``): one large
slide (``--large-side`` px PNG, 3,000 spots) and smaller ones (``--side`` px, 1,500-2,500 spots,
``--genes`` genes). Then, interleaved over ``--rounds`` rounds in this one run:

- *release*: the STimage-1K4M scripts' method in one process: per slide ``PIL.Image.open`` +
  ``convert('RGB')``, the coordinate CSV read with pandas, one PNG file per spot cropped at
  ``(x - r, y - r, x + r, y + r)``, the counts read with ``pd.read_csv(index_col=0)`` and written as
  sparse rows (``scipy.sparse.save_npz``);
- *stlake CLI*: ``stlake ingest --source ROOT --lake LAKE`` as a child process, Spark ``local[2]``
  (JVM start-up included, as a user runs it); its report's own ``seconds`` is the ingest without it;
- *serial*: the same stage-1 plans and stage-2 units run one after another in this process, no Spark.

Reported per path: pairs/s per core (pairs / wall / cores: 1 for release and serial, 2 for the CLI),
CPU seconds per pair (this process's CPU for release and serial, the CLI's whole process tree from
polled with psutil), and the Spark efficiency per core: serial wall / (ingest wall x 2). On a busy
machine wall times swing with the load; CPU seconds per pair much less.

    PYTHONPATH=lib .venv/bin/python bench/bench_corpus.py    # a few minutes on 2 cores (+ generation once)

Results: ``results/corpus.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import scipy.sparse as sp
from PIL import Image

HERE = Path(__file__).resolve().parent
Image.MAX_IMAGE_PIXELS = None
CORES = 2


def corpus(data: Path, slides: int, side: int, large_side: int, genes: int) -> Path:
    """The release root (written once): one large slide and ``slides - 1`` smaller ones."""
    from stlake.synth import StimageSpec, generate_stimage_slide

    root = data / f"corpus_{slides}_{side}_{large_side}_{genes}"
    done = root / "done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    specs = [StimageSpec("large_1", "Visium", 3000, large_side, genes, annotate=False)]
    specs += [StimageSpec(f"visium_{i}", "Visium", 1500 + 1000 * i // max(1, slides - 2), side, genes, annotate=False,
                          tissue=("breast", "colon", "lung", "brain")[i % 4]) for i in range(slides - 1)]
    for spec in specs:
        generate_stimage_slide(str(root), spec, 0, truth_root=str(data / "truth"))
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


def release(root: Path, out: Path) -> int:
    """The release scripts' preprocessing of every slide; returns the pairs written."""
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
    return pairs


def tree_cpu(proc: subprocess.Popen, interval: float = 0.2) -> float:
    """CPU seconds of ``proc`` and all its descendants, polled until it exits.

    Spark's Python daemon and workers are not always reaped by their parents when the JVM stops,
    so ``RUSAGE_CHILDREN`` misses them: each process's last seen CPU time is summed instead
    (at most ``interval`` seconds per process go unseen).
    """
    import psutil

    root, seen = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for child in procs:
            try:
                times = child.cpu_times()
                seen[child.pid] = times.user + times.system
            except psutil.Error:
                pass
        time.sleep(interval)
    return sum(seen.values())


def stlake_cli(root: Path, lake: Path) -> dict:
    """``stlake ingest`` in a child process: wall, CPU of the child's process tree, the report."""
    shutil.rmtree(lake, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stlake.cli", "ingest", "--source", str(root), "--lake", str(lake),
                             "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = tree_cpu(proc)
    text, errors = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"stlake ingest failed (rc {proc.returncode}):\n{errors[-3000:]}")
    report = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return {"wall_s": wall, "cpu_s": cpu, "ingest_s": report["seconds"], "pairs": report["rows"]["spots"],
            "landed": len(report["landed"]), "rejected": report["rejected"], "tasks": report["tasks"]}


def serial(root: Path, lake: Path) -> dict:
    """The CLI's stage-1 plans and stage-2 units, one after another in this process (no Spark, no commit)."""
    from stlake.ingestion.discover import find_slides
    from stlake.ingestion.options import IngestOptions
    from stlake.ingestion.plan import fill_cores, plan_slide
    from stlake.ingestion.units import run_unit

    shutil.rmtree(lake, ignore_errors=True)
    options = IngestOptions(source=str(root), lake=str(lake))
    started, cpu = time.perf_counter(), time.process_time()
    plans = [plan_slide(ref, options) for ref in find_slides(str(root)).refs]
    fill_cores(plans, CORES)
    results = [run_unit(unit, str(lake), "serial") for plan in plans for unit in plan.units]
    assert not [r.error for r in results if r.error], [r.error for r in results if r.error]
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "pairs": sum(r.rows for r in results if r.kind == "tiles"), "units": len(results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/stlake_bench/corpus")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--large-side", type=int, default=8000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(args.data)
    root = corpus(data, args.slides, args.side, args.large_side, args.genes)
    rounds = []
    for number in range(args.rounds):
        cpu = time.process_time()
        started = time.perf_counter()
        pairs = release(root, data / "release_out")
        rel = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "pairs": pairs}
        cli = stlake_cli(root, data / "lake")
        ser = serial(root, data / "serial_lake")
        row = {"release": rel, "stlake_cli": cli, "serial": ser}
        row["ratio_pairs_per_core"] = (cli["pairs"] / cli["wall_s"] / CORES) / (rel["pairs"] / rel["wall_s"])
        row["ratio_pairs_per_core_warm"] = (cli["pairs"] / cli["ingest_s"] / CORES) / (rel["pairs"] / rel["wall_s"])
        row["spark_efficiency"] = ser["wall_s"] / (cli["ingest_s"] * CORES)
        row["cpu_ratio"] = (rel["cpu_s"] / rel["pairs"]) / (cli["cpu_s"] / cli["pairs"])
        rounds.append(row)
        write(root, args, rounds)
        print(f"round {number + 1}: release {rel['pairs'] / rel['wall_s']:.0f} pairs/s/core "
              f"({1000 * rel['cpu_s'] / rel['pairs']:.2f} CPU-ms/pair) | stlake CLI "
              f"{cli['pairs'] / cli['wall_s'] / CORES:.0f} pairs/s/core, ingest alone "
              f"{cli['pairs'] / cli['ingest_s'] / CORES:.0f} ({1000 * cli['cpu_s'] / cli['pairs']:.2f} CPU-ms/pair, "
              f"tree) | serial {ser['pairs'] / ser['wall_s']:.0f} pairs/s ({1000 * ser['cpu_s'] / ser['pairs']:.2f} "
              f"CPU-ms/pair) | CLI/release per core {row['ratio_pairs_per_core']:.2f}x (warm "
              f"{row['ratio_pairs_per_core_warm']:.2f}x), Spark efficiency {row['spark_efficiency']:.2f}, "
              f"CPU per pair release/stlake {row['cpu_ratio']:.2f}x", flush=True)
    print("medians:", json.dumps({k: round(v, 2) for k, v in write(root, args, rounds).items()}))
    return 0


def write(root: Path, args: argparse.Namespace, rounds: list[dict]) -> dict:
    """``results/corpus.json`` with the rounds so far and their medians; returns the medians."""
    summary = {key: statistics.median(r[key] for r in rounds) for key in
               ("ratio_pairs_per_core", "ratio_pairs_per_core_warm", "spark_efficiency", "cpu_ratio")}
    out = HERE / "results" / "corpus.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "slides": len(slide_files(root)), "rounds": rounds,
                               "medians": summary}, indent=2))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(HERE.parent / "lib"))
    sys.exit(main())
