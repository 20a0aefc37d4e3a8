"""What the layout writers share: the job they are given, what they return, seeded randomness, ids, grids."""
from __future__ import annotations

import math
import os
import shutil
import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from stlake.synth.expression import GeneUniverse
from stlake.synth.specs import Sizes
from stlake.synth.truth import Truth

HEX_ROW_UM = 100.0 * math.sqrt(3.0) / 2.0  # Visium row spacing
HD_MARK_EVERY = 4  # VisiumHD: one bin in 4 x 4 carries a marker


@dataclass(frozen=True)
class DatasetJob:
    """What a layout writer is asked to write into ``out_dir``.

    ``layouts`` are the layouts requested with their valid slides; ``corrupt`` also asks for the
    deliberately broken slides (STimage release only).
    """

    out_dir: str
    sizes: Sizes
    universe: GeneUniverse
    seed: int
    layouts: tuple[str, ...]
    corrupt: bool = False


@dataclass
class SlideInfo:
    """One written slide, as ``generate`` summarises it and ``manifest.csv`` lists it."""

    slide_id: str
    layout: str
    technology: str
    path: str  # slide root (visium/visiumhd/st) or release root (stimage)
    species: str
    tissue: str
    n_spots: int  # spots a reader returns by default (in tissue for Visium/HD, matched for ST)
    n_positions: int  # all spots/bins of the coordinate file
    image_path: str
    truth: Optional[Truth] = field(default=None, repr=False)
    annotation_columns: str = ""  # obs columns holding labels (the manifest's ``annotation_columns``)


def fresh_dir(path: str) -> str:
    """``path`` with whatever was there removed (each layout's folder is rewritten as a whole)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    return path


def slide_rng(seed: int, slide_id: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, slide id, purpose)."""
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(slide_id.encode()), zlib.crc32(purpose.encode())]))


def image_seed(seed: int, slide_id: str) -> int:
    """The pixel-noise seed of a slide's images."""
    return zlib.crc32(slide_id.encode()) ^ seed


def random_barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct ``AAACAAGTATCTCCCA-1``-style barcodes."""
    letters = np.array(list("ACGT"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        draw = letters[rng.integers(0, 4, (n - len(out) + 8, 16))]
        for row in draw:
            code = "".join(row) + "-1"
            if code not in seen:
                seen.add(code)
                out.append(code)
                if len(out) == n:
                    break
    return np.array(out, dtype=object)


def hd_barcode(bin_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Space Ranger HD bin barcodes ``s_008um_00012_00034-1``."""
    return np.array([f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col)], dtype=object)


def hd_codes(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Marker codes of 2-8 µm bins: the bin's index where row and column are multiples of ``HD_MARK_EVERY``, else -1.

    A marker (14 px) nearly fills a 16-px bin, so marking every bin would leave no tissue in the image.
    """
    code = np.arange(len(row), dtype=np.int64)
    code[(np.asarray(row) % HD_MARK_EVERY != 0) | (np.asarray(col) % HD_MARK_EVERY != 0)] = -1
    return code
