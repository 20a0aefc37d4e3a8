"""Space Ranger Visium writer: ``visium/{visium_1,visium_2}/``.

``visium_1``: ``spatial/tissue_positions_list.csv`` (no header), ``filtered_feature_bc_matrix.h5``, a
full-resolution ``image.tif`` + hires/lowres PNGs. ``visium_2``: ``spatial/tissue_positions.csv``
(header), a ``filtered_feature_bc_matrix/`` MTX folder, and ``spatial/tissue_hires_image.png`` as its
only image worth tiling. ``visium_1`` also holds two Loupe Browser exports (``Annotation.csv``,
``Graph-Based.csv``: two annotation sets of its in-tissue spots).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stlake.synth import labels
from stlake.synth.expression import choose_genes, sample_counts
from stlake.synth.formats import ensure_dir, write_10x_h5, write_10x_mtx, write_json
from stlake.synth.image import Markers, Renderer, Scene
from stlake.synth.imagefiles import write_image, write_tiff
from stlake.synth.specs import SLIDE_META, Sizes
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.common import (
    HEX_ROW_UM,
    DatasetJob,
    SlideInfo,
    fresh_dir,
    image_seed,
    random_barcodes,
    slide_rng,
)

LAYOUT = "visium"
VARIANTS = (1, 2)
SPOT_DIAMETER_UM = 55.0


@dataclass(frozen=True)
class Capture:
    """A Visium slide's spots on its scene, sorted by barcode as Space Ranger lists them."""

    slide_id: str
    variant: int
    mpp: float  # of the full-resolution image
    width: int
    height: int
    scene: Scene
    hires_scalef: float
    lowres_scalef: float
    barcodes: np.ndarray
    array_row: np.ndarray
    array_col: np.ndarray
    px: np.ndarray  # full-resolution pixel centres
    py: np.ndarray


@dataclass(frozen=True)
class Expression:
    """Tissue, domains and counts of every spot of a capture."""

    in_tissue: np.ndarray
    domain: np.ndarray
    gene_ids: list[str]
    gene_names: list[str]
    counts: sp.csr_matrix


@dataclass(frozen=True)
class TilingImage:
    """The image a reader tiles, and the spots' centres and diameter in its pixels."""

    path: str
    x: np.ndarray
    y: np.ndarray
    mpp: float
    width: int
    height: int
    spot_diameter_px: float


def write(job: DatasetJob) -> list[SlideInfo]:
    """``visium_1`` and ``visium_2``, each folder rewritten."""
    return [write_slide(job, variant) for variant in VARIANTS]


def write_slide(job: DatasetJob, variant: int) -> SlideInfo:
    """One Visium slide (``visium_{variant}``): positions, scale factors, matrix, images and truth."""
    slide_id = f"visium_{variant}"
    root = fresh_dir(os.path.join(job.out_dir, LAYOUT, slide_id))
    spatial = ensure_dir(os.path.join(root, "spatial"))
    rng = slide_rng(job.seed, slide_id, "layout")
    cap = capture(job.sizes, job.seed, slide_id, variant, rng)
    expr = expression(cap, job, rng)
    _write_positions(spatial, cap, expr.in_tissue)
    _write_scalefactors(spatial, cap)
    _write_matrix(root, cap, expr)
    image = _write_images(root, spatial, cap, image_seed(job.seed, slide_id), job.sizes.tile)
    sets = labels.write_loupe_exports(root, cap.barcodes, expr.domain, expr.in_tissue) if variant == 1 else {}
    truth = Truth(
        slide_id=slide_id, layout=LAYOUT, technology="Visium", spot_id=cap.barcodes, x=image.x, y=image.y,
        code=np.arange(len(cap.barcodes), dtype=np.int64), gene_names=expr.gene_names, counts=expr.counts,
        labels=labels.normalised(next(iter(sets.values()))) if sets else None, domain=expr.domain,
        image_path=image.path, in_tissue=expr.in_tissue,
        spot_diameter_px=image.spot_diameter_px, microns_per_pixel=image.mpp, image_width=image.width,
        image_height=image.height, gene_ids=expr.gene_ids, gene_symbols=expr.gene_names,
        extra={"array_row": cap.array_row, "array_col": cap.array_col, "pxl_col_in_fullres": cap.px,
               "pxl_row_in_fullres": cap.py, "tissue_hires_scalef": np.array(cap.hires_scalef),
               **(labels.truth_extra(sets) if sets else {})})
    save_truth(job.out_dir, truth)
    species, tissue = SLIDE_META[slide_id]
    return SlideInfo(slide_id, LAYOUT, "Visium", root, species, tissue, int(expr.in_tissue.sum()), len(cap.barcodes),
                     image.path, truth)


