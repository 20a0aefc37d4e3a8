"""AnnData writer: ``anndata/{anndata_1.h5ad, anndata_2.h5ad + anndata_2.tif}``, written with anndata itself.

Each file is what ``sc.read_visium`` makes of a Space Ranger slide and ``AnnData.write_h5ad`` stores:
the filtered (in-tissue) barcodes as ``obs`` (``in_tissue``, ``array_row``, ``array_col``), genes as
``var`` (symbol index, ``gene_ids``, ``feature_types``, ``genome``), ``obsm['spatial']`` = full-resolution
(column, row) pixels, and ``uns['spatial'][slide_id]`` with ``images`` (``hires`` and ``lowres`` as
``float32`` in [0, 1], as matplotlib reads a PNG) and ``scalefactors``.

* ``anndata_1``: ``X`` = raw counts (``float32`` CSR, as scanpy reads them); no full-resolution image,
  so the reader tiles the ``hires`` array with scaled coordinates.
* ``anndata_2``: ``X`` = ``normalize_total`` + ``log1p`` values, raw counts in ``layers['counts']``
  (``int32`` CSC), and a full-resolution ``anndata_2.tif`` next to the file.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stlake.synth import labels
from stlake.synth.formats import ensure_dir
from stlake.synth.image import Markers, Renderer, render
from stlake.synth.imagefiles import write_tiff
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.common import DatasetJob, SlideInfo, fresh_dir, image_seed, slide_rng
from stlake.synth.writers.visium import SPOT_DIAMETER_UM, Capture, Expression, capture, expression

LAYOUT = "anndata"
#: slide id -> the Visium capture variant it is drawn like (2: hires-only geometry, 1: full-resolution TIFF).
SLIDES = {"anndata_1": 2, "anndata_2": 1}
SPECIES, TISSUE = "human", "breast"


def write(job: DatasetJob) -> list[SlideInfo]:
    """Both ``.h5ad`` slides (the folder is rewritten)."""
    folder = fresh_dir(os.path.join(job.out_dir, LAYOUT))
    ensure_dir(folder)
    return [write_slide(job, folder, slide_id, variant) for slide_id, variant in SLIDES.items()]


def visium_anndata(cap: Capture, expr: Expression, keep: np.ndarray, counts: Any, library: str,
                   images: dict[str, np.ndarray], scalefactors: dict[str, float]) -> Any:
    """An AnnData of the ``keep`` spots as ``sc.read_visium`` builds it (``counts``: their matrix, as stored)."""
    import anndata

    obs = pd.DataFrame({"in_tissue": expr.in_tissue[keep].astype(np.int64), "array_row": cap.array_row[keep],
                        "array_col": cap.array_col[keep]}, index=pd.Index(cap.barcodes[keep].astype(str)))
    var = pd.DataFrame({"gene_ids": expr.gene_ids, "feature_types": ["Gene Expression"] * len(expr.gene_ids),
                        "genome": ["GRCh38"] * len(expr.gene_ids)}, index=pd.Index(expr.gene_names))
    adata = anndata.AnnData(X=counts, obs=obs, var=var)
    adata.obsm["spatial"] = np.column_stack([cap.px[keep], cap.py[keep]]).astype(np.int64)
    adata.uns["spatial"] = {library: {"images": images, "scalefactors": scalefactors,
                                      "metadata": {"chemistry_description": "Spatial 3' v1 (synthetic)",
                                                   "software_version": "spaceranger-2.1.0 (synthetic)"}}}
    return adata


def scaled_image(cap: Capture, scale: float, seed: int, markers: bool, keep: np.ndarray) -> np.ndarray:
    """The scene at ``scale`` x full resolution as RGB ``uint8`` (markers on the ``keep`` spots if asked)."""
    width, height = int(round(cap.width * scale)), int(round(cap.height * scale))
    code = np.flatnonzero(keep)
    drawn = Markers(np.rint(cap.px[keep] * scale).astype(np.int64), np.rint(cap.py[keep] * scale).astype(np.int64),
                    code) if markers else None
    return render(Renderer(cap.scene, width, height, cap.mpp / scale, seed=seed), drawn)


def normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``normalize_total(target_sum=1e4)`` + ``log1p`` of ``counts`` (what a scanpy workflow leaves in ``X``)."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = sp.diags(1e4 / np.maximum(totals, 1.0))
    out = sp.csr_matrix(scale @ counts.astype(np.float64))
    out.data = np.log1p(out.data)
    return out.astype(np.float32)


def write_slide(job: DatasetJob, folder: str, slide_id: str, variant: int) -> SlideInfo:
    """One ``.h5ad`` (and for variant 1 its full-resolution TIFF) with its truth."""
    rng = slide_rng(job.seed, slide_id, "layout")
    cap = capture(job.sizes, job.seed, slide_id, variant, rng)
    expr = expression(cap, job, rng)
    keep = np.flatnonzero(expr.in_tissue)
    counts = sp.csr_matrix(expr.counts[keep])
    seed = image_seed(job.seed, slide_id)
    hires = scaled_image(cap, cap.hires_scalef, seed, variant == 2, expr.in_tissue)
    lowres = scaled_image(cap, cap.lowres_scalef, seed, False, expr.in_tissue)
    images = {"hires": hires.astype(np.float32) / 255.0, "lowres": lowres.astype(np.float32) / 255.0}
    factors = {"spot_diameter_fullres": SPOT_DIAMETER_UM / cap.mpp, "tissue_hires_scalef": cap.hires_scalef,
               "fiducial_diameter_fullres": 65.0 / cap.mpp * 1.1, "tissue_lowres_scalef": cap.lowres_scalef}
    path = os.path.join(folder, f"{slide_id}.h5ad")
    if variant == 2:
        adata = visium_anndata(cap, expr, keep, counts.astype(np.float32), slide_id, images, factors)
        image_path = f"{path}::/uns/spatial/{slide_id}/images/hires"
        scale = cap.hires_scalef
    else:
        adata = visium_anndata(cap, expr, keep, normalised(counts), slide_id, images, factors)
        adata.layers["counts"] = sp.csc_matrix(counts.astype(np.int32))
        sets = labels.write_obs_labels(adata, expr.domain[keep], slide_rng(job.seed, slide_id, "labels"))
        image_path = os.path.join(folder, f"{slide_id}.tif")
        write_tiff(image_path, Renderer(cap.scene, cap.width, cap.height, cap.mpp, seed=seed),
                   Markers(cap.px[keep], cap.py[keep], keep.astype(np.int64)), job.sizes.tile)
        scale = 1.0
    adata.write_h5ad(path)
    truth = _truth(slide_id, cap, expr, keep, image_path, scale, hires.shape if scale != 1.0 else None)
    if variant != 2:
        truth.labels = labels.normalised(sets[labels.OBS_SET])
        truth.extra.update(labels.truth_extra(sets))
    save_truth(job.out_dir, truth)
    return SlideInfo(slide_id, LAYOUT, "Visium", path, SPECIES, TISSUE, len(keep), len(keep), image_path, truth,
                     annotation_columns=",".join(sets) if variant != 2 else "")


def _truth(slide_id: str, cap: Capture, expr: Expression, keep: np.ndarray, image_path: str, scale: float,
           shape: Any) -> Truth:
    """The in-tissue spots (the file's obs) in the pixels of the image a reader tiles."""
    width, height = (shape[1], shape[0]) if shape is not None else (cap.width, cap.height)
    x = np.rint(cap.px[keep] * scale).astype(np.int64) if scale != 1.0 else cap.px[keep]
    y = np.rint(cap.py[keep] * scale).astype(np.int64) if scale != 1.0 else cap.py[keep]
    return Truth(
        slide_id=slide_id, layout=LAYOUT, technology="Visium", spot_id=cap.barcodes[keep], x=x, y=y,
        code=keep.astype(np.int64), gene_names=expr.gene_names, counts=sp.csr_matrix(expr.counts[keep]),
        labels=None, domain=expr.domain[keep], image_path=image_path, in_tissue=np.ones(len(keep), bool),
        spot_diameter_px=SPOT_DIAMETER_UM / cap.mpp * scale, microns_per_pixel=cap.mpp / scale,
        image_width=int(width), image_height=int(height), gene_ids=expr.gene_ids, gene_symbols=expr.gene_names,
        extra={"array_row": cap.array_row[keep], "array_col": cap.array_col[keep]})

