"""Space Ranger outputs, shared by the Visium and VisiumHD readers: file names, paths, positions, scale, image.

Both layouts hold ``spatial/scalefactors_json.json``, a ``filtered_feature_bc_matrix.h5`` (or the
``filtered_feature_bc_matrix/`` folder), tissue positions with the same six columns, a hires PNG
and optionally a user-supplied full-resolution image. The vendor's file names and JSON keys live here.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import pandas as pd

from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import (
    ReaderOptions,
    as_float,
    as_ids,
    check_unique,
    find_existing,
    find_fullres_image,
    first_line,
    guarded,
    image_or_missing,
    make_spots,
    read_csv,
    read_json,
    require_columns,
)
from stlake.ingestion.readers.labels import loupe
from stlake.ingestion.records import ExpressionSource, SlideError, SlideRef, Spots
from stlake.lake import storage

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
SCALEFACTORS = "scalefactors_json.json"
HIRES_IMAGE = "tissue_hires_image.png"
MATRIX_H5 = "filtered_feature_bc_matrix.h5"
MATRIX_DIR = "filtered_feature_bc_matrix"
#: Roles a manifest may give for a Space Ranger slide (``bin_dir``: VisiumHD only); ``annotation``: Loupe exports.
ROLES = ("positions", "scalefactors", "matrix_h5", "matrix_dir", "image", "hires_image", anno.ANNOTATION_ROLE)


def slide_id(folder: str) -> str:
    """Folder name, or the parent's name for an ``outs`` folder."""
    name = storage.basename(folder)
    return storage.basename(storage.parent(folder)) if name == "outs" else name


# ---------------------------------------------------------------- paths

def find_matrix(folder: str, names: Optional[list[str]] = None) -> dict[str, str]:
    """``matrix_h5`` and/or ``matrix_dir`` of a Space Ranger folder (GEO-style name prefixes accepted)."""
    names = storage.list_dir(folder) if names is None else names
    found: dict[str, str] = {}
    h5 = [n for n in names if n == MATRIX_H5] or [n for n in names if n.endswith("_" + MATRIX_H5)]
    if h5:
        found["matrix_h5"] = storage.join(folder, h5[0])
    if MATRIX_DIR in names:
        found["matrix_dir"] = storage.join(folder, MATRIX_DIR)
    return found


def spatial_files(spatial: str, position_names: tuple[str, ...]) -> dict[str, str]:
    """Roles found in a ``spatial/`` folder: positions (first of ``position_names``), scalefactors, hires image."""
    names = storage.list_dir(spatial)
    found: dict[str, str] = {}
    positions = [name for name in position_names if name in names]
    if positions:
        found["positions"] = storage.join(spatial, positions[0])
    if SCALEFACTORS in names:
        found["scalefactors"] = storage.join(spatial, SCALEFACTORS)
    if HIRES_IMAGE in names:
        found["hires_image"] = storage.join(spatial, HIRES_IMAGE)
    return found


def has_matrix(paths: dict[str, str]) -> bool:
    """A matrix role (HDF5 file or folder) is given."""
    return bool(paths.get("matrix_h5") or paths.get("matrix_dir"))


def with_fullres_image(paths: dict[str, str]) -> dict[str, str]:
    """``paths`` with ``image`` found in ``root`` when it is not given (``root`` is listed only then)."""
    if paths.get("image") or not paths.get("root"):
        return dict(paths)
    image = find_fullres_image(paths["root"])
    return {**paths, "image": image} if image else dict(paths)


def with_loupe_exports(paths: dict[str, str]) -> dict[str, str]:
    """``paths`` with the Loupe Browser exports next to the slide as annotation files, unless some are given."""
    if anno.annotation_paths(paths) or not paths.get("root"):
        return dict(paths)
    return anno.with_annotations(paths, loupe.find_exports(paths["root"]))


# ---------------------------------------------------------------- helpers

def read_scalefactors(path: Optional[str]) -> dict:
    """The scalefactors JSON; missing or garbled -> ``coords_unreadable``."""
    if not path:
        raise SlideError("coords_unreadable", "no spatial/scalefactors_json.json for the slide")
    return guarded(path, "scalefactors file", lambda: read_json(path))


