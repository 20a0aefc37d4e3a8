"""The tilers that ``bench_ingest.py`` compares, each run alone in a child process on the same spots.

- ``stlake``: ``images.open_region_reader`` + ``tiling.cut_tiles`` (what a tile unit of the ingest runs);
- ``naive``: the release's way, PIL loads the whole image and saves one PNG crop per spot;
- ``codec``: one ``cv2.imread`` of the whole image + one ``cv2.imencode`` JPEG per tile (the codec limit);
- ``floor``: diagnostic, stdlib ``zlib.decompress`` of the TIFF tiles under the spots.

Each returns ``tiles``, ``bytes_out``, wall/CPU seconds, ``tiles_per_s`` and the process's peak RSS.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from procstats import ProcessWindow, dir_bytes

QUALITY = 90  # IngestOptions.quality default
TILER_LABELS = {"stlake": "stlake tiler", "naive": "naive (PIL, PNG/spot)", "codec": "codec limit"}


def load_spots(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, spot_id) of the benchmark's spots."""
    spots = np.load(path)
    return spots["x"], spots["y"], spots["spot_id"]


def finish(result: dict[str, Any], window: ProcessWindow) -> dict[str, Any]:
    """``result`` with the window's times and memory, and the tile rates."""
    stats = window.close()
    wall, cpu = stats["wall_s"], stats["cpu_s"]
    result.update(wall_s=wall, cpu_s=cpu, tiles_per_s=result["tiles"] / wall,
                  tiles_per_cpu_s=result["tiles"] / cpu if cpu else None, peak_rss=stats["peak_rss"],
                  base_rss=stats["base_rss"], peak_rss_over_base=stats["peak_rss_over_base"])
    return result


def tiler_stlake(info: dict) -> dict:
    """The stlake tiler: region reads of the spot squares, JPEG tiles in memory."""
    from stlake.ingestion import images, tiling
    from stlake.ingestion.options import IngestOptions

    x, y, _ = load_spots(info["spots"])
    budget = IngestOptions(source="", lake="").memory_budget
    spec = tiling.TileSpec(size_px=info["tile_px"], quality=QUALITY)
    window = ProcessWindow.start()
    with images.open_region_reader(info["image"], budget) as reader:
        tiles, _dropped = tiling.cut_tiles(reader, x.astype(float), y.astype(float), spec, budget)
        peak_decoded = reader.peak_decoded_bytes
    out = {"tiles": len(tiles), "bytes_out": sum(len(t.data) for t in tiles), "peak_decoded_bytes": peak_decoded}
    return finish(out, window)


def tiler_naive(info: dict) -> dict:
    """The release's tiler: PIL decodes the whole image, then one PNG file per spot."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a whole slide is far over PIL's decompression-bomb limit
    x, y, ids = load_spots(info["spots"])
    size, half = info["tile_px"], info["tile_px"] // 2
    folder = tempfile.mkdtemp(prefix="naive-crops-", dir=info["root"])
    window = ProcessWindow.start()
    try:
        image = Image.open(info["image"])
        image.load()
        decoded = window.elapsed()
        for spot, cx, cy in zip(ids.tolist(), x.tolist(), y.tolist()):
            x0, y0 = cx - half, cy - half
            image.crop((x0, y0, x0 + size, y0 + size)).save(os.path.join(folder, f"{spot}.png"))
        out = finish({"tiles": len(x), "decode_s": decoded}, window)
        out["bytes_out"] = dir_bytes(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def tiler_codec(info: dict) -> dict:
    """The codec limit: one ``cv2.imread``, then one JPEG encode per tile slice."""
    import cv2

    x, y, _ = load_spots(info["spots"])
    size, half = info["tile_px"], info["tile_px"] // 2
    params = [cv2.IMWRITE_JPEG_QUALITY, QUALITY]
    window = ProcessWindow.start()
    image = cv2.imread(info["image"], cv2.IMREAD_COLOR)
    decoded = window.elapsed()
    nbytes = 0
    for cx, cy in zip(x.tolist(), y.tolist()):
        x0, y0 = max(cx - half, 0), max(cy - half, 0)
        _ok, buf = cv2.imencode(".jpg", image[y0:y0 + size, x0:x0 + size], params)
        nbytes += len(buf)
    out = finish({"tiles": len(x), "decode_s": decoded, "bytes_out": nbytes}, window)
    out["encode_s"] = out["wall_s"] - decoded
    return out


def inflate_floor(info: dict) -> dict:
    """Diagnostic: stdlib ``zlib.decompress`` of every TIFF tile that a spot square touches, nothing else.

    No predictor undo, no colour conversion, no tiles cut: with the codec-limit run's JPEG encode time
    added, a lower bound for any tiler of this (zlib-compressed) file that uses the stdlib zlib.
    """
    import zlib

    import tifffile

    x, y, _ = load_spots(info["spots"])
    with tifffile.TiffFile(info["image"]) as tif:
        page = tif.pages[0]
        if int(page.compression) not in (8, 32946) or not page.is_tiled:
            return {"skipped": f"not a zlib-compressed tiled TIFF (compression {page.compression})"}
        offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
        grid = (int(page.tilewidth), int(page.tilelength), -(-int(page.imagewidth) // int(page.tilewidth)))
    needed = _segments_under_spots(x, y, info["tile_px"], grid)
    window = ProcessWindow.start()
    inflated = 0
    with open(info["image"], "rb") as handle:
        for index in sorted(needed, key=lambda i: offsets[i]):
            handle.seek(int(offsets[index]))
            inflated += len(zlib.decompress(handle.read(int(counts[index]))))
    out = finish({"tiles": len(x), "segments": len(needed), "segments_total": len(offsets),
                  "inflated_bytes": inflated, "bytes_out": 0}, window)
    out["inflate_s"] = out["wall_s"]
    return out


def _segments_under_spots(x: np.ndarray, y: np.ndarray, size: int, grid: tuple[int, int, int]) -> set[int]:
    """Indices of the TIFF tiles (``grid`` = tile width, height, tiles across) that the spot squares touch."""
    tw, th, across = grid
    half = size // 2
    needed = set()
    for cx, cy in zip(x.tolist(), y.tolist()):
        x0, y0 = max(cx - half, 0), max(cy - half, 0)
        for r in range(y0 // th, (y0 + size - 1) // th + 1):
            for c in range(x0 // tw, (x0 + size - 1) // tw + 1):
                needed.add(r * across + c)
    return needed


TILERS: dict[str, Callable[[dict], dict]] = {
    "stlake": tiler_stlake, "naive": tiler_naive, "codec": tiler_codec, "floor": inflate_floor,
}
