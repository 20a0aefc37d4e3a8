"""HEST-1k writer: ``hest/`` as a release root with one Visium sample, ``hest_1``.

``st/hest_1.h5ad`` is what ``HESTData.save`` writes with anndata: the in-tissue spots as ``obs``
(``in_tissue``, ``pxl_col_in_fullres``, ``pxl_row_in_fullres``, ``array_col``, ``array_row``), genes by
symbol, ``X`` = raw counts (``float32`` CSR), ``obsm['spatial']`` = level-0 pixels of the WSI and
``uns['spatial']['ST']`` with a ``uint8`` ``downscaled_fullres`` image and its scale factors.
``wsis/hest_1.tif`` is a pyramidal generic TIFF as HEST's ``tiff_save`` (pyvips) writes it: 256-px
deflate tiles, one page per level (each half the previous one), resolution tags in HEST's unit
(pixels per mm labelled cm). ``metadata/hest_1.json`` holds the keys HEST-1k's metadata has.
``patches/`` and ``thumbnails/`` hold files a reader must ignore.

The scan is 0.25 µm/px, so HEST's 0.5 µm/px patches come from pyramid level 1 exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import scipy.sparse as sp

from stlake.synth.formats import ensure_dir, write_json
from stlake.synth.image import Markers, Renderer, render
from stlake.synth.imagefiles import pyramid_levels, write_pyramid_tiff
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.anndata import visium_anndata
from stlake.synth.writers.common import DatasetJob, SlideInfo, fresh_dir, image_seed, slide_rng
from stlake.synth.writers.visium import SPOT_DIAMETER_UM, capture, expression

LAYOUT = "hest"
SLIDE_ID = "hest_1"
MPP = 0.25
SPECIES, ORGAN = "Homo sapiens", "Breast"
DOWNSCALED_SIDE = 1000  # longer side of uns['spatial']['ST']['images']['downscaled_fullres']


def write(job: DatasetJob) -> list[SlideInfo]:
    """The HEST root with ``hest_1`` (the folder is rewritten)."""
    root = fresh_dir(os.path.join(job.out_dir, LAYOUT))
    sizes = dataclasses.replace(job.sizes, visium_rows=max(8, job.sizes.visium_rows // 4),
                                visium_cols=max(12, job.sizes.visium_cols // 4), visium_mpp=MPP,
                                visium_margin_um=(150.0, 150.0))
    rng = slide_rng(job.seed, SLIDE_ID, "layout")
    cap = capture(sizes, job.seed, SLIDE_ID, 1, rng)
    expr = expression(cap, job, rng)
    keep = np.flatnonzero(expr.in_tissue)
    counts = sp.csr_matrix(expr.counts[keep])
    level0 = render(Renderer(cap.scene, cap.width, cap.height, cap.mpp, seed=image_seed(job.seed, SLIDE_ID)),
                    Markers(cap.px[keep], cap.py[keep], keep.astype(np.int64)))
    wsi = os.path.join(ensure_dir(os.path.join(root, "wsis")), f"{SLIDE_ID}.tif")
    write_pyramid_tiff(wsi, pyramid_levels(level0), MPP, resolution_per_mm=True)
    scale = DOWNSCALED_SIDE / max(cap.width, cap.height)
    downscaled = cv2.resize(level0, (round(cap.width * scale), round(cap.height * scale)), interpolation=cv2.INTER_AREA)
    del level0
    factors = {"tissue_downscaled_fullres_scalef": scale, "spot_diameter_fullres": SPOT_DIAMETER_UM / MPP}
    adata = visium_anndata(cap, expr, keep, counts.astype(np.float32), "ST", {"downscaled_fullres": downscaled},
                           factors)
    adata.var = adata.var.iloc[:, :0]  # HEST keeps symbols only
    adata.obs["pxl_col_in_fullres"] = cap.px[keep].astype(np.float64)
    adata.obs["pxl_row_in_fullres"] = cap.py[keep].astype(np.float64)
    adata.obsm["spatial"] = adata.obsm["spatial"].astype(np.float64)
    adata.write_h5ad(os.path.join(ensure_dir(os.path.join(root, "st")), f"{SLIDE_ID}.h5ad"))
    write_json(os.path.join(ensure_dir(os.path.join(root, "metadata")), f"{SLIDE_ID}.json"),
               metadata(cap.width, cap.height, len(keep), len(expr.gene_names)))
    _write_ignored(root)
    truth = Truth(
        slide_id=SLIDE_ID, layout=LAYOUT, technology="Visium", spot_id=cap.barcodes[keep], x=cap.px[keep],
        y=cap.py[keep], code=keep.astype(np.int64), gene_names=expr.gene_names, counts=counts.astype(np.int64),
        labels=None, domain=expr.domain[keep], image_path=wsi, in_tissue=np.ones(len(keep), bool),
        spot_diameter_px=SPOT_DIAMETER_UM / MPP, microns_per_pixel=MPP, image_width=cap.width,
        image_height=cap.height, gene_ids=expr.gene_ids, gene_symbols=expr.gene_names,
        extra={"array_row": cap.array_row[keep], "array_col": cap.array_col[keep]})
    save_truth(job.out_dir, truth)
    return [SlideInfo(SLIDE_ID, LAYOUT, "Visium", root, "human", "breast", len(keep), len(keep), wsi, truth)]


def metadata(width: int, height: int, spots: int, genes: int) -> dict:
    """A HEST-1k metadata record (the keys of ``HEST_v1_1_0.csv`` / ``metadata/{id}.json``)."""
    return {
        "dataset_title": "Synthetic Visium breast section (stlake)", "id": SLIDE_ID,
        "image_filename": f"{SLIDE_ID}.tif", "organ": ORGAN, "disease_state": "Cancer", "oncotree_code": "IDC",
        "species": SPECIES, "patient": "P1", "st_technology": "Visium", "data_publication_date": "2024-01-01",
        "license": "CC BY 4.0", "study_link": "", "download_page_link1": "", "inter_spot_dist": 100.0,
        "spot_diameter": SPOT_DIAMETER_UM, "spots_under_tissue": spots, "preservation_method": "FFPE",
        "nb_genes": genes, "treatment_comment": "", "pixel_size_um_embedded": MPP, "pixel_size_um_estimated": MPP,
        "magnification": "40x", "fullres_px_width": width, "fullres_px_height": height, "tissue": "Breast",
        "subseries": "", "adata_nb_col": genes,
    }


def _write_ignored(root: str) -> None:
    """``patches/``, ``thumbnails/`` and ``tissue_seg/`` files: present in HEST-1k, not read by stlake."""
    for folder, name, data in (("patches", f"{SLIDE_ID}.h5", b"\x89HDF\r\n\x1a\n"),
                               ("thumbnails", f"{SLIDE_ID}_downscaled_fullres.jpeg", b"\xff\xd8\xff\xd9"),
                               ("tissue_seg", f"{SLIDE_ID}_contours.geojson", json.dumps({}).encode())):
        with open(os.path.join(ensure_dir(os.path.join(root, folder)), name), "wb") as handle:
            handle.write(data)
