"""HEST-1k samples (layout ``hest``): a release root or one sample folder as the hest library saves it.

A **root** holds ``st/{id}.h5ad`` (scanpy AnnData, read like :mod:`.anndata`), ``wsis/{id}.tif`` (the
whole-slide image, a pyramidal generic TIFF or BigTIFF) and ``metadata/{id}.json``; ``patches/``,
``thumbnails/``, ``tissue_seg/``, ``spatial_plots/`` and the rest are not needed. A **sample folder**
(``HESTData.save``) holds ``aligned_adata.h5ad``, ``aligned_fullres_HE.tif`` and ``metrics.json``.
A manifest entry gives ``path`` = the root and ``slide_id`` = the sample id (or the roles ``h5ad``,
``image``, ``metadata``).

``obsm['spatial']`` is in pixels of the WSI's level 0, which is tiled (a pyramid level may be read
instead for a target resolution). From the metadata: µm per pixel (``pixel_size_um_estimated``, else
``pixel_size_um_embedded``; the TIFF's own resolution tags are not trusted: HEST writes pixels per mm
labelled as per cm), the spot diameter in µm (``spot_diameter``), ``st_technology`` (``Visium``,
``Visium HD``, ``Spatial Transcriptomics``), ``species`` and ``organ`` (-> ``tissue``); the other scalar
keys (``oncotree_code``, ``inter_spot_dist``, ...) go to ``slides.meta_json``. Xenium samples are
cell-level (no spots) and are refused as ``unsupported_technology``. Without a WSI, the
``downscaled_fullres`` image inside the ``.h5ad`` is tiled with scaled coordinates.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from stlake.ingestion.readers import anndata
from stlake.ingestion.readers.common import ReaderOptions, find_existing, guarded, image_or_missing, read_json
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.readers.spaceranger import optional_factor
from stlake.ingestion.records import Remark, SlideError, SlideRecord, SlideRef
from stlake.lake import storage

ROLES = ("h5ad", "image", "metadata", "annotation")
WSI_EXTENSIONS = (".tif", ".tiff", ".btf")
SAMPLE_FILES = {"h5ad": "aligned_adata.h5ad", "image": "aligned_fullres_HE.tif", "metadata": "metrics.json"}
#: HEST's ``st_technology`` -> stlake's technology; Xenium is cell-level and refused.
TECHNOLOGIES = {"visium": "Visium", "visium hd": "VisiumHD", "visiumhd": "VisiumHD",
                "spatial transcriptomics": "ST", "st": "ST"}
CELL_LEVEL = ("xenium",)
#: Metadata keys giving µm per pixel of the WSI's level 0, in preference order.
PIXEL_SIZE_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
#: Metadata keys that become ``slides`` columns rather than ``meta_json`` entries.
COLUMN_KEYS = ("st_technology", "species", "organ")


# ---------------------------------------------------------------- paths (also used by discovery)

def root_paths(root: str, sample: str, wsis: Optional[list[str]] = None) -> dict[str, str]:
    """The roles of sample ``sample`` under a HEST-1k root (``wsis`` = the names of ``wsis/`` if listed)."""
    names = wsis if wsis is not None else storage.list_dir(storage.join(root, "wsis"))
    image = next((n for ext in WSI_EXTENSIONS for n in names if n == sample + ext), None)
    paths = {"root": root, "h5ad": storage.join(root, "st", sample + anndata.SUFFIX),
             "metadata": storage.join(root, "metadata", sample + ".json")}
    return {**paths, "image": storage.join(root, "wsis", image)} if image else paths


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """A HEST-1k root (``st/`` and ``wsis/``: one slide per ``st/*.h5ad``) or one saved sample folder."""
    if SAMPLE_FILES["h5ad"] in names and SAMPLE_FILES["image"] in names:
        paths = {"root": folder, **{role: storage.join(folder, name) for role, name in SAMPLE_FILES.items()}}
        return [SlideRef(storage.basename(folder), "hest", "Visium", paths)]
    if "st" not in names or "wsis" not in names:
        return None
    samples = sorted(n[: -len(anndata.SUFFIX)] for n in storage.list_dir(storage.join(folder, "st"))
                     if n.endswith(anndata.SUFFIX) and not n.startswith("."))
    if not samples:
        return None
    wsis = storage.list_dir(storage.join(folder, "wsis"))
    return [SlideRef(sample, "hest", "Visium", root_paths(folder, sample, wsis)) for sample in samples]


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """A manifest entry: a sample folder's files, or sample ``slide_id`` of the root ``path``.

    Without a ``technology`` column the entry is ``Visium`` until the metadata's ``st_technology`` is read.
    """
    paths = dict(ref.paths)
    root = paths.get("root")
    if root and not paths.get("h5ad"):
        names = cache.setdefault(("hest", root), storage.list_dir(root) if storage.is_dir(root) else [])
        if SAMPLE_FILES["h5ad"] in names:
            found = {role: storage.join(root, name) for role, name in SAMPLE_FILES.items() if name in names}
        else:
            wsis = cache.setdefault(("hest-wsis", root), storage.list_dir(storage.join(root, "wsis"))
                                    if storage.is_dir(storage.join(root, "wsis")) else [])
            found = root_paths(root, ref.slide_id, wsis)
        paths = {**found, **paths}
    return dataclasses.replace(ref, paths=paths, technology=ref.technology or "Visium")  # metadata decides on read


# ---------------------------------------------------------------- reading

def read_metadata(ref: SlideRef) -> tuple[dict[str, Any], list[Remark]]:
    """The sample's metadata JSON, or {} with a ``meta_missing`` remark."""
    path = ref.paths.get("metadata")
    if not path or not storage.exists(path):
        return {}, [("meta_missing", f"no HEST metadata for slide {ref.slide_id} ({path or 'no path'}); scale "
                                     "from the .h5ad's scalefactors")]
    return guarded(path, "HEST metadata file", lambda: read_json(path), "meta_unreadable"), []


def positive(meta: dict[str, Any], key: str, path: str) -> Optional[float]:
    """A positive number of the metadata, None when absent; anything else is ``implausible_geometry``."""
    value = meta.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SlideError("coords_unreadable", f"'{key}' in {path} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise SlideError("implausible_geometry", f"'{key}' in {path} is {number:g}: it must be a positive number")
    return number


def technology(meta: dict[str, Any], ref: SlideRef) -> str:
    """Stlake's technology for the sample's ``st_technology``; Xenium is ``unsupported_technology``."""
    given = str(meta.get("st_technology") or "").strip()
    if not given:
        return ref.technology
    if given.lower() in CELL_LEVEL:
        raise SlideError("unsupported_technology", f"slide {ref.slide_id} is a {given} sample (cell-level "
                                                   "transcripts, no capture spots); stlake ingests spot and bin "
                                                   "technologies: Visium, Visium HD, Spatial Transcriptomics")
    if given.lower() not in TECHNOLOGIES:
        raise SlideError("unsupported_technology", f"slide {ref.slide_id}: st_technology {given[:40]!r} is not "
                                                   "one of Visium, Visium HD, Spatial Transcriptomics")
    return TECHNOLOGIES[given.lower()]


def with_metadata(ref: SlideRef, meta: dict[str, Any]) -> SlideRef:
    """``ref`` with the metadata's technology, species, organ (manifest values win) and other scalar keys."""
    extra = {k: str(v) for k, v in meta.items()
             if k not in COLUMN_KEYS and isinstance(v, (str, int, float, bool)) and k not in ref.meta}
    return dataclasses.replace(ref, technology=technology(meta, ref),
                               species=ref.species or (str(meta["species"]) if meta.get("species") else None),
                               tissue=ref.tissue or (str(meta["organ"]) if meta.get("organ") else None),
                               meta={**extra, **ref.meta})


def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one HEST sample: metadata, spots of its ``.h5ad``, the WSI (level 0 pixels) and the count matrix."""
    options = options or ReaderOptions()
    meta, remarks = read_metadata(ref)
    ref = with_metadata(ref, meta)
    path = ref.paths.get("h5ad") or ""
    spatial = anndata.read_spatial(path, ref.meta.get("library_id") or None)
    spots = spatial.spots.take(spatial.spots.in_tissue) if options.in_tissue_only else spatial.spots
    where = ref.paths.get("metadata", "metadata")
    mpp = next((v for v in (positive(meta, key, where) for key in PIXEL_SIZE_KEYS) if v is not None), None)
    diameter_um = positive(meta, "spot_diameter", where)
    fullres_diameter = optional_factor(spatial.scalefactors, "spot_diameter_fullres", f"{path} scalefactors")
    if mpp is None and fullres_diameter and diameter_um:
        mpp = diameter_um / fullres_diameter
    diameter = diameter_um / mpp if diameter_um and mpp else fullres_diameter
    if diameter is None:
        raise SlideError("unknown_scale", f"slide {ref.slide_id}: neither a spot diameter with a pixel size in "
                                          f"{where} nor spot_diameter_fullres in {path}")
    wsi = options.image_override or find_existing([ref.paths.get("image")])
    if wsi:
        image, scale, source = image_or_missing(wsi, "whole-slide image"), 1.0, "fullres"
    else:
        image, scale, source, embedded = anndata.embedded_image(spatial, ref.slide_id)
        remarks += embedded
    spots, label_sets = anndata.with_labels(ref, spatial, anndata.scaled(spots, scale), remarks,
                                            options.in_tissue_only)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=diameter * scale, label_sets=label_sets,
        expression=anndata.count_source(path), microns_per_pixel=mpp / scale if mpp else None, coord_scale=scale,
        image_source=source, warnings=remarks)


LAYOUT = Layout("hest", ("Visium", "VisiumHD", "ST"), ROLES,
                "HEST-1k root (st/, wsis/, metadata/) or a saved HEST sample", identify, complete, read)
