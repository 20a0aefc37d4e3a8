"""STimage-1K4M release layout (layout ``stimage``).

A release root holds, per technology folder ``{ST,Visium,VisiumHD}``::

    {tech}/image/{slide}.png          the H&E image (bytes may be JPEG/TIFF/PNG)
    {tech}/coord/{slide}_coord.csv    header ",yaxis,xaxis,r": spot id, y and x in px, radius in px
    {tech}/gene_exp/{slide}_count.csv dense counts, rows = spot ids, columns = genes
    annotation/{slide}_anno.csv       optional, TAB separated, spot id + label column ``V2`` (set ``anno``)
    meta/meta_all_gene.csv            one row per slide: slide, species, tissue, pmid, title, ...
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import (
    ReaderOptions,
    as_float,
    as_ids,
    check_unique,
    guarded,
    image_or_missing,
    make_spots,
    read_csv,
    require_columns,
    require_positive,
)
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.records import ExpressionSource, SlideError, SlideRecord, SlideRef, describe_input_error
from stlake.lake import storage

TECH_FOLDERS = ("ST", "Visium", "VisiumHD")
META_PATH = ("meta", "meta_all_gene.csv")
COORD_SUFFIX = "_coord.csv"
REQUIRED_ROLES = ("image", "coords", "counts")
#: Physical spot diameter per technology (µm), used to derive microns per pixel from the radius.
SPOT_DIAMETER_UM = {"ST": 100.0, "Visium": 55.0}
ROLES = ("image", "coords", "counts", "annotation", "meta")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- paths and metadata (also used by discovery)

def slide_paths(root: str, tech: str, slide: str) -> dict[str, str]:
    """The canonical paths of ``slide`` in the ``tech`` folder of the release at ``root``.

    Nothing is checked; ``annotation`` is included whether or not it exists.
    """
    return {
        "root": root,
        "image": storage.join(root, tech, "image", f"{slide}.png"),
        "coords": storage.join(root, tech, "coord", f"{slide}{COORD_SUFFIX}"),
        "counts": storage.join(root, tech, "gene_exp", f"{slide}_count.csv"),
        "annotation": storage.join(root, "annotation", f"{slide}_anno.csv"),
        "meta": storage.join(root, *META_PATH),
    }


def resolve_paths(paths: dict[str, str], technology: Optional[str], slide: str) -> dict[str, str]:
    """Fill missing roles from ``root`` (the release root) and the slide id; given roles win.

    Paths are returned as they are when image, coords and counts are all given (or there is no root).
    Derived ``annotation`` and ``meta`` are kept only when they exist.
    """
    root = paths.get("root")
    if not root or all(paths.get(role) for role in REQUIRED_ROLES):
        return dict(paths)
    tech = technology if technology in TECH_FOLDERS else find_technology(root, slide)
    derived = slide_paths(root, tech or "Visium", slide)
    for optional in ("annotation", "meta"):
        if not storage.exists(derived[optional]):
            derived.pop(optional)
    return {**derived, **paths}


def find_technology(root: str, slide: str) -> Optional[str]:
    """The technology folder of the release holding ``{slide}_coord.csv``."""
    for tech in TECH_FOLDERS:
        if storage.exists(storage.join(root, tech, "coord", f"{slide}{COORD_SUFFIX}")):
            return tech
    return None


def read_meta_table(path: str) -> dict[str, dict[str, str]]:
    """``meta_all_gene.csv`` as ``{slide: {column: value}}`` (empty values left out)."""
    frame = read_csv(path, dtype=str, keep_default_na=False)
    key = "slide" if "slide" in frame.columns else frame.columns[0]
    table: dict[str, dict[str, str]] = {}
    for row in frame.to_dict("records"):
        slide = str(row.pop(key)).strip()
        table[slide] = {str(k).strip(): str(v) for k, v in row.items() if str(v).strip() != ""}
    return table


def apply_meta(ref: SlideRef, row: Optional[dict[str, str]]) -> SlideRef:
    """``ref`` with species/tissue/meta filled from a meta row; values already on ``ref`` win.

    Once a row is applied the ``meta`` role is dropped, so the reader does not read the CSV again.
    """
    if not row:
        return ref
    meta = {k: v for k, v in row.items() if k not in ("species", "tissue")}
    meta.update(ref.meta)
    paths = {role: path for role, path in ref.paths.items() if role != "meta"}
    return dataclasses.replace(ref, paths=paths, species=ref.species or row.get("species"),
                               tissue=ref.tissue or row.get("tissue"), meta=meta)


# ---------------------------------------------------------------- discovery: a scanned release, a manifest entry

def is_release(folder: str, names: list[str]) -> bool:
    """An STimage-1K4M release root: ``meta/meta_all_gene.csv`` or a ``{tech}/coord/`` folder."""
    if "meta" in names and storage.exists(storage.join(folder, *META_PATH)):
        return True
    return any(tech in names and "coord" in storage.list_dir(storage.join(folder, tech)) for tech in TECH_FOLDERS)


def meta_table(root: str) -> Optional[dict[str, dict[str, str]]]:
    """The release's meta rows by slide; None without a meta CSV, empty when it is unreadable."""
    path = storage.join(root, *META_PATH)
    if not storage.exists(path):
        return None
    try:
        return read_meta_table(path)
    except Exception as error:  # the reader reports it per slide; discovery goes on
        log.warning("cannot read %s: %s", path, error)
        return {}


