"""AnnData ``.h5ad`` files as scanpy / squidpy write them (layout ``anndata``); also read by the HEST reader.

A slide is one ``.h5ad`` file (scan: every ``*.h5ad`` of a folder, id = file stem; manifest: ``path`` or
role ``h5ad`` = the file). What is read, without loading the matrix or any image:

* spots: the ``obs`` index (spot ids), ``obsm['spatial']`` (x = column, y = row in full-resolution
  pixels, as ``sc.read_visium`` stores them), ``obs`` columns ``in_tissue``, ``array_row``, ``array_col``
  when present;
* scale: ``uns['spatial'][library]['scalefactors']`` (``spot_diameter_fullres``, ``tissue_hires_scalef``,
  ``tissue_lowres_scalef``, any ``tissue_{image}_scalef``); the library is the only one, or the
  manifest's ``library_id`` column;
* image: the manifest's ``image`` role (or, when scanning, ``{stem}.tif/.tiff/.btf/.jpg`` next to the
  file) is the full-resolution image; else ``uns['spatial'][library]['images']['hires']`` (then
  ``lowres``, then any other) is tiled from inside the file with coordinates scaled by its factor
  (warning ``hires_image``);
* labels: the ``obs`` columns the manifest's ``annotation_columns`` names, and ``annotation`` files
  (:mod:`stlake.ingestion.readers.labels`);
* counts (:mod:`stlake.ingestion.matrices.h5ad`): ``layers['counts']`` when present, else ``X``, else
  ``raw.X``, the first of them whose leading values are integers. A matrix that holds non-integer
  values (normalised, log-transformed) is refused as ``normalised_counts``: the lake stores raw counts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from stlake.ingestion.images.hdf5 import dataset_uri
from stlake.ingestion.matrices.h5ad import encoding, open_h5
from stlake.ingestion.readers import labels as anno
from stlake.ingestion.readers.common import (
    FULLRES_EXTENSIONS,
    ReaderOptions,
    as_float,
    as_ids,
    check_unique,
    image_or_missing,
    make_spots,
)
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.readers.spaceranger import optional_factor
from stlake.ingestion.records import ExpressionSource, LabelSet, Remark, SlideError, SlideRecord, SlideRef, Spots
from stlake.lake import storage

SUFFIX = ".h5ad"
ROLES = ("h5ad", "image", anno.ANNOTATION_ROLE)
#: Count matrices in the order they are tried, each with the frame naming its genes.
COUNT_MATRICES = (("layers/counts", "var"), ("X", "var"), ("raw/X", "raw/var"))
#: Stored values of a matrix checked for integrality when choosing it.
SAMPLE_VALUES = 1 << 16
#: Images of ``uns['spatial'][library]['images']`` in preference order (others follow, by name).
IMAGE_KEYS = ("hires", "lowres")
#: Spot diameter in µm by technology (µm per pixel = this / ``spot_diameter_fullres``).
SPOT_DIAMETER_UM = {"Visium": 55.0, "ST": 100.0}


@dataclass
class Spatial:
    """What an ``.h5ad`` file says about its spots and images (nothing big read)."""

    path: str
    spots: Spots
    library: Optional[str]
    scalefactors: dict[str, Any]
    images: dict[str, str]  # image key -> HDF5 dataset path
    obs: pd.DataFrame


# ---------------------------------------------------------------- paths (also used by discovery)

def image_beside(file: str, names: list[str]) -> Optional[str]:
    """A full-resolution image named like the ``.h5ad`` file (``{stem}.tif`` ...) among ``names`` of its folder."""
    stem = storage.basename(file)[: -len(SUFFIX)]
    for extension in FULLRES_EXTENSIONS:
        matches = [n for n in names if n.lower() == (stem + extension).lower()]
        if matches:
            return storage.join(storage.parent(file), matches[0])
    return None


def identify(folder: str, names: list[str]) -> Optional[list[SlideRef]]:
    """Every ``*.h5ad`` file of the folder is a slide (id = file stem)."""
    files = sorted(n for n in names if n.lower().endswith(SUFFIX) and not n.startswith("."))
    refs = []
    for name in files:
        path = storage.join(folder, name)
        image = image_beside(path, names)
        refs.append(SlideRef(name[: -len(SUFFIX)], "anndata", "Visium",
                             {"root": path, "h5ad": path, **({"image": image} if image else {})}))
    return refs or None


def complete(ref: SlideRef, cache: dict) -> SlideRef:
    """``h5ad`` = ``root`` when not given; an image named like the file is found next to it; Visium by default."""
    paths = dict(ref.paths)
    file = paths.get("h5ad") or paths.get("root")
    if file and file.lower().endswith(SUFFIX):
        paths["h5ad"] = file
        if "image" not in paths:
            folder = storage.parent(file)
            names = cache.setdefault(("anndata", folder), storage.list_dir(folder) if storage.is_dir(folder) else [])
            image = image_beside(file, names)
            if image:
                paths["image"] = image
    return dataclasses.replace(ref, paths=paths, technology=ref.technology or "Visium")


# ---------------------------------------------------------------- reading the file's small parts

@contextmanager
def opened(path: str) -> Iterator[Any]:
    """The ``.h5ad`` file open with h5py; a missing or non-HDF5 file is ``coords_unreadable``."""
    if not storage.exists(path):
        raise SlideError("coords_unreadable", f"AnnData file not found: {path}")
    try:
        context = open_h5(path)
        handle = context.__enter__()
    except Exception as error:
        raise SlideError("coords_unreadable", f"{path} is not a readable HDF5 (.h5ad) file "
                                              f"({type(error).__name__})") from None
    try:
        yield handle
    finally:
        context.__exit__(None, None, None)


def read_elem(node: Any) -> Any:
    """An AnnData element (dataframe, dict, array) as anndata reads it."""
    from anndata.io import read_elem as anndata_read_elem

    return anndata_read_elem(node)


def choose_library(handle: Any, path: str, wanted: Optional[str]) -> Optional[str]:
    """The library of ``uns['spatial']``: the only one, or ``wanted`` (manifest ``library_id``)."""
    if "uns" not in handle or "spatial" not in handle["uns"]:
        return None
    libraries = sorted(handle["uns/spatial"].keys())
    if wanted:
        if wanted not in libraries:
            raise SlideError("coords_unreadable", f"{path}: uns['spatial'] has no library {wanted!r} "
                                                  f"(has {', '.join(libraries) or 'none'})")
        return wanted
    if len(libraries) > 1:
        raise SlideError("coords_unreadable", f"{path}: uns['spatial'] holds {len(libraries)} libraries "
                                              f"({', '.join(libraries[:5])}); name one in the manifest's "
                                              "library_id column")
    return libraries[0] if libraries else None


def obs_spots(obs: pd.DataFrame, coords: np.ndarray, path: str) -> Spots:
    """Spots from the ``obs`` frame and ``obsm['spatial']`` (full-resolution pixels)."""
    ids = as_ids(obs.index)
    check_unique(ids, f"{path} (obs index)")

    def column(name: str) -> Optional[np.ndarray]:
        return as_float(obs[name], path, f"obs/{name}") if name in obs.columns else None

    tissue, row, col = column("in_tissue"), column("array_row"), column("array_col")
    return make_spots(ids, as_float(coords[:, 0], path, "obsm/spatial[:, 0]"),
                      as_float(coords[:, 1], path, "obsm/spatial[:, 1]"),
                      in_tissue=None if tissue is None else tissue != 0,
                      array_row=None if row is None else row.astype(np.int32),
                      array_col=None if col is None else col.astype(np.int32))


def read_spatial(path: str, library: Optional[str] = None) -> Spatial:
    """Spots, library, scale factors and image datasets of an ``.h5ad`` file."""
    with opened(path) as handle:
        if "obs" not in handle or "obsm" not in handle or "spatial" not in handle["obsm"]:
            raise SlideError("coords_unreadable", f"{path} has no obsm['spatial'] (spot coordinates)")
        obs = read_elem(handle["obs"])
        coords = np.asarray(read_elem(handle["obsm/spatial"]))
        if coords.ndim != 2 or coords.shape[1] < 2 or len(coords) != len(obs):
            raise SlideError("coords_unreadable", f"{path}: obsm['spatial'] has shape {coords.shape}, expected "
                                                  f"({len(obs)}, 2)")
        lib = choose_library(handle, path, library)
        factors: dict[str, Any] = {}
        images: dict[str, str] = {}
        if lib is not None:
            base = f"uns/spatial/{lib}"
            if "scalefactors" in handle[base]:
                factors = {k: _scalar(v) for k, v in read_elem(handle[f"{base}/scalefactors"]).items()}
            if "images" in handle[base]:
                images = {key: f"{base}/images/{key}" for key in handle[f"{base}/images"].keys()}
    return Spatial(path, obs_spots(obs, coords, path), lib, factors, images, obs)


def _scalar(value: Any) -> Any:
    """A scale factor as a Python number (numpy scalars and 0-d arrays unwrapped)."""
    array = np.asarray(value)
    return array.item() if array.ndim == 0 and array.dtype.kind in "iuf" else value


def _sample_integral(node: Any) -> bool:
    """The first ``SAMPLE_VALUES`` stored values of a matrix are integers."""
    values = node["data"] if encoding(node) in ("csr_matrix", "csc_matrix") else node
    if values.dtype.kind in "iu":
        return True
    if values.dtype.kind != "f":
        return False
    if len(values.shape) == 1:
        sample = np.asarray(values[:SAMPLE_VALUES])
    else:
        rows = max(1, SAMPLE_VALUES // max(1, values.shape[1]))
        sample = np.asarray(values[:rows])
    sample = sample[np.isfinite(sample)]
    return bool(np.all(sample == np.floor(sample)))


def count_source(path: str) -> ExpressionSource:
    """The first of ``COUNT_MATRICES`` present whose values are integers; ``normalised_counts`` otherwise."""
    with opened(path) as handle:
        present = [(matrix, var) for matrix, var in COUNT_MATRICES if matrix in handle]
        if not present:
            raise SlideError("expression_missing", f"{path} has no X, layers['counts'] or raw.X")
        for matrix, var in present:
            if _sample_integral(handle[matrix]):
                return ExpressionSource("h5ad", path, {"matrix": matrix, "var": var})
            if matrix == "layers/counts":
                break
    tried = ", ".join(matrix for matrix, _ in present)
    raise SlideError("normalised_counts", f"{path}: {tried} hold non-integer values (a normalised or "
                                          "log-transformed matrix); stlake stores raw counts: keep them in "
                                          "layers['counts'], raw.X or X")


# ---------------------------------------------------------------- scale and image

def spot_diameter_um(technology: str) -> Optional[float]:
    """The physical spot diameter of ``technology`` (None when spots are not round spots of one size)."""
    return SPOT_DIAMETER_UM.get(technology)


def image_order(images: dict[str, str]) -> list[str]:
    """Image keys, ``hires`` and ``lowres`` first."""
    return [k for k in IMAGE_KEYS if k in images] + sorted(k for k in images if k not in IMAGE_KEYS)


def embedded_image(spatial: Spatial, slide_id: str) -> tuple[str, float, str, list[Remark]]:
    """The best image stored in the file, its scale factor, source name and the ``hires_image`` remark."""
    for key in image_order(spatial.images):
        scale = optional_factor(spatial.scalefactors, f"tissue_{key}_scalef", f"{spatial.path} scalefactors")
        if scale is None:
            continue
        uri = dataset_uri(spatial.path, spatial.images[key])
        remark = ("hires_image", f"no full-resolution image for slide {slide_id}; tiling uns['spatial']"
                                 f"['{spatial.library}']['images']['{key}'] of {spatial.path} with coordinates and "
                                 f"spot diameter scaled by tissue_{key}_scalef={scale:g}")
        return uri, scale, "hires" if key == "hires" else key, [remark]
    raise SlideError("image_missing", f"no full-resolution image given for slide {slide_id} and no image with a "
                                      f"scale factor in uns['spatial'] of {spatial.path}")


def with_labels(ref: SlideRef, spatial: Spatial, spots: Spots, remarks: list[Remark], in_tissue_only: bool
                ) -> tuple[Spots, list[LabelSet]]:
    """``spots`` with the slide's annotation files and the ``obs`` columns its manifest names as label sets."""
    obs = spatial.obs[np.asarray(spatial.spots.in_tissue, bool)] if in_tissue_only else spatial.obs
    return anno.read_files(ref, spots, remarks, obs=obs, obs_path=spatial.path)


