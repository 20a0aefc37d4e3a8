"""Legacy Spatial Transcriptomics slides (layout ``st``).

A slide is a counts TSV (optionally gzipped; rows = spots named ``{x}x{y}``, columns = genes), a
spot-detector TSV (``x y new_x new_y pixel_x pixel_y selected``), an H&E JPEG and optionally
labelled-coordinates TSVs (``*_labeled_coordinates.tsv``, :mod:`stlake.ingestion.readers.labels`). Counts rows and
selected detector rows are matched on the array position (x, y). Spots are 100 µm wide on a 200 µm
grid; the pixel pitch is fitted from the detector (pixel = a + b * new_array_coordinate).
This is the one reader that reads (the first column of) the counts file.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np
import pandas as pd

from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import (
    ReaderOptions,
    as_float,
    check_unique,
    guarded,
    image_or_missing,
    make_spots,
    preview,
    read_csv,
    require_columns,
)
from stlake.ingestion.readers.labels.labelled_coords import is_labelled_coords_name
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.records import ExpressionSource, SlideError, SlideRecord, SlideRef
from stlake.lake import storage

DETECTOR_COLUMNS = ("x", "y", "new_x", "new_y", "pixel_x", "pixel_y")
SPOT_DIAMETER_UM = 100.0
SPOT_PITCH_UM = 200.0
#: A fitted spacing at or below this many pixels per array unit means the pixel columns do not follow the array.
MIN_PITCH_PX = 1e-6
SPOT_NAME = re.compile(r"^\s*(-?\d+(?:\.\d+)?)x(-?\d+(?:\.\d+)?)\s*$")


# ---------------------------------------------------------------- paths (also used by discovery)

def is_detector(name: str) -> bool:
    """A spot-detector TSV name."""
    return "spot_detector" in name.lower() and name.lower().endswith((".tsv", ".tsv.gz"))


def is_counts(name: str) -> bool:
    """A counts TSV name (any TSV that is not the spot detector)."""
    return name.lower().endswith((".tsv", ".tsv.gz")) and not is_detector(name) and not name.startswith(".") \
        and not is_labelled_coords_name(name)


def is_jpeg(name: str) -> bool:
    """An H&E JPEG name."""
    return name.lower().endswith((".jpg", ".jpeg")) and not name.startswith(".")


def pick(names: list[str], preferred: tuple[str, ...] = ()) -> Optional[str]:
    """One name: the first containing a preferred word if any does, else the first; None when empty."""
    for word in preferred:
        hits = [n for n in names if word in n.lower()]
        if hits:
            return hits[0]
    return names[0] if names else None


def find_files(folder: str, names: Optional[list[str]] = None) -> dict[str, str]:
    """``counts``, ``spot_detector``, ``image`` and labelled coordinates in a legacy ST slide folder (those found)."""
    names = storage.list_dir(folder) if names is None else names
    chosen = {
        "spot_detector": pick([n for n in names if is_detector(n)]),
        "counts": pick([n for n in names if is_counts(n)], ("count", "stdata")),
        "image": pick([n for n in names if is_jpeg(n)], ("he", "hne")),
    }
    found = {role: storage.join(folder, name) for role, name in chosen.items() if name}
    labelled = sorted(storage.join(folder, n) for n in names if is_labelled_coords_name(n))
    return anno.with_annotations(found, labelled)


def resolve_paths(paths: dict[str, str]) -> dict[str, str]:
    """Fill missing roles from ``root``; given roles win (annotation files found only when none is given)."""
    if paths.get("root") and not all(paths.get(r) for r in REQUIRED_ROLES):
        found = find_files(paths["root"])
        return {**(anno.without_annotations(found) if anno.annotation_paths(paths) else found), **paths}
    return dict(paths)


REQUIRED_ROLES = ("counts", "spot_detector", "image")
ROLES = (*REQUIRED_ROLES, anno.ANNOTATION_ROLE)


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """A legacy ST slide: a spot-detector TSV, a counts TSV and a JPEG in one folder."""
    paths = find_files(folder, names)
    if not all(paths.get(role) for role in REQUIRED_ROLES):
        return None
    return [SlideRef(storage.basename(folder), "st", "ST", {"root": folder, **paths})]


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """A manifest entry with its missing roles found under ``root``."""
    return dataclasses.replace(ref, paths=resolve_paths(ref.paths))


# ---------------------------------------------------------------- reading

def read_spot_names(path: str) -> np.ndarray:
    """The first column of the counts TSV below its header line (quotes stripped)."""
    def parse() -> np.ndarray:
        with storage.open_text(path) as text:
            text.readline()  # header: genes
            names = [line.split("\t", 1)[0].strip().strip('"') for line in text if line.strip()]
        return np.array(names, dtype=object)
    return guarded(path, "counts file", parse, reason="expression_missing")


def parse_positions(names: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Array (x, y) rounded to ints from ``{x}x{y}`` names, and a mask of names that parsed."""
    parts = pd.Series(names, dtype=object).str.extract(SPOT_NAME.pattern)
    ok = parts.notna().all(axis=1).to_numpy()
    x = np.rint(pd.to_numeric(parts[0], errors="coerce").fillna(0).to_numpy()).astype(np.int64)
    y = np.rint(pd.to_numeric(parts[1], errors="coerce").fillna(0).to_numpy()).astype(np.int64)
    return x, y, ok


