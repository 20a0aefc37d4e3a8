"""Image files of rendered slides: tiled TIFF, PNG (streamed strip by strip above a size) and JPEG.

The streaming PNG writer is hand-written because no maintained library writes a PNG from strips with
bounded memory (OpenCV and PIL encode whole arrays); its chunks are those of :mod:`stlake.ingestion.images`.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import cv2
import numpy as np

from stlake.ingestion.images import IEND_CHUNK, PNG_SIGNATURE, png_chunk
from stlake.synth.image import Markers, Renderer, render, strips

#: Images up to this many pixels are rendered whole and written by OpenCV; larger PNGs are streamed.
STREAM_PNG_PIXELS = 64_000_000


# ---------------------------------------------------------------- writers

def write_tiff(path: str, renderer: Renderer, markers: Optional[Markers] = None, tile: int = 512,
               level: int = 1) -> None:
    """A tiled (``tile`` x ``tile``), zlib-compressed (horizontal predictor) RGB TIFF, rendered strip by strip."""
    import tifffile

    def tiles() -> Iterator[np.ndarray]:
        for _, rgb in strips(renderer, markers, tile):
            for x0 in range(0, renderer.width, tile):
                yield rgb[:, x0:x0 + tile]

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tifffile.imwrite(path, tiles(), shape=(renderer.height, renderer.width, 3), dtype=np.uint8,
                     tile=(tile, tile), photometric="rgb", compression="zlib", compressionargs={"level": level},
                     predictor=True, maxworkers=2, metadata=None,
                     resolution=(1e4 / renderer.mpp, 1e4 / renderer.mpp), resolutionunit="CENTIMETER")


def encode_image(rgb: np.ndarray, fmt: str, quality: int = 92) -> bytes:
    """``png`` (lossless) or ``jpeg`` bytes of an RGB array."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt in ("jpeg", "jpg"):
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"unknown image format {fmt!r} (png or jpeg)")
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return data.tobytes()


def write_image(path: str, renderer: Renderer, markers: Optional[Markers] = None, fmt: str = "png",
                quality: int = 92) -> None:
    """Write the rendered image as ``png``, ``jpeg`` (whatever the file name says) or ``tiff``.

    PNGs above ``STREAM_PNG_PIXELS`` are streamed strip by strip (bounded memory); JPEGs are rendered whole.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if fmt in ("tif", "tiff"):
        write_tiff(path, renderer, markers)
        return
    if fmt == "png" and renderer.width * renderer.height > STREAM_PNG_PIXELS:
        write_png_stream(path, renderer.width, renderer.height, (rgb for _, rgb in strips(renderer, markers)))
        return
    data = encode_image(render(renderer, markers), fmt, quality)
    with open(path, "wb") as handle:
        handle.write(data)


# ---------------------------------------------------------------- streaming PNG

def png_filter_rows(raw: np.ndarray, prior: np.ndarray, bpp: int = 3) -> np.ndarray:
    """PNG-filter rows ``raw`` (h, row_bytes uint8) given the row before them; (h, 1 + row_bytes) with filter bytes.

    Each row gets the filter (None, Sub, Up, Average, Paeth) with the smallest sum of absolute signed
    residuals, as libpng's adaptive heuristic does.
    """
    cur = raw.astype(np.int16)
    up = np.concatenate([prior[None, :], raw[:-1]]).astype(np.int16)
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    upleft = np.zeros_like(cur)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([cur, cur - left, cur - up, cur - ((left + up) >> 1), cur - paeth]).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    best = np.argmin(cost, axis=0)
    rows = candidates[best, np.arange(raw.shape[0])]
    return np.concatenate([best.astype(np.uint8)[:, None], rows], axis=1)


def write_png_stream(path: str, width: int, height: int, rgb_strips: Iterable[np.ndarray], level: int = 3,
                     idat_bytes: int = 1 << 20) -> None:
    """Write an 8-bit RGB PNG from strips (each (h, width, 3) uint8, top to bottom) with bounded memory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    compressor = zlib.compressobj(level)
    prior = np.zeros(width * 3, np.uint8)
    written = 0
    pending = bytearray()
    with open(path, "wb") as handle:
        handle.write(PNG_SIGNATURE)
        handle.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for rgb in rgb_strips:
            if rgb.shape[1:] != (width, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"strip of shape {rgb.shape} {rgb.dtype} does not fit a {width}-px RGB PNG")
            raw = np.ascontiguousarray(rgb).reshape(len(rgb), width * 3)
            filtered = png_filter_rows(raw, prior)
            prior = raw[-1].copy()
            written += len(rgb)
            pending += compressor.compress(filtered.tobytes())
            while len(pending) >= idat_bytes:
                handle.write(png_chunk(b"IDAT", bytes(pending[:idat_bytes])))
                del pending[:idat_bytes]
        if written != height:
            raise ValueError(f"got {written} rows for a PNG of height {height}")
        pending += compressor.flush()
        for start in range(0, len(pending), idat_bytes):
            handle.write(png_chunk(b"IDAT", bytes(pending[start:start + idat_bytes])))
        handle.write(IEND_CHUNK)


def pyramid_levels(rgb: np.ndarray, min_side: int = 256) -> list[np.ndarray]:
    """``rgb`` and its halvings (``cv2.INTER_AREA``) while the shorter side stays at least ``min_side``."""
    levels = [rgb]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        previous = levels[-1]
        size = (previous.shape[1] // 2, previous.shape[0] // 2)
        levels.append(cv2.resize(previous, size, interpolation=cv2.INTER_AREA))
    return levels


def write_pyramid_tiff(path: str, levels: list[np.ndarray], mpp: float, tile: int = 256, subifds: bool = False,
                       resolution_per_mm: bool = False) -> None:
    """A tiled, deflate-compressed pyramidal RGB TIFF of ``levels`` (level 0 first).

    ``subifds=False`` writes what HEST's ``tiff_save`` (pyvips ``pyramid=True``) writes: one page per
    level, the reduced ones marked ``NewSubfileType = 1``; ``subifds=True`` stores the reduced levels as
    SubIFDs of the first page (OME / QuPath style). Resolution tags give ``mpp`` of each level, in pixels
    per centimetre, or (``resolution_per_mm``) HEST's pixels per millimetre labelled as centimetres.
    """
    import tifffile

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    per_cm = (1e3 if resolution_per_mm else 1e4)
    options: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib",
               "compressionargs": {"level": 1},
               "maxworkers": 2, "metadata": None,
               "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for index, level in enumerate(levels):
            factor = levels[0].shape[1] / level.shape[1]
            resolution = (per_cm / (mpp * factor), per_cm / (mpp * factor))
            if index == 0:
                tif.write(level, subifds=len(levels) - 1 if subifds else None, resolution=resolution, **options)
            else:
                tif.write(level, subfiletype=1, resolution=resolution, **options)