def scaled(spots: Spots, scale: float) -> Spots:
    """``spots`` with x/y multiplied by ``scale``."""
    return spots if scale == 1.0 else dataclasses.replace(spots, x=spots.x * scale, y=spots.y * scale)


def read(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one ``.h5ad`` slide: spots, scale factors, image choice and count matrix choice."""
    options = options or ReaderOptions()
    path = ref.paths.get("h5ad") or ref.paths.get("root") or ""
    spatial = read_spatial(path, ref.meta.get("library_id") or None)
    spots = spatial.spots.take(spatial.spots.in_tissue) if options.in_tissue_only else spatial.spots
    diameter = optional_factor(spatial.scalefactors, "spot_diameter_fullres", f"{path} scalefactors")
    if diameter is None:
        raise SlideError("coords_unreadable", f"{path}: no spot_diameter_fullres in uns['spatial']"
                                              f"[{spatial.library!r}]['scalefactors']")
    fullres = options.image_override or ref.paths.get("image")
    remarks: list[Remark]
    if fullres:
        image, scale, source, remarks = image_or_missing(fullres, "full-resolution image"), 1.0, "fullres", []
    else:
        image, scale, source, remarks = embedded_image(spatial, ref.slide_id)
    physical = spot_diameter_um(ref.technology)
    spots, label_sets = with_labels(ref, spatial, scaled(spots, scale), remarks, options.in_tissue_only)
    return SlideRecord(
        ref=ref, image_uri=image, spots=spots, spot_diameter_px=diameter * scale, label_sets=label_sets,
        expression=count_source(path), microns_per_pixel=physical / diameter / scale if physical else None,
        coord_scale=scale, image_source=source, warnings=remarks)


LAYOUT = Layout("anndata", ("Visium", "ST", "VisiumHD"), ROLES,
                "AnnData .h5ad as scanpy/squidpy write it (obsm['spatial'], uns['spatial'], counts)",
                identify, complete, read)
