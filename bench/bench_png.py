"""PNG decode against the inflate floor: stlake's whole-PNG decode vs a plain inflate of the same file.

One synthetic STimage-style H&E PNG (``stlake.synth``'s renderer, zlib level 6 like the release's
PNGs; cached under ``--data``) is decoded, round after round, by each path, interleaved in one
process; the script reports each path's median CPU time over the rounds (every path runs on one
thread, and CPU time is far less disturbed than wall time by a busy machine) and its median per-round ratio
to the inflate floor (stdlib ``zlib.decompress`` of the concatenated IDAT data: the work no PNG
decoder can skip). Paths:

- *stlake*: ``images.open_region_reader`` + reading the whole image (the file mapped, libspng through
  imagecodecs for 8-bit RGB(A), then the chunk walk), BGR out;
- *OpenCV* ``cv2.imdecode`` (what stlake used before), *PIL* ``Image.open().convert('RGB')`` (the
  release scripts' reader), *libspng* alone, and *libdeflate* / *zlib-ng* inflate (faster floors).

Then the slide's tile unit (its ~3,000 spots cut and encoded, ``spots`` rows written to a scratch
lake) is run with ``--tile-threads`` 1 and 2, decoded whole and streamed (a 128 MiB budget),
interleaved over the rounds: wall and CPU seconds of each, and the per-round wall ratio 2 / 1 thread.

    PYTHONPATH=lib .venv/bin/python bench/bench_png.py [--side 8000] [--rounds 3]

Results: ``results/png.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
Image.MAX_IMAGE_PIXELS = None


def slide_png(data: Path, side: int) -> Path:
    """A Visium-style PNG of ``side`` px (85 % as high), written once by the synthetic generator."""
    from stlake.synth import StimageSpec, generate_stimage_slide

    root = data / f"png{side}"
    found = sorted(root.glob("Visium/image/*.png"))
    if found:
        return found[0]
    truth = generate_stimage_slide(str(root), StimageSpec(f"png_{side}", "Visium", 3000, side, 400, annotate=False), 0)
    return Path(truth.image_path)


def idat(data: bytes) -> bytes:
    """The concatenated IDAT payload of a PNG."""
    pos, parts = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return b"".join(parts)


def paths(path: Path) -> dict[str, Callable[[], object]]:
    """The decode paths, each a function of nothing (the file's bytes are read once, outside the timing)."""
    from stlake.ingestion import images

    data = path.read_bytes()
    stream = idat(data)
    width, height = struct.unpack(">II", data[16:24])
    raw = height * (width * 3 + 1)

    def stlake() -> object:
        with images.open_region_reader(str(path), 1 << 40) as reader:
            return reader.read_region(0, height, 0, width)

    return {
        "inflate floor (stdlib zlib)": lambda: zlib.decompress(stream),
        "stlake": stlake,
        "libspng (imagecodecs)": lambda: imagecodecs.spng_decode(data),
        "OpenCV imdecode": lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
        "PIL convert('RGB')": lambda: np.asarray(Image.open(path).convert("RGB")),
        "inflate libdeflate": lambda: imagecodecs.deflate_decode(stream, out=raw),
        "inflate zlib-ng": lambda: imagecodecs.zlibng_decode(stream, out=raw),
    }


def tile_runs(path: Path, scratch: Path) -> dict[str, Callable[[], object]]:
    """The slide's tile unit with 1 and 2 threads, decoded whole and streamed, each a function of nothing."""
    import dataclasses
    import shutil

    from stlake.ingestion.discover import find_slides
    from stlake.ingestion.options import IngestOptions
    from stlake.ingestion.plan import TileUnit, plan_slide
    from stlake.ingestion.units import run_tile_unit

    root = str(path.parents[2])
    [ref] = find_slides(root).refs
    [unit] = [u for u in plan_slide(ref, IngestOptions(source=root, lake=str(scratch))).units
              if isinstance(u, TileUnit)]

    def run(threads: int, budget: int) -> Callable[[], object]:
        def go() -> object:
            shutil.rmtree(scratch, ignore_errors=True)
            result = run_tile_unit(dataclasses.replace(unit, threads=threads, budget=budget), str(scratch), "bench")
            assert result.rows == len(unit.spots), result
            return result
        return go

    return {f"tiles {how}, {threads} thread{'s' * (threads > 1)}": run(threads, budget)
            for how, budget in (("whole", unit.budget), ("streamed", 128 << 20)) for threads in (1, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/stlake_bench/png")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = slide_png(Path(args.data), args.side)
    runs = paths(path)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.process_time()
            run()
            times[name].append(time.process_time() - started)
    floor = times["inflate floor (stdlib zlib)"]
    ratios = {name: [t / f for t, f in zip(values, floor)] for name, values in times.items()}
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    print(f"{path.name}: {width}x{height} px, {path.stat().st_size / 2**20:.0f} MiB, {args.rounds} rounds")
    for name in runs:
        print(f"  {name:30s} {statistics.median(times[name]):6.2f} CPU-s  "
              f"{statistics.median(ratios[name]):5.2f}x floor  "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios[name])})")
    tiles = tile_runs(path, Path(args.data) / "tiles_lake")
    walls: dict[str, list[float]] = {name: [] for name in tiles}
    cpus: dict[str, list[float]] = {name: [] for name in tiles}
    for _ in range(args.rounds):
        for name, run in tiles.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    print("tile unit, wall / CPU seconds (median), wall ratio 2 threads / 1 per round:")
    for name in tiles:
        print(f"  {name:30s} {statistics.median(walls[name]):6.2f} s  {statistics.median(cpus[name]):6.2f} CPU-s")
    speedups = {}
    for how in ("whole", "streamed"):
        one, two = walls[f"tiles {how}, 1 thread"], walls[f"tiles {how}, 2 threads"]
        speedups[how] = [b / a for a, b in zip(one, two)]
        print(f"  {how}: 2 / 1 thread wall {statistics.median(speedups[how]):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in speedups[how])})")
    out = HERE / "results" / "png.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"file": str(path), "width": width, "height": height, "bytes": path.stat().st_size,
                               "seconds": times, "ratio_to_floor": ratios, "tile_unit_wall_s": walls,
                               "tile_unit_cpu_s": cpus, "tile_unit_wall_2_over_1": speedups}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
