"""Synthetic test images shared by the image tests."""
from __future__ import annotations

import numpy as np


def coord_image(h: int, w: int) -> np.ndarray:
    """BGR image whose pixels encode their own position (B = x % 251, G = y % 251, R = blocks)."""
    x, y = np.arange(w), np.arange(h)
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = x % 251
    image[..., 1] = (y % 251)[:, None]
    image[..., 2] = (x // 251 + 7 * (y // 251)[:, None]) % 251
    return image