def _release_ref(root: str, tech: str, slide: str, found: dict[str, set[str]],
                 meta: Optional[dict[str, dict[str, str]]]) -> SlideRef:
    """One scanned slide; ``found`` holds the names listed in the annotation and image folders."""
    paths = slide_paths(root, tech, slide)
    if storage.basename(paths["annotation"]) not in found["annotation"]:
        paths.pop("annotation")
    if meta is None:
        paths.pop("meta")
    if f"{slide}.png" not in found["image"]:
        other = sorted(n for n in found["image"] if n.rsplit(".", 1)[0] == slide)
        if other:
            paths["image"] = storage.join(root, tech, "image", other[0])
    return apply_meta(SlideRef(slide, "stimage", tech, paths), (meta or {}).get(slide))


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """Every slide of the release at ``folder``: one per ``{tech}/coord/{slide}_coord.csv``."""
    if not is_release(folder, names):
        return None
    meta = meta_table(folder)
    annotations = set(storage.list_dir(storage.join(folder, "annotation")))
    refs: list[SlideRef] = []
    for tech in TECH_FOLDERS:
        coord_names = storage.list_dir(storage.join(folder, tech, "coord"))
        images = storage.list_dir(storage.join(folder, tech, "image")) if coord_names else []
        found = {"annotation": annotations, "image": set(images)}
        refs.extend(_release_ref(folder, tech, name[: -len(COORD_SUFFIX)], found, meta) for name in coord_names
                    if name.endswith(COORD_SUFFIX) and not name.startswith("."))
    return refs


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """A manifest entry with its technology, roles and meta row filled in from the release root.

    Explicit roles win over derived ones; the release's meta CSV is read once per root, kept in ``cache``.
    """
    root = ref.paths.get("root")
    if not root:
        return ref
    technology = ref.technology or find_technology(root, ref.slide_id) or ""
    paths = {**resolve_paths({"root": root}, technology, ref.slide_id), **ref.paths}
    if root not in cache:
        cache[root] = meta_table(root)
    meta = (cache[root] or {}).get(ref.slide_id)
    return apply_meta(dataclasses.replace(ref, technology=technology, paths=paths), meta)


# ---------------------------------------------------------------- reading

def _coords(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spot ids, x, y and radius (positive) from a ``_coord.csv``."""
    frame = guarded(path, "coordinates file", lambda: read_csv(path, index_col=0))
    require_columns(frame, ("xaxis", "yaxis", "r"), path)
    ids = as_ids(frame.index)
    check_unique(ids, path)
    radius = as_float(frame["r"], path, "r")
    require_positive(radius, path, "r", "spot radius")
    return ids, as_float(frame["xaxis"], path, "xaxis"), as_float(frame["yaxis"], path, "yaxis"), radius


def _with_meta(ref: SlideRef, warnings: list[tuple[str, str]]) -> SlideRef:
    """Apply the release's meta CSV when discovery has not (it drops the ``meta`` role once applied)."""
    path = ref.paths.get("meta")
    if not path or (ref.meta and ref.species and ref.tissue) or not storage.exists(path):
        return ref
    try:
        table = read_meta_table(path)
    except Exception as error:
        warnings.append(("meta_unreadable", f"{path}: {describe_input_error(error)}"))
        return ref
    if ref.slide_id not in table:
        warnings.append(("meta_missing", f"slide {ref.slide_id} has no row in {path}"))
    return apply_meta(ref, table.get(ref.slide_id))


def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one STimage-1K4M slide: coordinates, radius, labels and metadata (no image, no counts)."""
    options = options or ReaderOptions()
    ref = dataclasses.replace(ref, paths=resolve_paths(ref.paths, ref.technology, ref.slide_id))
    warnings: list[tuple[str, str]] = []
    coords = ref.paths.get("coords")
    if not coords:
        raise SlideError("coords_unreadable", f"no coordinates file given for slide {ref.slide_id}")
    ids, x, y, radius = _coords(coords)
    image = image_or_missing(options.image_override or ref.paths.get("image"), "image")
    counts = ref.paths.get("counts")
    if not counts or not storage.exists(counts):
        raise SlideError("expression_missing", f"counts file not found: {counts}")
    spots, label_sets = anno.read_files(ref, make_spots(ids, x, y), warnings)
    ref = _with_meta(ref, warnings)
    diameter = 2.0 * float(np.median(radius)) if len(radius) else 0.0
    physical = SPOT_DIAMETER_UM.get(ref.technology)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=diameter, label_sets=label_sets,
        expression=ExpressionSource("dense_csv", counts, {"sep": ","}),
        microns_per_pixel=physical / diameter if physical and diameter > 0 else None,
        warnings=warnings)


LAYOUT = Layout("stimage", TECH_FOLDERS, ROLES, "STimage-1K4M release ({ST,Visium,VisiumHD}/{image,coord,gene_exp}/)",
                identify, complete, read)
