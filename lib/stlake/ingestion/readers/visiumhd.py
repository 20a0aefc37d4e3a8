"""Space Ranger VisiumHD output (layout ``visiumhd``).

``binned_outputs/square_{002,008,016}um/`` each hold ``filtered_feature_bc_matrix.h5``,
``spatial/tissue_positions.parquet`` and ``spatial/scalefactors_json.json`` (with ``bin_size_um`` and
``microns_per_pixel``). A slide has hundreds of thousands of bins, so everything here is vectorised.
The image is a full-res ``image.tif`` (etc.) in the slide folder, else the hires PNG, scaled.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import ReaderOptions, guarded
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.readers.spaceranger import (
    HIRES_IMAGE,
    POSITION_COLUMNS,
    ROLES,
    choose_image,
    expression_source,
    find_matrix,
    has_matrix,
    optional_factor,
    read_positions_csv,
    read_scalefactors,
    scaled,
    slide_id,
    spatial_files,
    spots_from_columns,
    with_fullres_image,
    with_loupe_exports,
)
from stlake.ingestion.records import SlideError, SlideRecord, SlideRef
from stlake.lake import storage

BINNED = "binned_outputs"
BIN_POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv")


def bin_folder_name(bin_size_um: int) -> str:
    """``square_008um`` for 8."""
    return f"square_{int(bin_size_um):03d}um"


def available_bins(root: str) -> list[str]:
    """The ``square_*um`` folders under ``binned_outputs``."""
    return [n for n in storage.list_dir(storage.join(root, BINNED)) if n.startswith("square_")]


def resolve_paths(paths: dict[str, str], bin_size_um: Optional[int] = None) -> dict[str, str]:
    """Fill missing roles from ``root``; given roles win.

    Without ``bin_size_um`` (discovery: the bin size is a reader option) only the full-res ``image`` and
    Loupe exports are looked for; with it also bin_dir, positions, scalefactors, matrix and hires_image. A folder is
    listed only when a role it would give is missing.
    """
    paths = with_fullres_image(paths)
    if bin_size_um is None:
        return with_loupe_exports(paths)
    return {**_bin_paths(paths, bin_size_um), **paths}


def _bin_paths(paths: dict[str, str], bin_size_um: int) -> dict[str, str]:
    """bin_dir, positions, scalefactors, matrix and hires_image of one bin size; nothing when all are given."""
    has_image = bool(paths.get("image") or paths.get("hires_image"))
    if has_image and has_matrix(paths) and all(paths.get(role) for role in ("bin_dir", "positions", "scalefactors")):
        return {}
    root = paths.get("root")
    derived: dict[str, str] = {}
    bin_dir = paths.get("bin_dir") or (storage.join(root, BINNED, bin_folder_name(bin_size_um)) if root else None)
    if bin_dir:
        derived["bin_dir"] = bin_dir
        derived.update(spatial_files(storage.join(bin_dir, "spatial"), BIN_POSITION_FILES))
        if not has_matrix(paths):
            derived.update(find_matrix(bin_dir))
    hires = storage.join(root, "spatial", HIRES_IMAGE) if root else None
    if hires and not paths.get("hires_image") and "hires_image" not in derived and storage.exists(hires):
        derived["hires_image"] = hires
    return derived


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """A VisiumHD slide: a folder with ``binned_outputs/`` (bin-specific paths are left to the reader)."""
    if BINNED not in names:
        return None
    return [SlideRef(slide_id(folder), "visiumhd", "VisiumHD", resolve_paths({"root": folder}))]


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """A manifest entry with its full-resolution image found under ``root`` (bins: see ``read``)."""
    return dataclasses.replace(ref, paths=resolve_paths(ref.paths))


def read_positions_parquet(path: str) -> pa.Table:
    """The position columns of ``tissue_positions.parquet``."""
    def parse() -> pa.Table:
        with storage.open_input(path) as handle:
            parquet = pq.ParquetFile(handle)
            missing = [c for c in POSITION_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise SlideError("coords_unreadable", f"{path} lacks column(s) {', '.join(missing)}")
            return parquet.read(columns=list(POSITION_COLUMNS))
    return guarded(path, "tissue positions file", parse)


def _columns(path: str) -> dict[str, object]:
    """The six position columns by name as numpy/pandas-compatible arrays, from parquet or CSV."""
    if path.endswith(".parquet"):
        table = read_positions_parquet(path)
        return guarded(path, "tissue positions file", lambda: {c: table.column(c).to_numpy() for c in POSITION_COLUMNS})
    frame = read_positions_csv(path)
    return {c: frame[c] for c in POSITION_COLUMNS}


def bin_geometry(factors: dict, path: str, bin_size_um: int) -> tuple[float, float]:
    """Bin diameter in full-res px and microns per pixel, from the scalefactors JSON at ``path``.

    ``spot_diameter_fullres`` wins when given (``microns_per_pixel`` then defaults to bin size / diameter),
    else the diameter is bin size / ``microns_per_pixel``; every value given must be a positive number.
    """
    bin_um = optional_factor(factors, "bin_size_um", path) or float(bin_size_um)
    mpp = optional_factor(factors, "microns_per_pixel", path)
    diameter = optional_factor(factors, "spot_diameter_fullres", path)
    if diameter is not None:
        return diameter, mpp or bin_um / diameter
    if mpp is None:
        raise SlideError("coords_unreadable", f"{path} has neither 'spot_diameter_fullres' nor 'microns_per_pixel'")
    return bin_um / mpp, mpp


def _check_bin(ref: SlideRef, bin_size_um: int) -> None:
    """Raise ``bin_size_unavailable`` when the chosen bin folder does not exist."""
    bin_dir = ref.paths.get("bin_dir")
    if bin_dir and not storage.exists(bin_dir):
        have = available_bins(ref.paths["root"]) if ref.paths.get("root") else []
        raise SlideError("bin_size_unavailable", f"no {bin_folder_name(bin_size_um)} bins: {bin_dir} does not exist "
                                                 f"(available: {', '.join(have) or 'none'})")


def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one VisiumHD slide at ``options.bin_size_um``: bins, bin size in px, image choice."""
    options = options or ReaderOptions()
    ref = dataclasses.replace(ref, paths=resolve_paths(ref.paths, options.bin_size_um))
    _check_bin(ref, options.bin_size_um)
    positions = ref.paths.get("positions")
    if not positions:
        raise SlideError("coords_unreadable", f"no spatial/tissue_positions.parquet in {ref.paths.get('bin_dir')}")
    spots = spots_from_columns(positions, _columns(positions), options.in_tissue_only)
    scalefactors_path = ref.paths.get("scalefactors", "")
    factors = read_scalefactors(scalefactors_path)
    diameter, mpp = bin_geometry(factors, scalefactors_path, options.bin_size_um)
    image, scale, source, warnings = choose_image(ref, options, factors, scalefactors_path)
    spots, label_sets = anno.read_files(ref, scaled(spots, scale), warnings)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=diameter * scale,
        expression=expression_source(ref.paths), microns_per_pixel=mpp / scale,
        coord_scale=scale, image_source=source, warnings=warnings, label_sets=label_sets)


LAYOUT = Layout("visiumhd", ("VisiumHD",), (*ROLES, "bin_dir"),
                "Space Ranger VisiumHD output (binned_outputs/square_{002,008,016}um)", identify, complete, read)