def read_detector(path: str) -> pd.DataFrame:
    """The spot-detector table with numeric columns and a bool ``selected`` (all True when absent)."""
    frame = guarded(path, "spot detector file", lambda: read_csv(path, sep="\t"))
    require_columns(frame, DETECTOR_COLUMNS, path)
    out = pd.DataFrame({c: as_float(frame[c], path, c) for c in DETECTOR_COLUMNS})
    out["selected"] = (as_float(frame["selected"], path, "selected") == 1) if "selected" in frame.columns else True
    return out


def pixel_pitch(detector: pd.DataFrame, path: str) -> float:
    """Pixels per array unit: mean |slope| of least-squares fits pixel_x ~ new_x and pixel_y ~ new_y."""
    slopes = []
    for array_column, pixel_column in (("new_x", "pixel_x"), ("new_y", "pixel_y")):
        a, p = detector[array_column].to_numpy(), detector[pixel_column].to_numpy()
        if len(a) < 2 or np.ptp(a) == 0:
            continue
        design = np.column_stack([np.ones_like(a), a])
        (_, slope), *_ = np.linalg.lstsq(design, p, rcond=None)
        slopes.append(abs(float(slope)))
    if not slopes:
        raise SlideError("coords_unreadable", f"cannot fit the spot spacing from {path}: too few distinct positions")
    pitch = float(np.mean(slopes))
    if not pitch > MIN_PITCH_PX:
        raise SlideError("implausible_geometry", f"the spot spacing fitted from {path} is {pitch:.2f} px: the "
                                                 "pixel_x/pixel_y columns do not move with new_x/new_y")
    return pitch


def match(names: np.ndarray, detector: pd.DataFrame, counts_path: str, detector_path: str
          ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Counts-row positions and detector-row positions of matched spots (counts order), plus warnings."""
    x, y, ok = parse_positions(names)
    selected = detector[detector["selected"]]
    key = pd.MultiIndex.from_arrays([np.rint(selected["x"]).astype(np.int64), np.rint(selected["y"]).astype(np.int64)])
    if key.has_duplicates:
        dup = key[key.duplicated()]
        raise SlideError("duplicate_spot_ids", f"{len(dup)} array position(s) selected twice in {detector_path}, "
                                               f"e.g. {preview(f'{a}x{b}' for a, b in dup)}")
    where = np.full(len(names), -1, dtype=np.int64)
    where[ok] = key.get_indexer(pd.MultiIndex.from_arrays([x[ok], y[ok]]))
    rows = np.flatnonzero(where >= 0)
    twice = pd.Series(where[rows]).duplicated(keep=False).to_numpy()
    if twice.any():
        raise SlideError("duplicate_spot_ids", f"counts rows {preview(names[rows][twice])} of {counts_path} match "
                                               f"the same array position(s) in {detector_path}")
    used = np.zeros(len(selected), dtype=bool)
    used[where[rows]] = True
    warnings = []
    unmatched_counts = names[where < 0]
    unmatched_detector = [f"{a}x{b}" for a, b in key[~used]]
    if len(unmatched_counts) or unmatched_detector:
        warnings.append(("unmatched_spots",
                         f"{len(unmatched_counts)} counts spot(s) of {counts_path} have no selected spot-detector "
                         f"entry (e.g. {preview(unmatched_counts) or '-'}); {len(unmatched_detector)} selected "
                         f"spot-detector entries of {detector_path} have no counts "
                         f"(e.g. {preview(unmatched_detector) or '-'})"))
    return rows, selected.index.to_numpy()[where[rows]], warnings


def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one legacy ST slide: match counts rows to detector spots, fit the pixel pitch."""
    options = options or ReaderOptions()
    ref = dataclasses.replace(ref, paths=resolve_paths(ref.paths))
    counts, detector_path = ref.paths.get("counts"), ref.paths.get("spot_detector")
    if not detector_path:
        raise SlideError("coords_unreadable", f"no spot detector file (*spot_detector*.tsv) for slide {ref.slide_id}")
    if not counts:
        raise SlideError("expression_missing", f"no counts file (*.tsv / *.tsv.gz) for slide {ref.slide_id}")
    detector = read_detector(detector_path)
    names = read_spot_names(counts)
    check_unique(names, counts)
    image = image_or_missing(options.image_override or ref.paths.get("image"), "H&E image")
    pitch = pixel_pitch(detector, detector_path)
    rows, detector_rows, warnings = match(names, detector, counts, detector_path)
    spots_detector = detector.loc[detector_rows]
    spots = make_spots(names[rows], spots_detector["pixel_x"].to_numpy(), spots_detector["pixel_y"].to_numpy(),
                       array_row=np.rint(spots_detector["y"].to_numpy()),
                       array_col=np.rint(spots_detector["x"].to_numpy()))
    spots, label_sets = anno.read_files(ref, spots, warnings, pitch_px=pitch)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=pitch * SPOT_DIAMETER_UM / SPOT_PITCH_UM,
        expression=ExpressionSource("st_tsv", counts), microns_per_pixel=SPOT_PITCH_UM / pitch, warnings=warnings,
        label_sets=label_sets)


LAYOUT = Layout("st", ("ST",), ROLES, "legacy Spatial Transcriptomics (counts TSV, spot detector TSV, H&E JPEG)",
                identify, complete, read)
