"""Synthetic test images shared by the image tests."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def coord_image(h: int, w: int) -> np.ndarray:
    """BGR image whose pixels encode their own position (B = x % 251, G = y % 251, R = blocks)."""
    x, y = np.arange(w), np.arange(h)
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = x % 251
    image[..., 1] = (y % 251)[:, None]
    image[..., 2] = (x // 251 + 7 * (y // 251)[:, None]) % 251
    return image


def busy_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Coordinate image with noisy and flat patches, so encoders pick varied PNG filters."""
    image = coord_image(h, w)
    rng = np.random.default_rng(seed)
    image[h // 3: h // 2, : w // 2] = rng.integers(0, 256, (h // 2 - h // 3, w // 2, 3), dtype=np.uint8)
    image[h // 2:, w // 2:] = 128
    return image


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def cv_png(array: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".png", array, list(params))
    assert ok
    return buf.tobytes()