# ---------------------------------------------------------------- spots

def capture(sizes: Sizes, seed: int, slide_id: str, variant: int, rng: np.random.Generator) -> Capture:
    """The hex grid on glass, its scene, pixel centres (jittered by 1 px) and barcodes, drawn from ``rng``."""
    array_row, array_col = _hex_positions(sizes.visium_rows, sizes.visium_cols)
    mx, my = sizes.visium_margin_um
    width_um = (sizes.visium_cols - 1) * 50.0 + 2 * mx
    height_um = (sizes.visium_rows - 1) * HEX_ROW_UM + 2 * my
    x_um, y_um = mx + array_col * 50.0, my + array_row * HEX_ROW_UM
    mpp = sizes.visium_mpp if variant == 1 else sizes.visium2_mpp
    width, height = int(round(width_um / mpp)), int(round(height_um / mpp))
    scene = Scene.build(slide_rng(seed, slide_id, "scene"), width * mpp, height * mpp,
                        (float(x_um.min()), float(y_um.min()), float(x_um.max()), float(y_um.max())), 0.6)
    n = len(array_row)
    px = np.rint(x_um / mpp - 0.5).astype(np.int64) + rng.integers(-1, 2, n)
    py = np.rint(y_um / mpp - 0.5).astype(np.int64) + rng.integers(-1, 2, n)
    if variant == 1:
        hires_scalef = min(1.0, sizes.visium_hires_side / max(width, height))
    else:
        hires_scalef = sizes.visium2_hires_scalef
        px, py = _avoid_half(px, hires_scalef), _avoid_half(py, hires_scalef)
    lowres_scalef = sizes.lowres_side / max(width, height)
    barcodes = random_barcodes(rng, n)
    order = np.argsort(barcodes, kind="stable")  # Space Ranger lists spots by barcode
    return Capture(slide_id, variant, mpp, width, height, scene, hires_scalef, lowres_scalef, barcodes[order],
                   array_row[order], array_col[order], px[order], py[order])


