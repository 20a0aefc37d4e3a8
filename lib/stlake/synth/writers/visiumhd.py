"""Space Ranger VisiumHD writer: ``visiumhd/visiumhd_1/``.

``binned_outputs/square_002um``, ``square_008um`` and ``square_016um``, the three levels Space Ranger 3
writes, each with ``spatial/tissue_positions.parquet``, scale factors, hires/lowres PNGs and
``filtered_feature_bc_matrix.h5``; the full-resolution ``image.tif`` sits at the slide root. The 8 µm
counts are drawn first; each 8 µm count is split at random among its 4 x 4 2-µm bins (which inherit its
tissue flag), and 16 µm bins are sums of 2 x 2 8-µm bins, so every level's counts are exact sums of the
2 µm level's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from stlake.synth.expression import choose_genes, sample_counts
from stlake.synth.formats import ensure_dir, write_10x_h5, write_json
from stlake.synth.image import Markers, Renderer, Scene, render
from stlake.synth.imagefiles import encode_image, write_tiff
from stlake.synth.markers import MARKER_SIDE
from stlake.synth.specs import SLIDE_META, Sizes
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.common import DatasetJob, SlideInfo, fresh_dir, hd_barcode, hd_codes, image_seed, slide_rng

LAYOUT = "visiumhd"
SLIDE_ID = "visiumhd_1"
BIN_UM = 8
SUB = 4  # 2 µm bins per side of an 8 µm bin


@dataclass(frozen=True)
class Bins:
    """One bin size's square grid: barcodes, grid and full-resolution pixel positions, tissue, counts."""

    bin_um: int
    barcodes: np.ndarray
    row: np.ndarray
    col: np.ndarray
    px: np.ndarray
    py: np.ndarray
    in_tissue: np.ndarray
    counts: sp.csr_matrix


@dataclass(frozen=True)
class Chip:
    """The slide's image geometry, scene and 8 µm bins with their genes."""

    mpp: float
    width: int
    height: int
    n_side: int  # 8 µm bins per side (even)
    margin: tuple[int, int]  # (x, y) px of glass around the bins
    bin_px: int
    scene: Scene
    bins: Bins
    domain: np.ndarray
    gene_ids: list[str]
    gene_names: list[str]

    @property
    def hires_scalef(self) -> float:
        """Scale of ``tissue_hires_image.png`` (its longer side at most 2,000 px)."""
        return min(0.5, 2000.0 / max(self.width, self.height))


def write(job: DatasetJob) -> list[SlideInfo]:
    """``visiumhd_1``, its folder rewritten."""
    root = fresh_dir(os.path.join(job.out_dir, LAYOUT, SLIDE_ID))
    chip = bins_8um(job)
    bins16, parent = bins_16um(chip)
    bins2, parent2 = bins_2um(chip, job.seed)
    seed = image_seed(job.seed, SLIDE_ID)
    pngs = _hires_lowres_pngs(chip, job.sizes.lowres_side, seed)
    for bins in (bins2, chip.bins, bins16):
        _write_bin_folder(root, chip, bins, job.sizes.lowres_side, pngs)
    image_path = os.path.join(root, "image.tif")
    b8 = chip.bins
    code = hd_codes(b8.row, b8.col)
    marked = code >= 0
    write_tiff(image_path, Renderer(chip.scene, chip.width, chip.height, chip.mpp, seed=seed),
               Markers(b8.px[marked], b8.py[marked], code[marked]), job.sizes.tile)
    truth = Truth(
        slide_id=SLIDE_ID, layout=LAYOUT, technology="VisiumHD", spot_id=b8.barcodes, x=b8.px, y=b8.py, code=code,
        gene_names=chip.gene_names, counts=b8.counts, labels=None, domain=chip.domain, image_path=image_path,
        in_tissue=b8.in_tissue, spot_diameter_px=float(chip.bin_px), microns_per_pixel=chip.mpp,
        image_width=chip.width, image_height=chip.height, gene_ids=chip.gene_ids, gene_symbols=chip.gene_names,
        extra={"array_row": b8.row, "array_col": b8.col, "bin016_spot_id": bins16.barcodes, "bin016_x": bins16.px,
               "bin016_y": bins16.py, "bin016_in_tissue": bins16.in_tissue, "bin016_parent": parent,
               **_bin002_truth(bins2, parent2)})
    save_truth(job.out_dir, truth)
    species, tissue = SLIDE_META[SLIDE_ID]
    return [SlideInfo(SLIDE_ID, LAYOUT, "VisiumHD", root, species, tissue, int(b8.in_tissue.sum()), len(b8.row),
                      image_path, truth)]


