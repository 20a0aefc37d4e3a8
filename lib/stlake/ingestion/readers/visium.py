"""Space Ranger Visium output (layout ``visium``).

A slide folder (often ``outs``) holds ``spatial/tissue_positions_list.csv`` (no header) or
``spatial/tissue_positions.csv`` (header), ``spatial/scalefactors_json.json``, the expression as
``filtered_feature_bc_matrix.h5`` or a ``filtered_feature_bc_matrix/`` folder, and optionally a
user-supplied full-resolution image (``image.tif``, ``*.tif``, ``*.tiff``, ``*.btf``, ``*.jpg``).
Without one, ``spatial/tissue_hires_image.png`` is tiled and coordinates are scaled by
``tissue_hires_scalef``. What Visium shares with VisiumHD is in :mod:`.spaceranger`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import ReaderOptions
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.readers.spaceranger import (
    POSITION_COLUMNS,
    ROLES,
    SCALEFACTORS,
    choose_image,
    expression_source,
    find_matrix,
    has_matrix,
    read_positions_csv,
    read_scalefactors,
    scale_factor,
    scaled,
    slide_id,
    spatial_files,
    spots_from_columns,
    with_fullres_image,
    with_loupe_exports,
)
from stlake.ingestion.records import SlideError, SlideRecord, SlideRef
from stlake.lake import storage

POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")
SPOT_DIAMETER_UM = 55.0


# ---------------------------------------------------------------- paths (also used by discovery)

def resolve_paths(paths: dict[str, str]) -> dict[str, str]:
    """Fill missing roles (positions, scalefactors, hires_image, matrix, image) from ``root``; given roles win.

    A folder is listed only when a role it would give is missing, so resolved paths (e.g. from
    discovery) come back unchanged without any listing. Loupe exports in ``root`` are looked for along
    with the spatial files.
    """
    root = paths.get("root")
    if not root:
        return dict(paths)
    derived: dict[str, str] = {}
    if not (paths.get("positions") and paths.get("scalefactors") and (paths.get("image") or paths.get("hires_image"))):
        derived.update(spatial_files(storage.join(root, "spatial"), POSITION_FILES))
        paths = with_loupe_exports(paths)
    if not has_matrix(paths):
        derived.update(find_matrix(root))
    return with_fullres_image({**derived, **paths})


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """A Space Ranger Visium slide: ``spatial/scalefactors_json.json`` and a matrix, no ``binned_outputs/``."""
    if "binned_outputs" in names or "spatial" not in names or not find_matrix(folder, names):
        return None
    if SCALEFACTORS not in storage.list_dir(storage.join(folder, "spatial")):
        return None
    return [SlideRef(slide_id(folder), "visium", "Visium", resolve_paths({"root": folder}))]


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """A manifest entry with its missing roles found under ``root``."""
    return dataclasses.replace(ref, paths=resolve_paths(ref.paths))


# ---------------------------------------------------------------- reading

def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one Space Ranger Visium slide: positions, scalefactors, image choice (no image, no counts)."""
    options = options or ReaderOptions()
    ref = dataclasses.replace(ref, paths=resolve_paths(ref.paths))
    positions = ref.paths.get("positions")
    if not positions:
        raise SlideError("coords_unreadable", f"no spatial/tissue_positions(.csv|_list.csv) in "
                                              f"{ref.paths.get('root', ref.slide_id)}")
    frame = read_positions_csv(positions)
    spots = spots_from_columns(positions, {c: frame[c] for c in POSITION_COLUMNS}, options.in_tissue_only)
    scalefactors_path = ref.paths.get("scalefactors", "")
    factors = read_scalefactors(scalefactors_path)
    diameter = scale_factor(factors, "spot_diameter_fullres", scalefactors_path)
    image, scale, source, warnings = choose_image(ref, options, factors, scalefactors_path)
    spots, label_sets = anno.read_files(ref, scaled(spots, scale), warnings)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=diameter * scale,
        expression=expression_source(ref.paths), microns_per_pixel=SPOT_DIAMETER_UM / diameter / scale,
        coord_scale=scale, image_source=source, warnings=warnings, label_sets=label_sets)


LAYOUT = Layout("visium", ("Visium",), ROLES, "Space Ranger Visium output (spatial/ + feature-barcode matrix)",
                identify, complete, read)