def _hex_positions(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keep = (c % 2) == (r % 2)
    return r[keep].astype(np.int64), c[keep].astype(np.int64)


def _avoid_half(values: np.ndarray, scale: float) -> np.ndarray:
    """Integer ``values`` nudged so that ``values * scale`` is never within 0.1 of a .5 (no rounding ties)."""
    values = values.copy()
    for _ in range(8):
        frac = np.mod(values * scale, 1.0)
        bad = np.abs(frac - 0.5) < 0.1
        if not bad.any():
            break
        values[bad] += 1
    return values


def expression(cap: Capture, job: DatasetJob, rng: np.random.Generator) -> Expression:
    """Counts of every spot (none outside the tissue); ``rng`` draws the slide's genes."""
    cx_um, cy_um = (cap.px + 0.5) * cap.mpp, (cap.py + 0.5) * cap.mpp
    in_tissue = cap.scene.tissue_um_at(cx_um, cy_um) > 0
    domain = cap.scene.domain_at(cx_um, cy_um)
    fraction = cap.scene.tissue_fraction(cx_um, cy_um, SPOT_DIAMETER_UM / 2)
    universe = job.universe
    genes = choose_genes(universe, job.sizes.visium_genes, rng)
    counts = sample_counts(slide_rng(job.seed, cap.slide_id, "counts"), universe, genes, domain, fraction,
                           in_tissue, job.sizes.density)
    return Expression(in_tissue, domain, [universe.ids[g] for g in genes], [universe.symbols[g] for g in genes],
                      counts)


# ---------------------------------------------------------------- files

def _write_positions(spatial: str, cap: Capture, in_tissue: np.ndarray) -> None:
    frame = pd.DataFrame({"barcode": cap.barcodes, "in_tissue": in_tissue.astype(np.int64),
                          "array_row": cap.array_row, "array_col": cap.array_col, "pxl_row_in_fullres": cap.py,
                          "pxl_col_in_fullres": cap.px})
    if cap.variant == 1:
        frame.to_csv(os.path.join(spatial, "tissue_positions_list.csv"), header=False, index=False,
                     lineterminator="\n")
    else:
        frame.to_csv(os.path.join(spatial, "tissue_positions.csv"), header=True, index=False, lineterminator="\n")


def _write_scalefactors(spatial: str, cap: Capture) -> None:
    write_json(os.path.join(spatial, "scalefactors_json.json"), {
        "spot_diameter_fullres": SPOT_DIAMETER_UM / cap.mpp, "tissue_hires_scalef": cap.hires_scalef,
        "fiducial_diameter_fullres": 65.0 / cap.mpp * 1.1, "tissue_lowres_scalef": cap.lowres_scalef})


def _write_matrix(root: str, cap: Capture, expr: Expression) -> None:
    """In-tissue barcodes only, in positions order: HDF5 for ``visium_1``, an MTX folder for ``visium_2``."""
    matrix = expr.counts[np.flatnonzero(expr.in_tissue)]
    barcodes = list(cap.barcodes[expr.in_tissue])
    if cap.variant == 1:
        write_10x_h5(os.path.join(root, "filtered_feature_bc_matrix.h5"), matrix, barcodes, expr.gene_ids,
                     expr.gene_names)
    else:
        write_10x_mtx(os.path.join(root, "filtered_feature_bc_matrix"), matrix, barcodes, expr.gene_ids,
                      expr.gene_names)


def _write_images(root: str, spatial: str, cap: Capture, seed: int, tile: int) -> TilingImage:
    """Hires and lowres PNGs (+ ``image.tif`` for ``visium_1``); returns the image a reader tiles."""
    code = np.arange(len(cap.barcodes), dtype=np.int64)
    hires_w, hires_h = int(round(cap.width * cap.hires_scalef)), int(round(cap.height * cap.hires_scalef))
    hx = np.rint(cap.px * cap.hires_scalef).astype(np.int64)
    hy = np.rint(cap.py * cap.hires_scalef).astype(np.int64)
    hires = Renderer(cap.scene, hires_w, hires_h, cap.mpp / cap.hires_scalef, seed=seed)
    hires_markers = Markers(hx, hy, code) if cap.variant == 2 else None  # visium_1 is tiled from image.tif
    write_image(os.path.join(spatial, "tissue_hires_image.png"), hires, hires_markers, "png")
    lowres = Renderer(cap.scene, int(round(cap.width * cap.lowres_scalef)), int(round(cap.height * cap.lowres_scalef)),
                      cap.mpp / cap.lowres_scalef, seed=seed)
    write_image(os.path.join(spatial, "tissue_lowres_image.png"), lowres, None, "png")
    if cap.variant == 1:
        image_path = os.path.join(root, "image.tif")
        write_tiff(image_path, Renderer(cap.scene, cap.width, cap.height, cap.mpp, seed=seed),
                   Markers(cap.px, cap.py, code), tile)
        return TilingImage(image_path, cap.px, cap.py, cap.mpp, cap.width, cap.height, SPOT_DIAMETER_UM / cap.mpp)
    return TilingImage(os.path.join(spatial, "tissue_hires_image.png"), hx, hy, cap.mpp / cap.hires_scalef,
                       hires_w, hires_h, SPOT_DIAMETER_UM / cap.mpp * cap.hires_scalef)
