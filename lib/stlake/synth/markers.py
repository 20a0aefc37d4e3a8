"""Spot markers: a tiny binary 2-D code drawn on every spot centre of a synthetic image.

A marker is a 7 x 7 grid of 2-px cells (``MARKER_SIDE`` = 14 px): a black finder ring and 5 x 5 = 25
data bits (row-major, most significant bit first, black = 1) holding the spot's ``code`` (its index
within the slide). Pixel ``[MARKER_HALF, MARKER_HALF]`` of the patch lies exactly on the spot's integer
pixel centre, i.e. the patch covers rows ``y - 7 .. y + 6`` and columns ``x - 7 .. x + 6``.

A tile cut "centred" on spot ``(x, y)`` with side ``S`` is ``image[y - S // 2 : y - S // 2 + S,
x - S // 2 : x - S // 2 + S]``; its centre pixel is ``(S // 2, S // 2)``. :func:`locate_marker` finds the
marker near that centre and returns its offset, which is ``(0, 0)`` for a correctly cut tile.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

MARKER_CELLS = 7
MARKER_CELL_PX = 2
MARKER_SIDE = MARKER_CELLS * MARKER_CELL_PX  # 14
MARKER_HALF = MARKER_SIDE // 2  # the patch's centre pixel (row and column)
DATA_BITS = (MARKER_CELLS - 2) ** 2  # 25
MAX_CODE = (1 << DATA_BITS) - 1
SEARCH = 3  # locate_marker searches offsets in [-SEARCH, SEARCH]^2

_RING = np.ones((MARKER_CELLS, MARKER_CELLS), dtype=bool)
_RING[1:-1, 1:-1] = False


def marker_cells(code: int) -> np.ndarray:
    """The 7 x 7 cell grid of ``code``: True = black."""
    code = int(code)
    if not 0 <= code <= MAX_CODE:
        raise ValueError(f"marker code must be in 0..{MAX_CODE} (got {code})")
    bits = (code >> np.arange(DATA_BITS - 1, -1, -1)) & 1
    cells = _RING.copy()
    cells[1:-1, 1:-1] = bits.reshape(MARKER_CELLS - 2, MARKER_CELLS - 2).astype(bool)
    return cells


def marker_gray(code: int) -> np.ndarray:
    """The marker as a (MARKER_SIDE, MARKER_SIDE) uint8 image: 0 = black, 255 = white."""
    cells = marker_cells(code)
    pixels = np.repeat(np.repeat(cells, MARKER_CELL_PX, axis=0), MARKER_CELL_PX, axis=1)
    return np.where(pixels, 0, 255).astype(np.uint8)


def marker_patch(code: int) -> np.ndarray:
    """The marker of ``code`` as a (MARKER_SIDE, MARKER_SIDE, 3) uint8 BGR image (black and white)."""
    gray = marker_gray(code)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_marker(patch_bgr: np.ndarray) -> Optional[int]:
    """The code of the marker centred in ``patch_bgr`` (MARKER_SIDE square or larger), None if there is none.

    For a larger patch the marker is read at rows/columns ``c - 7 .. c + 6`` around its centre pixel
    ``c = (h // 2, w // 2)``. A cell is black when its mean grey is below 128; all 24 ring cells must be black.
    """
    patch = np.asarray(patch_bgr)
    if patch.ndim == 3:
        patch = patch.astype(np.float32).mean(axis=2)
    h, w = patch.shape[:2]
    if h < MARKER_SIDE or w < MARKER_SIDE:
        return None
    top, left = h // 2 - MARKER_HALF, w // 2 - MARKER_HALF
    square = patch[top:top + MARKER_SIDE, left:left + MARKER_SIDE].astype(np.float32)
    cells = square.reshape(MARKER_CELLS, MARKER_CELL_PX, MARKER_CELLS, MARKER_CELL_PX).mean(axis=(1, 3))
    black = cells < 128
    if not black[_RING].all():
        return None
    bits = black[1:-1, 1:-1].ravel().astype(np.int64)
    return int((bits << np.arange(DATA_BITS - 1, -1, -1)).sum())


def locate_marker(tile_bgr: np.ndarray, code: int, search: int = SEARCH) -> tuple[int, int]:
    """Offset ``(dy, dx)`` of the marker of ``code`` relative to the tile centre ``(h // 2, w // 2)``.

    Searches offsets in ``[-search, search]^2`` for the smallest sum of squared differences against
    :func:`marker_gray`; ties go to the offset closest to (0, 0). A tile cut centred on the spot gives (0, 0).
    """
    tile = np.asarray(tile_bgr)
    gray = tile.astype(np.float32).mean(axis=2) if tile.ndim == 3 else tile.astype(np.float32)
    h, w = gray.shape
    cy, cx = h // 2, w // 2
    ref = marker_gray(code).astype(np.float32)
    best: Optional[tuple[float, int, int, int]] = None
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            top, left = cy + dy - MARKER_HALF, cx + dx - MARKER_HALF
            if top < 0 or left < 0 or top + MARKER_SIDE > h or left + MARKER_SIDE > w:
                continue
            diff = gray[top:top + MARKER_SIDE, left:left + MARKER_SIDE] - ref
            key = (float((diff * diff).sum()), abs(dy) + abs(dx), dy, dx)
            if best is None or key < best:
                best = key
    if best is None:
        raise ValueError(f"tile of shape {tile.shape} is too small to search for a {MARKER_SIDE}-px marker")
    return best[2], best[3]


def draw_markers(strip: np.ndarray, row0: int, xs: np.ndarray, ys: np.ndarray, codes: np.ndarray) -> None:
    """Paint the markers of spots at integer centres ``(xs, ys)`` onto ``strip`` (rows ``row0 ..``), in place.

    Only the part of each marker that falls inside the strip is drawn, so an image drawn strip by strip is
    identical to one drawn whole. ``strip`` is (h, w, 3) or (h, w) uint8.
    """
    if len(xs) == 0:
        return
    h, w = strip.shape[:2]
    ys = np.asarray(ys, dtype=np.int64)
    xs = np.asarray(xs, dtype=np.int64)
    near = np.flatnonzero((ys - MARKER_HALF < row0 + h) & (ys + MARKER_SIDE - MARKER_HALF > row0)
                          & (xs - MARKER_HALF < w) & (xs + MARKER_SIDE - MARKER_HALF > 0))
    for i in near:
        gray = marker_gray(int(codes[i]))
        top, left = int(ys[i]) - MARKER_HALF - row0, int(xs[i]) - MARKER_HALF
        r0, r1 = max(top, 0), min(top + MARKER_SIDE, h)
        c0, c1 = max(left, 0), min(left + MARKER_SIDE, w)
        piece = gray[r0 - top:r1 - top, c0 - left:c1 - left]
        if strip.ndim == 3:
            strip[r0:r1, c0:c1, :] = piece[:, :, None]
        else:
            strip[r0:r1, c0:c1] = piece
