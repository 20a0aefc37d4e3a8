"""Benchmark: tiles at 0.5 µm/px (``--preset hest``) from the pyramid level that fits vs level 0 + resize.

The synthetic HEST-1k slide ``hest_1`` (full size: a ~7,400 x 7,400 px pyramidal TIFF at 0.25 µm/px,
256-px deflate tiles, one page per level, as HEST's WSIs are) is tiled with 224 px tiles of 0.5 µm/px
centred on a 50 µm grid over the whole image, two ways, in the same process, interleaved over rounds:

- **stlake**: what a tile unit of ``stlake ingest --preset hest`` runs: ``open_region_reader`` at the
  level ``resolution.resolve`` picks (level 1, 0.5 µm/px) and ``tiling.cut_tiles`` with 224 px squares
  (no resize), JPEG q90;
- **baseline**: the same tiler reading level 0 (448 px squares at 0.25 µm/px), shrunk to 224 px with
  ``cv2.INTER_AREA``: what reading full resolution and resizing costs.

Printed: tiles/s of each, the ratio (median of the per-round ratios), decoded pixels held at peak, and the
mean absolute pixel difference between the two methods' tiles (both are area averages of the same pixels).

    PYTHONPATH=lib python bench/bench_resolution.py [--data /tmp/stlake_bench] [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import cv2
import numpy as np

from stlake.ingestion import images, tiling
from stlake.ingestion.discover import discover
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers import read_slide
from stlake.ingestion.resolution import resolve, to_level
from stlake.synth import generate

GRID_UM = 50.0
BUDGET = 4 << 30


def slide(data: str, size: str) -> Any:
    """The hest_1 record of a synthetic dataset under ``data`` (generated once)."""
    root = os.path.join(data, f"hest_{size}")
    if not os.path.exists(os.path.join(root, "hest", "wsis", "hest_1.tif")):
        generate(root, size=size, layouts=("hest",))
    [ref] = [r for r in discover(os.path.join(root, "hest"))]
    return read_slide(ref)


def run(uri: str, level: int, x: np.ndarray, y: np.ndarray, spec: tiling.TileSpec) -> tuple[float, list, int]:
    """Seconds, tiles and peak decoded bytes of one tiler pass."""
    started = time.perf_counter()
    with images.open_region_reader(uri, tiling.decode_budget(BUDGET), level) as reader:
        tiles, _ = tiling.cut_tiles(reader, x, y, spec, BUDGET)
        peak = reader.peak_decoded_bytes
    return time.perf_counter() - started, tiles, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/stlake_bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the small slide (smoke run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    record = slide(args.data, "small" if args.quick else "full")
    pyramid = images.probe_pyramid(record.image_uri)
    res, _ = resolve(record, pyramid, IngestOptions(source="", lake="", preset="hest"))
    width, height = pyramid.sizes[0]
    step = GRID_UM / record.microns_per_pixel
    gx, gy = np.meshgrid(np.arange(step / 2, width, step), np.arange(step / 2, height, step))
    x, y = gx.ravel(), gy.ravel()
    fast = tiling.TileSpec(size_px=res.size_px, resize_px=res.resize_px)
    full_side = int(round(res.size_px * res.downsample[0]))
    slow = tiling.TileSpec(size_px=full_side, resize_px=res.resize_px)
    lx, ly = to_level(x, res.downsample[0]), to_level(y, res.downsample[1])
    ratios, rows = [], []
    for round_number in range(args.rounds):
        order = [("stlake", res.level, lx, ly, fast), ("baseline", 0, x, y, slow)]
        if round_number % 2:
            order.reverse()
        timing = {}
        for name, level, xs, ys, spec in order:
            seconds, tiles, peak = run(record.image_uri, level, xs, ys, spec)
            timing[name] = (len(tiles) / seconds, peak, tiles)
        ratios.append(timing["stlake"][0] / timing["baseline"][0])
        rows.append({name: {"tiles_per_s": round(v[0], 1), "peak_decoded_mib": round(v[1] / 2**20, 1)}
                     for name, v in timing.items()})
    sample = list(zip(timing["stlake"][2], timing["baseline"][2]))[:200]
    diff = float(np.mean([np.abs(cv2.imdecode(np.frombuffer(a.data, np.uint8), cv2.IMREAD_COLOR).astype(int)
                                 - cv2.imdecode(np.frombuffer(b.data, np.uint8), cv2.IMREAD_COLOR)).mean()
                          for a, b in sample]))
    result = {"image": f"{width}x{height} px at {record.microns_per_pixel:g} µm/px, levels {pyramid.sizes}",
              "tiles": len(x), "tile": f"{res.resize_px} px at {res.tile_mpp:g} µm/px", "level_read": res.level,
              "rounds": rows, "ratio_median": round(statistics.median(ratios), 2),
              "ratios": [round(r, 2) for r in ratios], "mean_abs_pixel_difference": round(diff, 2)}
    print(json.dumps(result, indent=2))
    out = args.out or (os.path.join(args.data, "resolution.quick.json") if args.quick
                       else os.path.join(os.path.dirname(__file__), "results", "resolution.json"))
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"stlake (level {res.level}) vs level 0 + resize: {result['ratio_median']}x tiles/s -> {out}")


if __name__ == "__main__":
    main()
