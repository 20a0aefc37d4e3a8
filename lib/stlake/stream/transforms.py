"""Per-batch transforms, vectorised: sparse counts -> dense panel columns, tile bytes -> RGB tensors.

Expression: the sparse ``(gene_ids, counts)`` rows are flattened once, normalised on the non-zero
values only (``normalize_total`` divides by the row's ``total_counts`` — the sum over *all* genes,
not just the panel — as scanpy does), and scattered onto the panel's columns with one
``np.searchsorted``; nothing is ever densified to the full gene space.

Images: ``cv2.imdecode`` (JPEG or PNG; OpenCV releases the GIL, so a thread pool decodes in
parallel) -> optional resize -> optional flip / 90° rotation / colour jitter -> RGB planes written
straight into a preallocated ``B x 3 x S x S`` array, uint8 or float32 (scaled, optionally
ImageNet-normalised, per plane while it is still in cache). No pass over the whole batch afterwards.
OpenCV's own thread pool is switched off at the first decoded tile (:func:`use_one_opencv_thread`): the
parallelism comes from the decode threads.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, Optional, Union

import cv2
import numpy as np
import torch

from stlake.constants import DEFAULT_TARGET_SUM, IMAGENET_MEAN, IMAGENET_STD
from stlake.stream.spec import ImageDtype, NormalizeMode

Tiles = Union[Sequence[bytes], np.ndarray]  # encoded tiles: a list, or a numpy object array of a batch


# ---------------------------------------------------------------- expression

def flatten_lists(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated values, row offsets of length n+1) of a sequence of 1-D arrays / lists."""
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    parts = [np.asarray(v) for v in values if v is not None and len(v)]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return flat, offsets


def normalize_counts(counts: np.ndarray, totals: np.ndarray, mode: NormalizeMode, target_sum: float) -> np.ndarray:
    """Normalise non-zero counts (float64 in, float32 out); ``totals`` is each value's row total."""
    values = counts.astype(np.float64, copy=False)
    if mode == "none":
        return values.astype(np.float32)
    if mode == "normalize_total_log1p":
        totals = totals.astype(np.float64, copy=False)
        values = values / np.where(totals > 0, totals, 1.0) * target_sum  # scanpy: zero totals stay zero
    elif mode != "log1p":
        raise ValueError(f"unknown normalisation {mode!r}")
    return np.log1p(values).astype(np.float32)


def densify(gene_ids: np.ndarray, counts: np.ndarray, offsets: np.ndarray, totals: np.ndarray,
            lookup_ids: np.ndarray, lookup_cols: np.ndarray, n_genes: int, mode: NormalizeMode = "none",
            target_sum: float = DEFAULT_TARGET_SUM) -> np.ndarray:
    """Dense ``n_rows x n_genes`` float32 panel matrix from flattened sparse rows.

    ``lookup_ids`` (sorted) / ``lookup_cols`` map gene ids to panel columns; other genes are dropped.
    """
    n_rows = len(offsets) - 1
    out = np.zeros((n_rows, n_genes), np.float32)
    if gene_ids.size == 0 or lookup_ids.size == 0:
        return out
    pos = np.searchsorted(lookup_ids, gene_ids)
    pos_clipped = np.minimum(pos, lookup_ids.size - 1)
    hit = lookup_ids[pos_clipped] == gene_ids
    rows = np.repeat(np.arange(n_rows), np.diff(offsets))[hit]
    values = normalize_counts(counts[hit], np.asarray(totals)[rows], mode, target_sum)
    out[rows, lookup_cols[pos_clipped[hit]]] = values
    return out


# ---------------------------------------------------------------- images

@dataclass
class Geometry:
    """Per-sample flips and rotations (arrays of length B), drawn once per batch."""

    flip_h: np.ndarray
    flip_v: np.ndarray
    rot90: np.ndarray  # quarter turns counter-clockwise, 0..3

    @classmethod
    def random(cls, n: int, rng: np.random.Generator) -> Geometry:
        """Each sample flipped either way with probability 1/2 and turned 0-3 quarter turns."""
        return cls(rng.random(n) < 0.5, rng.random(n) < 0.5, rng.integers(0, 4, n))


_ROTATIONS = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


@dataclass
class Jitter:
    """Per-sample colour jitter factors (brightness, contrast, saturation; 1 = unchanged)."""

    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray

    @classmethod
    def random(cls, n: int, rng: np.random.Generator, strength: float = 0.2) -> Jitter:
        """Factors drawn uniformly from ``[1 - strength, 1 + strength]`` (brightness, contrast, saturation)."""
        def draw() -> np.ndarray:
            return rng.uniform(1 - strength, 1 + strength, n).astype(np.float32)
        return cls(draw(), draw(), draw())


