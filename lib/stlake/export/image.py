"""A slide's tissue image for ``uns['spatial']``, rebuilt from its tiles (the lake stores tiles, not slides).

Each tile is decoded, scaled to the canvas and pasted where it was cut (``tile_x0``, ``tile_y0``,
``tile_size_px`` in pixels of the tiled image); the rest of the canvas is white. The canvas's longer
side is at most ``HIRES_PX`` (Space Ranger's ``tissue_hires_image.png``), ``lowres`` at most
``LOWRES_PX``. Tiles are read a batch at a time, so memory holds the canvas and one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow.parquet as pq

from stlake.lake import storage, tables

HIRES_PX = 2000
LOWRES_PX = 600
TILE_COLUMNS = ["slide_id", "tile", "tile_x0", "tile_y0", "tile_size_px"]
BATCH_ROWS = 512


@dataclass(frozen=True)
class TissueImage:
    """RGB uint8 images and their scales (image pixels per pixel of the tiled image)."""

    hires: np.ndarray
    lowres: np.ndarray
    hires_scale: float
    lowres_scale: float


def canvas_scale(width: int, height: int, longest: int) -> float:
    """Scale that fits ``width`` x ``height`` into ``longest`` pixels on its longer side (never above 1)."""
    return min(1.0, longest / max(width, height, 1))


def paste_tile(canvas: np.ndarray, tile: np.ndarray, x0: int, y0: int, size: int, scale: float) -> None:
    """Paste one decoded tile (the square of side ``size`` at ``x0, y0``) into ``canvas`` at ``scale``."""
    side = max(1, int(round(size * scale)))
    left, top = int(round(x0 * scale)), int(round(y0 * scale))
    small = cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)
    height, width = canvas.shape[:2]
    x_from, y_from = max(left, 0), max(top, 0)
    x_to, y_to = min(left + side, width), min(top + side, height)
    if x_to > x_from and y_to > y_from:
        canvas[y_from:y_to, x_from:x_to] = small[y_from - top:y_to - top, x_from - left:x_to - left]


def _paste_file(canvas: np.ndarray, uri: str, slide_id: str, scale: float) -> None:
    """Paste the tiles of ``slide_id`` found in one ``spots`` data file."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=TILE_COLUMNS):
            rows = batch.to_pydict()
            for sid, data, x0, y0, size in zip(*(rows[c] for c in TILE_COLUMNS)):
                pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if sid == slide_id else None
                if pixels is not None:
                    paste_tile(canvas, pixels, x0, y0, size, scale)


def tissue_image(lake: str, slide_id: str, width: int, height: int) -> TissueImage:
    """The slide's image (tiled image of ``width`` x ``height`` px) rebuilt from its ``spots`` tiles."""
    scale = canvas_scale(width, height, HIRES_PX)
    canvas = np.full((max(1, int(round(height * scale))), max(1, int(round(width * scale))), 3), 255, np.uint8)
    for uri in tables.slide_files(lake, "spots", slide_id):
        _paste_file(canvas, uri, slide_id, scale)
    low = canvas_scale(width, height, LOWRES_PX)
    lowres = cv2.resize(canvas, (max(1, int(round(width * low))), max(1, int(round(height * low)))),
                        interpolation=cv2.INTER_AREA)
    return TissueImage(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), cv2.cvtColor(lowres, cv2.COLOR_BGR2RGB), scale, low)