def bin_pixels(sizes: Sizes) -> int:
    """Side of an 8 µm bin in full-resolution pixels (even, and large enough for a marker)."""
    mpp = sizes.hd_mpp
    bin_px = int(round(BIN_UM / mpp))
    if abs(bin_px * mpp - BIN_UM) > 1e-9 or bin_px % 2 or bin_px < MARKER_SIDE:
        raise ValueError(f"hd_mpp {mpp} must give an even 8 µm bin of at least {MARKER_SIDE} px")
    return bin_px


def bins_8um(job: DatasetJob) -> Chip:
    """The 8 µm bins on their scene, with counts."""
    sizes, seed = job.sizes, job.seed
    rng = slide_rng(seed, SLIDE_ID, "layout")
    n_side = sizes.hd_bins + (sizes.hd_bins % 2)
    mpp, bin_px = sizes.hd_mpp, bin_pixels(sizes)
    mx, my = sizes.hd_margin_px, sizes.hd_margin_px + 48
    width, height = 2 * mx + n_side * bin_px, 2 * my + n_side * bin_px
    row, col = np.divmod(np.arange(n_side * n_side), n_side)
    px = mx + col * bin_px + bin_px // 2
    py = my + row * bin_px + bin_px // 2
    cx_um, cy_um = (px + 0.5) * mpp, (py + 0.5) * mpp
    scene = Scene.build(slide_rng(seed, SLIDE_ID, "scene"), width * mpp, height * mpp,
                        (mx * mpp, my * mpp, (width - mx) * mpp, (height - my) * mpp), 0.65)
    in_tissue = scene.tissue_um_at(cx_um, cy_um) > 0
    domain = scene.domain_at(cx_um, cy_um)
    fraction = scene.tissue_fraction(cx_um, cy_um, 4.0)
    genes = choose_genes(job.universe, sizes.hd_genes, rng)
    counts = sample_counts(slide_rng(seed, SLIDE_ID, "counts"), job.universe, genes, domain, fraction, in_tissue,
                           sizes.hd_density)
    bins = Bins(BIN_UM, hd_barcode(BIN_UM, row, col), row, col, px, py, in_tissue, counts)
    return Chip(mpp, width, height, n_side, (mx, my), bin_px, scene, bins, domain, [job.universe.ids[g] for g in genes],
                [job.universe.symbols[g] for g in genes])


