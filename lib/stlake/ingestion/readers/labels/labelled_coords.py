"""Labelled-coordinates TSVs of legacy ST cohorts (HER2ST ``{sample}_labeled_coordinates.tsv``).

Columns ``Row.names x y pixel_x pixel_y label`` (R's ``write.table``: the first name may be missing,
values may be quoted, missing values are ``NA``): ``x``/``y`` are array coordinates as decimals
(``9.008``/``17.012`` for spot ``9x17``), ``pixel_x``/``pixel_y`` the spot centre in the H&E image.
A row lands on the spot at its rounded array position; a row without one (or whose position is no
spot of the slide) on the spot whose centre is nearest its pixel position, when that is within half
the spot pitch; other rows are reported (``annotation_unmatched``, by data row number).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from stlake.ingestion.readers.common import read_csv
from stlake.ingestion.readers.labels.sets import Labels, file_set_name, present
from stlake.ingestion.records import Remark, Spots

COLUMNS = ("x", "y", "label")
PIXEL_COLUMNS = ("pixel_x", "pixel_y")
NAME_PART = "labeled_coordinates"


def is_labelled_coords_name(name: str) -> bool:
    """A labelled-coordinates file name (``*labeled_coordinates*.tsv``, also ``labelled``)."""
    lower = name.lower().replace("labelled", "labeled")
    return NAME_PART in lower and lower.endswith((".tsv", ".tsv.gz", ".txt")) and not name.startswith(".")


def is_labelled_coords_header(header: str) -> bool:
    """A first line naming ``x``, ``y`` and ``label`` (TAB separated)."""
    fields = {f.strip().strip('"').lower() for f in header.split("\t")}
    return set(COLUMNS) <= fields


def numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column (NaN where missing or not a number); all NaN when the column is absent."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)


def by_position(x: np.ndarray, y: np.ndarray, spots: Spots) -> np.ndarray:
    """The spot at each rounded array position (``array_col`` = x, ``array_row`` = y), -1 where none."""
    ok = np.isfinite(x) & np.isfinite(y)
    index = pd.MultiIndex.from_arrays([spots.array_col.astype(np.int64), spots.array_row.astype(np.int64)])
    where = np.full(len(x), -1, dtype=np.int64)
    if ok.any() and len(spots):
        rounded = [np.floor(v[ok] + 0.5).astype(np.int64) for v in (x, y)]
        keys = pd.MultiIndex.from_arrays(rounded)
        where[ok] = index.get_indexer(keys)
    return where


def by_pixel(px: np.ndarray, py: np.ndarray, spots: Spots, pitch_px: Optional[float]) -> np.ndarray:
    """The spot whose centre is nearest each pixel position, when within half the pitch; -1 where none."""
    where = np.full(len(px), -1, dtype=np.int64)
    ok = np.isfinite(px) & np.isfinite(py)
    if not pitch_px or not ok.any() or not len(spots):
        return where
    distance, nearest = cKDTree(np.column_stack([spots.x, spots.y])).query(np.column_stack([px[ok], py[ok]]))
    where[ok] = np.where(distance <= pitch_px / 2, nearest, -1)
    return where


def read(path: str, slide_id: str, spots: Spots, pitch_px: Optional[float], warnings: list[Remark]) -> list[Labels]:
    """The one set of the file at ``path``; ``pitch_px`` is the spot pitch in pixels of ``spots`` (None: unknown)."""
    frame = read_csv(path, sep="\t", dtype=str)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    labels = frame["label"]
    labelled = present(labels)
    where = by_position(numbers(frame, "x"), numbers(frame, "y"), spots)
    missing = labelled & (where < 0)
    if missing.any():
        where[missing] = by_pixel(numbers(frame, "pixel_x")[missing], numbers(frame, "pixel_y")[missing], spots,
                                  pitch_px)
    name = file_set_name(path, slide_id)
    unmatched = np.flatnonzero(labelled & (where < 0)) + 1
    if len(unmatched):
        rows = ", ".join(map(str, unmatched[:5])) + (f" (+{len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
        warnings.append(("annotation_unmatched", f"{len(unmatched)} labelled row(s) of {path} (set {name}) match no "
                                                 f"spot by array position or within half the spot pitch: data rows "
                                                 f"{rows}"))
    keep = labelled & (where >= 0)
    return [Labels(name, path, where[keep], np.asarray(labels[keep], dtype=object))]
