"""Helpers shared by the slide readers: options, small-file parsing, validation, image lookup.

Every file is opened through :mod:`stlake.lake.storage`, so local paths and ``s3://`` URIs behave the same.
Readers never decode images and never read expression matrices (see :mod:`stlake.ingestion.records`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import numpy as np
import pandas as pd

from stlake.ingestion.records import SlideError, Spots, describe_input_error
from stlake.lake import storage

T = TypeVar("T")

#: Extensions of a user-supplied full-resolution image next to Space Ranger outputs, in preference order.
FULLRES_EXTENSIONS = (".tif", ".tiff", ".btf", ".jpg", ".jpeg")
#: Name preferred above all others for a full-resolution image in a slide folder.
FULLRES_PREFERRED = "image.tif"
#: Spot ids shown in error / warning details.
SHOW_IDS = 5


@dataclass(frozen=True)
class ReaderOptions:
    """Reader options.

    in_tissue_only: keep only spots flagged in tissue (Visium / VisiumHD).
    bin_size_um: VisiumHD bin size (2, 8 or 16 µm).
    image_override: use this image (path or URI) instead of the one found for the slide.
    label_set, label_map, strict_labels: which annotation set fills ``spots.label``, and how raw labels are
    normalised (see :mod:`stlake.ingestion.readers.labels.mapping`).
    """

    in_tissue_only: bool = True
    bin_size_um: int = 8
    image_override: Optional[str] = None
    label_set: Optional[str] = None
    label_map: Optional[str] = None
    strict_labels: bool = False


# ---------------------------------------------------------------- reading small files

def guarded(path: str, what: str, read: Callable[[], T], reason: str = "coords_unreadable") -> T:
    """Run ``read``; a missing or garbled file becomes ``SlideError(reason)`` naming ``path``.

    The detail keeps the parser's error type and position, not its message (``describe_input_error``).
    """
    if not storage.exists(path):
        raise SlideError(reason, f"{what} not found: {path}")
    try:
        return read()
    except SlideError:
        raise
    except Exception as error:  # any parse failure of a small input file means the file is unusable
        raise SlideError(reason, f"{what} unreadable: {path} ({describe_input_error(error)})") from error


def read_csv(path: str, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` on a local path or URI (gzip content detected)."""
    with storage.open_text(path) as text:
        # open_text yields an io.TextIOWrapper, which read_csv accepts; its annotation says io.TextIOBase
        return pd.read_csv(text, **kwargs)  # type: ignore[call-overload]


def read_json(path: str) -> dict:
    """A JSON object file."""
    data = json.loads(storage.read_bytes(path).decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def first_line(path: str) -> str:
    """The first line of a text file (gzip content detected), without the line break."""
    with storage.open_text(path) as text:
        return text.readline().rstrip("\r\n")


def find_existing(candidates: Iterable[Optional[str]]) -> Optional[str]:
    """The first candidate path that exists."""
    for candidate in candidates:
        if candidate and storage.exists(candidate):
            return candidate
    return None


# ---------------------------------------------------------------- validation and building Spots

def as_ids(values: Any) -> np.ndarray:
    """Spot ids as an object array of ``str``."""
    return np.asarray(pd.Series(values, dtype=object).astype(str).to_numpy(), dtype=object)


def check_unique(ids: np.ndarray, path: str) -> None:
    """Raise ``duplicate_spot_ids`` when an id occurs twice in ``path``."""
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if duplicated.any():
        names = list(dict.fromkeys(ids[duplicated].tolist()))
        rows = np.flatnonzero(ids == names[0])[:2] + 1
        raise SlideError("duplicate_spot_ids", f"{len(names)} spot id(s) occur more than once in {path}, "
                                               f"e.g. {preview(names)} (first in data rows {rows[0]} and {rows[1]})")


def as_float(values: Any, path: str, column: str) -> np.ndarray:
    """A numeric float64 column; non-numeric or missing values make the coordinates unreadable."""
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers)
    if bad.any():
        raise SlideError("coords_unreadable", f"{int(bad.sum())} non-numeric or missing value(s) in column "
                                              f"'{column}' of {path}, the first in data row {first_row(bad)}")
    return numbers


def require_positive(values: np.ndarray, path: str, column: str, what: str) -> None:
    """Raise ``implausible_geometry`` when a ``what`` (a radius, a size) in ``column`` is zero or negative."""
    bad = ~(values > 0)
    if bad.any():
        raise SlideError("implausible_geometry", f"{int(bad.sum())} {what} value(s) in column '{column}' of {path} "
                                                 f"are zero or negative, the first in data row {first_row(bad)}: "
                                                 f"a {what} must be positive")


def first_row(mask: np.ndarray) -> int:
    """The 1-based data row (header not counted) of the first True in ``mask``."""
    return int(np.flatnonzero(mask)[0]) + 1


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: str) -> None:
    """Raise ``coords_unreadable`` when ``frame`` lacks one of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SlideError("coords_unreadable", f"{path} lacks column(s) {', '.join(missing)} "
                                              f"(has {', '.join(map(str, frame.columns))})")


def make_spots(spot_id: np.ndarray, x: np.ndarray, y: np.ndarray, in_tissue: Optional[np.ndarray] = None,
               array_row: Optional[np.ndarray] = None, array_col: Optional[np.ndarray] = None,
               label: Optional[np.ndarray] = None) -> Spots:
    """``Spots`` with the documented dtypes; unknown fields get their defaults (True, -1, None)."""
    n = len(spot_id)
    return Spots(
        spot_id=np.asarray(spot_id, dtype=object),
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        in_tissue=np.ones(n, dtype=bool) if in_tissue is None else np.asarray(in_tissue, dtype=bool),
        array_row=np.full(n, -1, np.int32) if array_row is None else np.asarray(array_row, dtype=np.int32),
        array_col=np.full(n, -1, np.int32) if array_col is None else np.asarray(array_col, dtype=np.int32),
        label=np.full(n, None, dtype=object) if label is None else np.asarray(label, dtype=object),
    )


def preview(ids: Iterable[Any]) -> str:
    """The first few ids, comma separated, and how many more there are: ``a, b, c, d, e (+3 more)``."""
    ids = list(ids)
    shown = ", ".join(map(str, ids[:SHOW_IDS]))
    return shown + (f" (+{len(ids) - SHOW_IDS} more)" if len(ids) > SHOW_IDS else "")


# ---------------------------------------------------------------- images

def find_fullres_image(folder: str) -> Optional[str]:
    """A full-resolution image at the top level of ``folder`` (``image.tif`` first), or None.

    A Space Ranger ``outs`` folder is also looked at one level up (the slide folder).
    """
    folders = [folder]
    if storage.basename(folder) == "outs":
        folders.append(storage.parent(folder))
    for candidate_folder in folders:
        names = storage.list_dir(candidate_folder)
        if FULLRES_PREFERRED in names:
            return storage.join(candidate_folder, FULLRES_PREFERRED)
        for extension in FULLRES_EXTENSIONS:
            matches = [n for n in names if n.lower().endswith(extension) and not n.startswith(".")]
            if matches:
                return storage.join(candidate_folder, matches[0])
    return None


def image_or_missing(path: Optional[str], what: str) -> str:
    """``path`` when it exists, else ``SlideError('image_missing')``."""
    if not path:
        raise SlideError("image_missing", f"no image for the slide ({what})")
    if not storage.exists(path):
        raise SlideError("image_missing", f"{what} not found: {path}")
    return path

