"""A slide picture rebuilt from its tiles: each spot's tile pasted, scaled down, where it was cut.

The lake keeps no copy of the slide image, only the tiles with their top-left corner (``tile_x0``,
``tile_y0``) and side (``tile_size_px``) in pixels of the tiled image, so the thumbnail is their mosaic.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stlake.qc.data import SlideData

#: Longest side of a thumbnail, in pixels.
MAX_SIDE = 1600
#: At most this many tiles are decoded for a thumbnail (a random subset of bigger slides).
MAX_TILES = 20000
BACKGROUND = 245


@dataclass
class Canvas:
    """A thumbnail and its mapping from slide pixels: ``(x - x0) * scale``."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    x0: float
    y0: float
    scale: float

    def to_canvas(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slide pixel coordinates as canvas coordinates."""
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale


def decode_tile(data: bytes) -> np.ndarray:
    """An encoded tile (JPEG or PNG bytes) as RGB uint8; a grey square when it cannot be decoded."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        return np.full((8, 8, 3), 128, np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def slide_mosaic(slide: SlideData, max_side: int = MAX_SIDE, max_tiles: int = MAX_TILES, seed: int = 0) -> Canvas:
    """The slide's tiles pasted at their places on a canvas whose longest side is at most ``max_side``."""
    x0s, y0s = slide.column("tile_x0").astype(float), slide.column("tile_y0").astype(float)
    sides = slide.column("tile_size_px").astype(float)
    if slide.n_spots == 0:
        return Canvas(np.full((max_side // 4, max_side // 4, 3), BACKGROUND, np.uint8), 0.0, 0.0, 1.0)
    left, top = float(x0s.min()), float(y0s.min())
    width, height = float((x0s + sides).max()) - left, float((y0s + sides).max()) - top
    scale = min(1.0, max_side / max(width, height, 1.0))
    canvas = np.full((max(1, round(height * scale)), max(1, round(width * scale)), 3), BACKGROUND, np.uint8)
    chosen = np.arange(slide.n_spots)
    if slide.n_spots > max_tiles:
        chosen = np.sort(np.random.default_rng(seed).choice(slide.n_spots, max_tiles, replace=False))
    tiles = slide.spots.column("tile")
    for i in chosen.tolist():
        side = max(1, round(sides[i] * scale))
        tile = cv2.resize(decode_tile(tiles[i].as_py()), (side, side), interpolation=cv2.INTER_AREA)
        _paste(canvas, tile, round((x0s[i] - left) * scale), round((y0s[i] - top) * scale))
    return Canvas(canvas, left, top, scale)


def _paste(canvas: np.ndarray, tile: np.ndarray, col: int, row: int) -> None:
    """Copy ``tile`` onto ``canvas`` with its top-left corner at (row, col), clipped to the canvas."""
    height, width = canvas.shape[:2]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + tile.shape[0], height), min(col + tile.shape[1], width)
    if r0 < r1 and c0 < c1:
        canvas[r0:r1, c0:c1] = tile[r0 - row:r1 - row, c0 - col:c1 - col]