def jittered_planes(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> list[np.ndarray]:
    """B, G, R uint8 planes after brightness, contrast and saturation jitter (torchvision's definitions).

    Brightness scales, contrast blends with the mean grey level, saturation with the grey image; the
    three compose to one affine map per pixel, ``A * x + B * grey(x) + C``, clamped once to 0..255.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    mean = brightness * float(gray.mean())
    a = saturation * contrast * brightness
    b = (1 - saturation) * contrast * brightness
    c = mean * (1 - contrast)
    return [cv2.addWeighted(plane, a, gray, b, c) for plane in cv2.split(image)]


@cache
def use_one_opencv_thread() -> None:
    """Switch OpenCV's internal threading off (once per process): parallelism comes from the decode threads."""
    cv2.setNumThreads(1)


def decode_tile(data: bytes, size: Optional[int]) -> np.ndarray:
    """One tile's bytes -> BGR ``H x W x 3`` uint8 (resized to ``size`` when given)."""
    use_one_opencv_thread()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable tile (not a JPEG/PNG file)")
    if size is not None and (image.shape[0] != size or image.shape[1] != size):
        shrink = image.shape[0] > size and image.shape[1] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


@dataclass
class ImageOps:
    """What happens to each decoded tile: size, flips/rotations, jitter, float conversion."""

    size: Optional[int] = None
    geometry: Optional[Geometry] = None
    jitter: Optional[Jitter] = None
    affine: Optional[tuple[np.ndarray, np.ndarray]] = None  # float32 output: uint8 * scale + offset


def _geometry(image: np.ndarray, geometry: Optional[Geometry], i: int) -> np.ndarray:
    """Sample ``i``'s flips and quarter turns applied to ``image`` (square tiles only are turned)."""
    if geometry is None:
        return image
    if geometry.flip_h[i]:
        image = cv2.flip(image, 1)
    if geometry.flip_v[i]:
        image = cv2.flip(image, 0)
    if geometry.rot90[i] and image.shape[0] == image.shape[1]:
        image = cv2.rotate(image, _ROTATIONS[int(geometry.rot90[i])])
    return image


def _decode_range(tiles: Tiles, out: np.ndarray, start: int, stop: int, ops: ImageOps) -> None:
    """Decode tiles ``start:stop`` into their RGB planes of ``out`` (one decode thread's share)."""
    for i in range(start, stop):
        image = _geometry(decode_tile(tiles[i], ops.size), ops.geometry, i)
        if image.shape[:2] != out.shape[2:]:
            raise ValueError(f"tile {i} is {image.shape[1]}x{image.shape[0]}, batch is "
                             f"{out.shape[3]}x{out.shape[2]}: set image_size to resize tiles to one size")
        jitter = ops.jitter
        planes = cv2.split(image) if jitter is None else \
            jittered_planes(image, jitter.brightness[i], jitter.contrast[i], jitter.saturation[i])
        for channel, plane in zip((2, 1, 0), planes):  # BGR -> RGB
            if ops.affine is None:
                out[i, channel] = plane
            else:  # float: plane * scale + offset, in cache, inside the decode thread
                np.multiply(plane, ops.affine[0][channel], out=out[i, channel], dtype=np.float32)
                out[i, channel] += ops.affine[1][channel]


def tile_shape(data: bytes, size: Optional[int]) -> tuple[int, int]:
    """(height, width) a tile will have after decode (and resize)."""
    if size is not None:
        return size, size
    image = decode_tile(data, None)
    return image.shape[0], image.shape[1]


def float_affine(normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) mapping uint8 to [0, 1] floats, ImageNet-normalised when asked."""
    scale, offset = np.full(3, 1 / 255, np.float32), np.zeros(3, np.float32)
    if normalize:
        mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        scale, offset = scale / std, -mean / std
    return scale.astype(np.float32), offset.astype(np.float32)


def decode_batch(tiles: Tiles, ops: ImageOps, pool: Optional[ThreadPoolExecutor] = None,
                 chunks: int = 1) -> np.ndarray:
    """Tiles -> ``B x 3 x S x S`` RGB (uint8, or float32 with ``ops.affine``), in ``chunks`` parallel slices."""
    n = len(tiles)
    height, width = tile_shape(tiles[0], ops.size) if n else (ops.size or 0, ops.size or 0)
    out = np.empty((n, 3, height, width), np.uint8 if ops.affine is None else np.float32)
    if pool is None or chunks <= 1 or n < 2 * chunks:
        _decode_range(tiles, out, 0, n, ops)
        return out
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    futures = [pool.submit(_decode_range, tiles, out, a, b, ops) for a, b in zip(bounds, bounds[1:])]
    for future in futures:
        future.result()
    return out


def images_tensor(tiles: Tiles, size: Optional[int], dtype: ImageDtype = "uint8", normalize: bool = False,
                  geometry: Optional[Geometry] = None, jitter: Optional[Jitter] = None,
                  pool: Optional[ThreadPoolExecutor] = None, chunks: int = 1) -> torch.Tensor:
    """Tiles -> the stream's image tensor: uint8 RGB, or float32 in [0, 1] (ImageNet-normalised)."""
    ops = ImageOps(size, geometry, jitter, float_affine(normalize) if dtype == "float32" else None)
    return torch.from_numpy(decode_batch(tiles, ops, pool, chunks))