def bins_16um(chip: Chip) -> tuple[Bins, np.ndarray]:
    """The 16 µm bins (sums of 2 x 2 8-µm bins) and the 16 µm parent of each 8 µm bin."""
    b8, bin_px = chip.bins, chip.bin_px
    mx, my = chip.margin
    half = chip.n_side // 2
    row16, col16 = np.divmod(np.arange(half * half), half)
    parent = (b8.row // 2) * half + (b8.col // 2)
    aggregate = sp.csr_matrix((np.ones(len(parent), np.int64), (parent, np.arange(len(parent)))),
                              shape=(half * half, len(parent)))
    counts16 = (aggregate @ b8.counts).tocsr()
    counts16.sort_indices()
    in_tissue16 = np.asarray(aggregate @ b8.in_tissue.astype(np.int64)).ravel() > 0
    px16, py16 = mx + col16 * 2 * bin_px + bin_px, my + row16 * 2 * bin_px + bin_px
    bins = Bins(2 * BIN_UM, hd_barcode(2 * BIN_UM, row16, col16), row16, col16, px16, py16, in_tissue16, counts16)
    return bins, parent


def _split_counts(chip: Chip, rng: np.random.Generator, piece: int = 1 << 20) -> sp.csr_matrix:
    """The 8 µm counts split at random (multinomially) among each bin's 4 x 4 2-µm bins."""
    b8, side = chip.bins, chip.n_side * SUB
    coo = b8.counts.tocoo()
    rows, cols, values = [], [], []
    for lo in range(0, coo.nnz, piece):
        split = rng.multinomial(coo.data[lo:lo + piece].astype(np.int64), np.full(SUB * SUB, 1.0 / (SUB * SUB)))
        entry, child = np.nonzero(split)
        parent = coo.row[lo:lo + piece][entry]
        rows.append((b8.row[parent] * SUB + child // SUB) * side + b8.col[parent] * SUB + child % SUB)
        cols.append(coo.col[lo:lo + piece][entry])
        values.append(split[entry, child])
    counts = sp.csr_matrix((np.concatenate(values or [np.zeros(0, np.int64)]),
                            (np.concatenate(rows or [np.zeros(0, np.int64)]),
                             np.concatenate(cols or [np.zeros(0, np.int64)]))), shape=(side * side, b8.counts.shape[1]))
    counts.sort_indices()
    return counts


def bins_2um(chip: Chip, seed: int) -> tuple[Bins, np.ndarray]:
    """The 2 µm bins (4 x 4 per 8 µm bin, whose counts are their sum) and the 8 µm parent of each."""
    b8, bin_px = chip.bins, chip.bin_px
    if bin_px % (2 * SUB):
        raise ValueError(f"an 8 µm bin of {bin_px} px cannot hold {SUB} x {SUB} 2 µm bins of even size")
    side, sub_px = chip.n_side * SUB, bin_px // SUB
    mx, my = chip.margin
    row, col = np.divmod(np.arange(side * side), side)
    parent = (row // SUB) * chip.n_side + col // SUB
    counts = _split_counts(chip, slide_rng(seed, SLIDE_ID, "counts002"))
    px, py = mx + col * sub_px + sub_px // 2, my + row * sub_px + sub_px // 2
    return Bins(BIN_UM // SUB, hd_barcode(BIN_UM // SUB, row, col), row, col, px, py, b8.in_tissue[parent],
                counts), parent


def _bin002_truth(bins: Bins, parent: np.ndarray) -> dict[str, np.ndarray]:
    """Truth extras of the 2 µm level: ids, centres, tissue, 8 µm parent and the counts (CSR arrays)."""
    return {"bin002_spot_id": bins.barcodes, "bin002_x": bins.px, "bin002_y": bins.py,
            "bin002_in_tissue": bins.in_tissue, "bin002_parent": parent, "bin002_indptr": bins.counts.indptr,
            "bin002_indices": bins.counts.indices, "bin002_data": bins.counts.data}


def _hires_lowres_pngs(chip: Chip, lowres_side: int, seed: int) -> dict[str, bytes]:
    """``tissue_hires_image.png`` and ``tissue_lowres_image.png`` bytes (shared by both bin folders)."""
    lowres_scalef = lowres_side / max(chip.width, chip.height)
    pngs = {}
    for name, scalef in (("tissue_hires_image.png", chip.hires_scalef), ("tissue_lowres_image.png", lowres_scalef)):
        renderer = Renderer(chip.scene, int(round(chip.width * scalef)), int(round(chip.height * scalef)),
                            chip.mpp / scalef, seed=seed)
        pngs[name] = encode_image(render(renderer), "png")
    return pngs


def _write_bin_folder(root: str, chip: Chip, bins: Bins, lowres_side: int, pngs: dict[str, bytes]) -> None:
    """``binned_outputs/square_{bin}um``: positions parquet, scale factors, PNGs, in-tissue HDF5 matrix."""
    folder = os.path.join(root, "binned_outputs", f"square_{bins.bin_um:03d}um")
    spatial = ensure_dir(os.path.join(folder, "spatial"))
    table = pa.table({
        "barcode": pa.array(list(bins.barcodes), pa.string()), "in_tissue": pa.array(bins.in_tissue.astype(np.int32)),
        "array_row": pa.array(bins.row.astype(np.int32)), "array_col": pa.array(bins.col.astype(np.int32)),
        "pxl_row_in_fullres": pa.array(bins.py.astype(np.float64)),
        "pxl_col_in_fullres": pa.array(bins.px.astype(np.float64))})
    pq.write_table(table, os.path.join(spatial, "tissue_positions.parquet"))
    mpp, hires_scalef = chip.mpp, chip.hires_scalef
    write_json(os.path.join(spatial, "scalefactors_json.json"), {
        "spot_diameter_fullres": bins.bin_um / mpp, "bin_size_um": float(bins.bin_um), "microns_per_pixel": mpp,
        "tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_side / max(chip.width, chip.height),
        "fiducial_diameter_fullres": 60.0 / mpp, "regist_target_img_scalef": hires_scalef})
    for name, data in pngs.items():
        with open(os.path.join(spatial, name), "wb") as handle:
            handle.write(data)
    write_10x_h5(os.path.join(folder, "filtered_feature_bc_matrix.h5"), bins.counts[np.flatnonzero(bins.in_tissue)],
                 list(bins.barcodes[bins.in_tissue]), chip.gene_ids, chip.gene_names)