def json_kind(value: Any) -> str:
    """What a JSON value is, in words (for details that must not quote it)."""
    kinds = {bool: "true/false", str: "text", list: "a list", dict: "an object"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def optional_factor(scalefactors: dict, key: str, path: str) -> Optional[float]:
    """A positive number from the scalefactors JSON; None when ``key`` is absent or null.

    A value that is not a JSON number is ``coords_unreadable``; zero, negative or infinite is
    ``implausible_geometry`` (a size or scale of zero makes 1x1 px tiles or divides by zero).
    """
    value = scalefactors.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SlideError("coords_unreadable", f"'{key}' in {path} is {json_kind(value)}, not a number")
    if not math.isfinite(value) or value <= 0:
        raise SlideError("implausible_geometry", f"'{key}' in {path} is {float(value):g}: it must be a positive "
                                                 "number")
    return float(value)


def scale_factor(scalefactors: dict, key: str, path: str) -> float:
    """A positive number from the scalefactors JSON; missing is ``coords_unreadable`` (see ``optional_factor``)."""
    value = optional_factor(scalefactors, key, path)
    if value is None:
        raise SlideError("coords_unreadable", f"{path} has no '{key}'")
    return value


def choose_image(ref: SlideRef, options: ReaderOptions, scalefactors: dict,
                 scalefactors_path: str) -> tuple[str, float, str, list[tuple[str, str]]]:
    """The image to tile: override, given/found full-res image, else the hires PNG with its scale factor.

    Returns (image uri, coord_scale, image_source, warnings).
    """
    if options.image_override:
        return image_or_missing(options.image_override, "image override"), 1.0, "fullres", []
    if ref.paths.get("image"):
        return image_or_missing(ref.paths["image"], "full-resolution image"), 1.0, "fullres", []
    hires = find_existing([ref.paths.get("hires_image")])
    if not hires:
        where = ref.paths.get("root", ref.slide_id)
        raise SlideError("image_missing", f"no full-resolution image (image.tif, *.tif, *.tiff, *.btf, *.jpg) and no "
                                          f"spatial/{HIRES_IMAGE} in {where}")
    scale = scale_factor(scalefactors, "tissue_hires_scalef", scalefactors_path)
    warning = ("hires_image", f"no full-resolution image for slide {ref.slide_id}; tiling {hires} with coordinates "
                              f"and spot diameter scaled by tissue_hires_scalef={scale:g}")
    return hires, scale, "hires", [warning]


def expression_source(paths: dict[str, str]) -> ExpressionSource:
    """``tenx_h5`` when the HDF5 matrix exists, else ``tenx_mtx`` for the matrix folder."""
    h5, folder = paths.get("matrix_h5"), paths.get("matrix_dir")
    if h5 and storage.exists(h5):
        return ExpressionSource("tenx_h5", h5)
    if folder and storage.exists(folder):
        return ExpressionSource("tenx_mtx", folder)
    raise SlideError("expression_missing", f"no {MATRIX_H5} or {MATRIX_DIR}/ found "
                                           f"({h5 or folder or paths.get('root', '?')})")


def spots_from_columns(path: str, columns: Mapping[str, object], in_tissue_only: bool) -> Spots:
    """Vectorised ``Spots`` from the ``POSITION_COLUMNS`` by name (full-res px), duplicates checked on all spots."""
    def numbers(name: str) -> np.ndarray:
        return as_float(columns[name], path, name)
    ids = as_ids(columns["barcode"])
    check_unique(ids, path)
    tissue = numbers("in_tissue") != 0
    spots = make_spots(ids, numbers("pxl_col_in_fullres"), numbers("pxl_row_in_fullres"), in_tissue=tissue,
                       array_row=numbers("array_row").astype(np.int32), array_col=numbers("array_col").astype(np.int32))
    return spots.take(tissue) if in_tissue_only else spots


def scaled(spots: Spots, scale: float) -> Spots:
    """``spots`` with x/y multiplied by ``scale``."""
    if scale == 1.0:
        return spots
    return dataclasses.replace(spots, x=spots.x * scale, y=spots.y * scale)


def header_names(path: str) -> Optional[list[str]]:
    """The column names of a positions CSV whose first line is a header (starts with ``barcode``), else None."""
    names = [name.strip().strip('"') for name in first_line(path).split(",")]
    return names if names[0] == "barcode" else None


def read_positions_csv(path: str) -> pd.DataFrame:
    """``tissue_positions.csv`` (header) or ``tissue_positions_list.csv`` (no header) as a frame.

    Every row must have one field per column (the header's, else the six Space Ranger columns): an
    extra or missing field would shift the columns, so it is ``coords_unreadable`` naming the line.
    """
    def parse() -> pd.DataFrame:
        names = header_names(path)
        frame = read_csv(path, header=None, skiprows=1 if names else 0, index_col=False, dtype={0: str})
        expected = names or list(POSITION_COLUMNS)
        if frame.shape[1] != len(expected):
            wanted = f"its header names {len(expected)}" if names else \
                f"expected the {len(expected)} columns {', '.join(expected)}"
            raise SlideError("coords_unreadable", f"the rows of {path} have {frame.shape[1]} fields, {wanted}")
        frame.columns = pd.Index(expected)
        return frame
    frame = guarded(path, "tissue positions file", parse)
    require_columns(frame, POSITION_COLUMNS, path)
    return frame
