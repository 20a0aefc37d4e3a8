"""The four on-disk layouts of the synthetic dataset and :func:`generate`.

``{out_dir}/``
  ``stimage/``   an STimage-1K4M release (one slide per technology, plus broken slides with ``corrupt``)
  ``visium/{visium_1,visium_2}/``   Space Ranger outputs (h5 + full-res TIFF; MTX + hires PNG only)
  ``visiumhd/visiumhd_1/``          Space Ranger HD ``binned_outputs/square_{008,016}um`` + ``image.tif``
  ``st/st_1/``                      legacy ST: counts TSV.gz, spot detector TSV, H&E JPEG
  ``truth/{slide_id}.npz``          ground truth (:mod:`stlake.synth.truth`)
  ``manifest.csv``                  one row per slide (paths relative to ``out_dir``)
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from stlake.synth.expression import GeneUniverse, choose_genes, gene_universe, sample_counts
from stlake.synth.formats import ensure_dir, open_text, write_10x_h5, write_10x_mtx, write_dense, write_json
from stlake.synth.image import DOMAINS, Markers, Renderer, Scene, encode_image, render, write_image, write_tiff
from stlake.synth.markers import MARKER_SIDE
from stlake.synth.truth import Truth, save_truth, truth_path

LAYOUTS = ("stimage", "visium", "visiumhd", "st")
STIMAGE_TECHS = ("ST", "Visium", "VisiumHD")
PITCH_UM = {"ST": 200.0, "Visium": 100.0, "VisiumHD": 8.0}
SPOT_DIAMETER_UM = {"ST": 100.0, "Visium": 55.0, "VisiumHD": 8.0}
HD_MARK_EVERY = 4  # VisiumHD: one bin in 4 x 4 carries a marker
HEX_ROW_UM = 100.0 * math.sqrt(3.0) / 2.0  # Visium row spacing
META_COLUMNS = ("slide", "species", "tissue", "pmid", "title", "abstract", "keywords", "involve_cancer", "tech",
                "spot_num", "gene_num")
MANIFEST_COLUMNS = ("slide_id", "layout", "technology", "path", "species", "tissue", "image", "coords", "counts",
                    "annotation")
#: Genes whose column is a versioned Ensembl id in an STimage slide with ``versioned_ids``.
VERSIONED_SYMBOLS = ("TP53", "ACTB", "GAPDH", "EPCAM", "PTPRC")
#: Broken STimage slides written with ``corrupt=True``: slide id -> the reject reason a reader should give.
CORRUPT_SLIDES = {
    "stimage_broken_image": "image_unreadable",
    "stimage_broken_coords": "coords_outside_image",
    "stimage_broken_counts": "negative_counts",
    "stimage_broken_float": "non_integer_counts",
    "stimage_dup_ids": "duplicate_spot_ids",
}
#: (species, tissue) of the fixed slides.
SLIDE_META = {
    "stimage_st_1": ("human", "breast"), "stimage_visium_1": ("human", "colon"),
    "stimage_hd_1": ("human", "lung"), "visium_1": ("human", "breast"), "visium_2": ("human", "colon"),
    "visiumhd_1": ("human", "colon"), "st_1": ("human", "breast"),
}


# ---------------------------------------------------------------- sizes

@dataclass(frozen=True)
class StimageSpec:
    """One STimage slide of a dataset (see :func:`generate_stimage_slide`)."""

    slide_id: str
    tech: str
    n_spots: int
    image_side: int
    n_genes: int
    image_format: str = "png"
    annotate: bool = True
    versioned_ids: bool = False


@dataclass(frozen=True)
class Sizes:
    """Dimensions of a dataset; ``SIZES['small']`` for unit tests, ``SIZES['full']`` for benchmarks."""

    name: str
    n_genes: int  # gene universe shared by all slides
    stimage: tuple[StimageSpec, ...]
    visium_rows: int  # hex grid: array_row 0..rows-1, array_col 0..cols-1 with col parity = row parity
    visium_cols: int
    visium_mpp: float  # µm/px of visium_1's full-resolution image.tif
    visium_margin_um: tuple[float, float]  # glass around the capture area (x, y)
    visium_genes: int
    visium_hires_side: int  # longer side of visium_1's tissue_hires_image.png
    visium2_mpp: float  # nominal full-res µm/px of visium_2 (no full-res image is written)
    visium2_hires_scalef: float  # visium_2's tissue_hires_scalef (its hires PNG is the only image)
    lowres_side: int
    hd_bins: int  # 8 µm bins per side (even)
    hd_mpp: float
    hd_margin_px: int
    hd_genes: int
    st_nx: int  # array x 1..nx (columns)
    st_ny: int  # array y 1..ny (rows)
    st_mpp: float
    st_margin_px: int
    st_genes: int
    st_coverage: float = 0.85
    density: float = 0.10  # share of non-zero counts (spots under tissue x genes)
    hd_density: float = 0.05
    corrupt_spots: int = 40
    tile: int = 512  # TIFF tile side


SIZES = {
    "small": Sizes(
        name="small", n_genes=400,
        stimage=(StimageSpec("stimage_st_1", "ST", 150, 1200, 350),
                 StimageSpec("stimage_visium_1", "Visium", 300, 1600, 360, image_format="jpeg", versioned_ids=True),
                 StimageSpec("stimage_hd_1", "VisiumHD", 1500, 1400, 300, annotate=False)),
        visium_rows=28, visium_cols=48, visium_mpp=1.5, visium_margin_um=(250.0, 400.0), visium_genes=400,
        visium_hires_side=1000, visium2_mpp=0.45, visium2_hires_scalef=0.3, lowres_side=400,
        hd_bins=56, hd_mpp=0.5, hd_margin_px=64, hd_genes=300,
        st_nx=14, st_ny=13, st_mpp=1.6, st_margin_px=250, st_genes=350, st_coverage=0.8),
    "full": Sizes(
        name="full", n_genes=18000,
        stimage=(StimageSpec("stimage_st_1", "ST", 600, 6000, 15000),
                 StimageSpec("stimage_visium_1", "Visium", 3000, 12000, 15000, image_format="jpeg",
                             versioned_ids=True),
                 StimageSpec("stimage_hd_1", "VisiumHD", 20000, 5000, 2000, annotate=False)),
        visium_rows=78, visium_cols=128, visium_mpp=0.4, visium_margin_um=(650.0, 650.0), visium_genes=18000,
        visium_hires_side=2000, visium2_mpp=0.4, visium2_hires_scalef=0.2, lowres_side=600,
        hd_bins=400, hd_mpp=0.5, hd_margin_px=256, hd_genes=2000,
        st_nx=33, st_ny=35, st_mpp=0.8, st_margin_px=600, st_genes=15000, st_coverage=0.9),
}


def get_sizes(size: Union[str, Sizes]) -> Sizes:
    if isinstance(size, Sizes):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (expected {', '.join(SIZES)} or a Sizes instance)")
    return SIZES[size]


# ---------------------------------------------------------------- helpers

def slide_rng(seed: int, slide_id: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, slide id, purpose)."""
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(slide_id.encode()), zlib.crc32(purpose.encode())]))


def random_barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct ``AAACAAGTATCTCCCA-1``-style barcodes."""
    letters = np.array(list("ACGT"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        draw = letters[rng.integers(0, 4, (n - len(out) + 8, 16))]
        for row in draw:
            code = "".join(row) + "-1"
            if code not in seen:
                seen.add(code)
                out.append(code)
                if len(out) == n:
                    break
    return np.array(out, dtype=object)


def hd_barcode(bin_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    return np.array([f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col)], dtype=object)


def _jitter(rng: np.random.Generator, n: int, amplitude: float = 0.3) -> np.ndarray:
    return np.round(rng.uniform(-amplitude, amplitude, n), 2)


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


@dataclass
class SlideInfo:
    slide_id: str
    layout: str
    technology: str
    path: str  # slide root (visium/visiumhd/st) or release root (stimage)
    species: str
    tissue: str
    n_spots: int  # spots a reader returns by default (in tissue for Visium/HD, matched for ST)
    n_positions: int  # all spots/bins of the coordinate file
    image_path: str
    truth: Optional[Truth] = field(default=None, repr=False)


# ---------------------------------------------------------------- STimage

def _grid(tech: str, n_positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Array rows/cols and µm offsets of a grid with at least ``n_positions`` positions."""
    pitch = PITCH_UM[tech]
    if tech == "Visium":
        rows = max(2, math.ceil(math.sqrt(n_positions / 0.866)))
        per_row = max(1, math.ceil(n_positions / rows))
        r, k = np.divmod(np.arange(rows * per_row), per_row)
        col = 2 * k + (r % 2)
        return r, col, col * pitch / 2.0, r * HEX_ROW_UM
    side = max(2, math.ceil(math.sqrt(n_positions)))
    r, c = np.divmod(np.arange(side * side), side)
    return r, c, c * pitch, r * pitch


def _hd_codes(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Marker codes of 2-8 µm bins: the bin's index where row and column are multiples of ``HD_MARK_EVERY``, else -1.

    A marker (14 px) nearly fills a 16-px bin, so marking every bin would leave no tissue in the image.
    """
    code = np.arange(len(row), dtype=np.int64)
    code[(np.asarray(row) % HD_MARK_EVERY != 0) | (np.asarray(col) % HD_MARK_EVERY != 0)] = -1
    return code


def _stimage_ids(tech: str, rng: np.random.Generator, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    if tech == "ST":
        return np.array([f"{c + 1}x{r + 1}" for r, c in zip(row, col)], dtype=object)
    if tech == "Visium":
        return random_barcodes(rng, len(row))
    return hd_barcode(8, row, col)


def _gene_columns(universe: GeneUniverse, genes: np.ndarray, versioned: bool) -> list[str]:
    names = [universe.symbols[g] for g in genes]
    if versioned:
        wanted = set(VERSIONED_SYMBOLS)
        fillers = 0
        for i, g in enumerate(genes):
            symbol = universe.symbols[g]
            if symbol in wanted or (symbol.startswith("GENE") and fillers < 3):
                fillers += symbol.startswith("GENE")
                names[i] = universe.versioned_id(int(g))
    return names


def _upsert_meta(root: str, row: dict[str, str]) -> None:
    path = os.path.join(root, "meta", "meta_all_gene.csv")
    rows: list[dict[str, str]] = []
    if os.path.exists(path):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [r for r in frame.to_dict("records") if r.get("slide") != row["slide"]]
    rows.append(row)
    rows.sort(key=lambda r: r["slide"])
    with open_text(path, gz=False) as text:
        writer = csv.DictWriter(text, fieldnames=list(META_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in META_COLUMNS})


def generate_stimage_slide(out_dir: str, slide_id: str, tech: str, n_spots: int, image_side: int, n_genes: int,
                           seed: int, image_format: str = "png", *, universe: Optional[GeneUniverse] = None,
                           truth_root: Optional[str] = None, annotate: bool = True, versioned_ids: bool = False,
                           species: str = "human", tissue: str = "breast", density: Optional[float] = None,
                           corruption: Optional[str] = None) -> Truth:
    """Write one slide into the STimage-1K4M release at ``out_dir`` and return its truth.

    ``tech`` is ``ST``, ``Visium`` or ``VisiumHD`` (spot grid: 200 µm square, 100 µm hex, 8 µm square bins).
    The image is ``image_side`` px wide and 85 % as high; the spot grid fills ~80 % of it, and the
    ``n_spots`` grid positions most inside the tissue are listed. ``image_format``: ``png``, ``jpeg``
    (JPEG bytes in the ``.png`` file) or ``tiff``; PNGs above ``image.STREAM_PNG_PIXELS`` pixels are
    streamed strip by strip. The truth goes to ``{truth_root}/truth/{slide_id}.npz`` (``truth_root``
    defaults to ``out_dir``) and the slide's row is added to ``meta/meta_all_gene.csv``.
    ``corruption`` (one of ``CORRUPT_SLIDES`` values) writes a deliberately broken slide.
    """
    if tech not in STIMAGE_TECHS:
        raise ValueError(f"tech must be one of {', '.join(STIMAGE_TECHS)} (got {tech!r})")
    truth_root = truth_root or out_dir
    universe = universe or gene_universe(max(n_genes, 400), seed)
    rng = slide_rng(seed, slide_id, "layout")
    coverage = 0.6
    row, col, gx, gy = _grid(tech, math.ceil(n_spots / coverage * 1.25) + 4)
    width, height = int(image_side), int(round(image_side * 0.85))
    extent_x, extent_y = float(gx.max()), float(gy.max())
    mpp = max(extent_x / (width * 0.8), extent_y / (height * 0.8))
    pitch_px = PITCH_UM[tech] / mpp
    if pitch_px < MARKER_SIDE + 2:
        raise ValueError(f"{slide_id}: {n_spots} {tech} spots need an image side of at least "
                         f"{math.ceil(image_side * (MARKER_SIDE + 2) / pitch_px)} px (spot pitch {pitch_px:.1f} px)")
    ox = (width * mpp - extent_x) * 0.55
    oy = (height * mpp - extent_y) * 0.45
    x_um, y_um = gx + ox, gy + oy
    scene = Scene.build(slide_rng(seed, slide_id, "scene"), width * mpp, height * mpp,
                        (float(x_um.min()), float(y_um.min()), float(x_um.max()), float(y_um.max())), coverage)
    x_px = np.rint(x_um / mpp - 0.5).astype(np.int64)
    y_px = np.rint(y_um / mpp - 0.5).astype(np.int64)
    score = scene.tissue_um_at((x_px + 0.5) * mpp, (y_px + 0.5) * mpp)
    keep = np.sort(np.argsort(-score, kind="stable")[:n_spots])
    row, col, x_px, y_px = row[keep], col[keep], x_px[keep], y_px[keep]
    n = len(keep)
    cx_um, cy_um = (x_px + 0.5) * mpp, (y_px + 0.5) * mpp
    ids = _stimage_ids(tech, rng, row, col)
    domain = scene.domain_at(cx_um, cy_um)
    radius_um = SPOT_DIAMETER_UM[tech] / 2.0
    fraction = scene.tissue_fraction(cx_um, cy_um, radius_um)
    in_tissue = scene.tissue_um_at(cx_um, cy_um) > 0
    genes = choose_genes(universe, n_genes, rng)
    columns = _gene_columns(universe, genes, versioned_ids)
    density = density if density is not None else (0.05 if tech == "VisiumHD" else 0.10)
    counts = sample_counts(slide_rng(seed, slide_id, "counts"), universe, genes, domain, fraction,
                           np.ones(n, bool), density)
    code = _hd_codes(row, col) if tech == "VisiumHD" else np.arange(n, dtype=np.int64)
    marked = code >= 0

    image_path = os.path.join(out_dir, tech, "image", f"{slide_id}.png")
    renderer = Renderer(scene, width, height, mpp, seed=zlib.crc32(slide_id.encode()) ^ seed)
    if corruption == "image_unreadable":
        ensure_dir(os.path.dirname(image_path))
        with open(image_path, "wb") as handle:
            handle.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        write_image(image_path, renderer, Markers(x_px[marked], y_px[marked], code[marked]), image_format)

    written_x = x_px + _jitter(rng, n)
    written_y = y_px + _jitter(rng, n)
    coord_ids = ids.copy()
    if corruption == "coords_outside_image":
        written_x[: min(3, n)] = width + 50.0 + np.arange(min(3, n))
    if corruption == "duplicate_spot_ids" and n > 2:
        coord_ids[2] = coord_ids[1]
    radius_px = radius_um / mpp
    with open_text(os.path.join(out_dir, tech, "coord", f"{slide_id}_coord.csv")) as text:
        text.write(",yaxis,xaxis,r\n")
        text.write("".join(f"{i},{yy:.2f},{xx:.2f},{radius_px:.4f}\n"
                           for i, yy, xx in zip(coord_ids, written_y, written_x)))
    counts_path = os.path.join(out_dir, tech, "gene_exp", f"{slide_id}_count.csv")
    write_dense(counts_path, list(ids), columns, counts, ",")
    if corruption in ("negative_counts", "non_integer_counts"):
        with open(counts_path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        fields = lines[1].split(",")
        fields[1] = "-3" if corruption == "negative_counts" else "1.5"
        lines[1] = ",".join(fields)
        with open(counts_path, "w", encoding="utf-8", newline="") as handle:
            handle.write("\n".join(lines))
    labels = None
    if annotate:
        labels = np.asarray(DOMAINS, dtype=object)[domain]
        with open_text(os.path.join(out_dir, "annotation", f"{slide_id}_anno.csv")) as text:
            text.write("\tV2\n")
            text.write("".join(f"{i}\t{label}\n" for i, label in zip(ids, labels)))
    involve_cancer = bool((domain == DOMAINS.index("tumor")).any())
    _upsert_meta(out_dir, {
        "slide": slide_id, "species": species, "tissue": tissue,
        "pmid": str(30000000 + zlib.crc32(slide_id.encode()) % 9000000),
        "title": f'Synthetic {tissue} section, {tech} ("stlake synth")',
        "abstract": f"A generated {tech} slide with {n} spots; domains: {', '.join(DOMAINS)}.",
        "keywords": f"spatial transcriptomics; {tissue}; synthetic", "involve_cancer": str(involve_cancer),
        "tech": tech, "spot_num": str(n), "gene_num": str(len(genes))})
    truth = Truth(
        slide_id=slide_id, layout="stimage", technology=tech, spot_id=ids, x=x_px, y=y_px, code=code,
        gene_names=columns, counts=counts, labels=labels, domain=domain, image_path=image_path,
        in_tissue=in_tissue, spot_diameter_px=2 * radius_px, microns_per_pixel=mpp, image_width=width,
        image_height=height, gene_ids=[universe.ids[g] for g in genes],
        gene_symbols=[universe.symbols[g] for g in genes])
    if corruption is None:
        save_truth(truth_root, truth)
    return truth


def write_stimage(out_dir: str, sizes: Sizes, universe: GeneUniverse, seed: int, corrupt: bool) -> list[SlideInfo]:
    root = os.path.join(out_dir, "stimage")
    if os.path.isdir(root):  # the release is rewritten as a whole
        shutil.rmtree(root)
    infos = []
    for spec in sizes.stimage:
        species, tissue = SLIDE_META.get(spec.slide_id, ("human", "breast"))
        truth = generate_stimage_slide(root, spec.slide_id, spec.tech, spec.n_spots, spec.image_side, spec.n_genes,
                                       seed, spec.image_format, universe=universe, truth_root=out_dir,
                                       annotate=spec.annotate, versioned_ids=spec.versioned_ids, species=species,
                                       tissue=tissue)
        infos.append(SlideInfo(spec.slide_id, "stimage", spec.tech, root, species, tissue, len(truth), len(truth),
                               truth.image_path, truth))
    if corrupt:
        for slide_id, reason in CORRUPT_SLIDES.items():
            truth = generate_stimage_slide(root, slide_id, "Visium", sizes.corrupt_spots, 420, 60, seed,
                                           universe=universe, truth_root=out_dir, annotate=False,
                                           species="human", tissue="skin", corruption=reason)
            infos.append(SlideInfo(slide_id, "stimage", "Visium", root, "human", "skin", len(truth), len(truth),
                                   truth.image_path, None))
    return infos


# ---------------------------------------------------------------- Visium

def _hex_positions(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keep = (c % 2) == (r % 2)
    return r[keep].astype(np.int64), c[keep].astype(np.int64)


def write_visium(out_dir: str, sizes: Sizes, universe: GeneUniverse, seed: int, variant: int) -> SlideInfo:
    """``visium_1``: positions list (no header), HDF5 matrix, full-res ``image.tif`` + hires PNG.
    ``visium_2``: ``tissue_positions.csv`` (header), MTX folder, only ``spatial/tissue_hires_image.png``.
    """
    slide_id = f"visium_{variant}"
    root = os.path.join(out_dir, "visium", slide_id)
    if os.path.isdir(root):
        shutil.rmtree(root)
    spatial = ensure_dir(os.path.join(root, "spatial"))
    species, tissue = SLIDE_META[slide_id]
    rng = slide_rng(seed, slide_id, "layout")
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
    barcodes, array_row, array_col, px, py = barcodes[order], array_row[order], array_col[order], px[order], py[order]
    cx_um, cy_um = (px + 0.5) * mpp, (py + 0.5) * mpp
    in_tissue = scene.tissue_um_at(cx_um, cy_um) > 0
    domain = scene.domain_at(cx_um, cy_um)
    fraction = scene.tissue_fraction(cx_um, cy_um, 27.5)
    genes = choose_genes(universe, sizes.visium_genes, rng)
    counts = sample_counts(slide_rng(seed, slide_id, "counts"), universe, genes, domain, fraction, in_tissue,
                           sizes.density)
    code = np.arange(n, dtype=np.int64)
    gene_ids = [universe.ids[g] for g in genes]
    gene_names = [universe.symbols[g] for g in genes]

    # positions and scale factors
    frame = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue.astype(np.int64), "array_row": array_row,
                          "array_col": array_col, "pxl_row_in_fullres": py, "pxl_col_in_fullres": px})
    if variant == 1:
        frame.to_csv(os.path.join(spatial, "tissue_positions_list.csv"), header=False, index=False, lineterminator="\n")
    else:
        frame.to_csv(os.path.join(spatial, "tissue_positions.csv"), header=True, index=False, lineterminator="\n")
    write_json(os.path.join(spatial, "scalefactors_json.json"), {
        "spot_diameter_fullres": 55.0 / mpp, "tissue_hires_scalef": hires_scalef,
        "fiducial_diameter_fullres": 65.0 / mpp * 1.1, "tissue_lowres_scalef": lowres_scalef})

    # expression: in-tissue barcodes only, in positions order
    matrix = counts[np.flatnonzero(in_tissue)]
    if variant == 1:
        write_10x_h5(os.path.join(root, "filtered_feature_bc_matrix.h5"), matrix, barcodes[in_tissue], gene_ids,
                     gene_names)
    else:
        write_10x_mtx(os.path.join(root, "filtered_feature_bc_matrix"), matrix, barcodes[in_tissue], gene_ids,
                      gene_names)

    # images
    image_seed = zlib.crc32(slide_id.encode()) ^ seed
    hires_w, hires_h = int(round(width * hires_scalef)), int(round(height * hires_scalef))
    hx, hy = np.rint(px * hires_scalef).astype(np.int64), np.rint(py * hires_scalef).astype(np.int64)
    hires = Renderer(scene, hires_w, hires_h, mpp / hires_scalef, seed=image_seed)
    hires_markers = Markers(hx, hy, code) if variant == 2 else None  # visium_1 is tiled from image.tif
    write_image(os.path.join(spatial, "tissue_hires_image.png"), hires, hires_markers, "png")
    lowres = Renderer(scene, int(round(width * lowres_scalef)), int(round(height * lowres_scalef)),
                      mpp / lowres_scalef, seed=image_seed)
    write_image(os.path.join(spatial, "tissue_lowres_image.png"), lowres, None, "png")
    if variant == 1:
        image_path = os.path.join(root, "image.tif")
        write_tiff(image_path, Renderer(scene, width, height, mpp, seed=image_seed), Markers(px, py, code), sizes.tile)
        tx, ty, t_mpp, t_w, t_h, diameter = px, py, mpp, width, height, 55.0 / mpp
    else:
        image_path = os.path.join(spatial, "tissue_hires_image.png")
        tx, ty, t_mpp, t_w, t_h = hx, hy, mpp / hires_scalef, hires_w, hires_h
        diameter = 55.0 / mpp * hires_scalef
    truth = Truth(
        slide_id=slide_id, layout="visium", technology="Visium", spot_id=barcodes, x=tx, y=ty, code=code,
        gene_names=gene_names, counts=counts, labels=None, domain=domain, image_path=image_path,
        in_tissue=in_tissue, spot_diameter_px=diameter, microns_per_pixel=t_mpp, image_width=t_w, image_height=t_h,
        gene_ids=gene_ids, gene_symbols=gene_names,
        extra={"array_row": array_row, "array_col": array_col, "pxl_col_in_fullres": px, "pxl_row_in_fullres": py,
               "tissue_hires_scalef": np.array(hires_scalef)})
    save_truth(out_dir, truth)
    return SlideInfo(slide_id, "visium", "Visium", root, species, tissue, int(in_tissue.sum()), n, image_path, truth)


# ---------------------------------------------------------------- VisiumHD

def write_visiumhd(out_dir: str, sizes: Sizes, universe: GeneUniverse, seed: int) -> SlideInfo:
    """``binned_outputs/square_008um`` and ``square_016um`` (16 µm = sums of 2 x 2 8-µm bins) + ``image.tif``."""
    slide_id = "visiumhd_1"
    root = os.path.join(out_dir, "visiumhd", slide_id)
    if os.path.isdir(root):
        shutil.rmtree(root)
    species, tissue = SLIDE_META[slide_id]
    rng = slide_rng(seed, slide_id, "layout")
    n_side = sizes.hd_bins + (sizes.hd_bins % 2)
    mpp = sizes.hd_mpp
    bin_px = int(round(8.0 / mpp))
    if abs(bin_px * mpp - 8.0) > 1e-9 or bin_px % 2 or bin_px < MARKER_SIDE:
        raise ValueError(f"hd_mpp {mpp} must give an even 8 µm bin of at least {MARKER_SIDE} px")
    mx, my = sizes.hd_margin_px, sizes.hd_margin_px + 48
    width, height = 2 * mx + n_side * bin_px, 2 * my + n_side * bin_px
    row, col = np.divmod(np.arange(n_side * n_side), n_side)
    px = mx + col * bin_px + bin_px // 2
    py = my + row * bin_px + bin_px // 2
    cx_um, cy_um = (px + 0.5) * mpp, (py + 0.5) * mpp
    scene = Scene.build(slide_rng(seed, slide_id, "scene"), width * mpp, height * mpp,
                        (mx * mpp, my * mpp, (width - mx) * mpp, (height - my) * mpp), 0.65)
    in_tissue = scene.tissue_um_at(cx_um, cy_um) > 0
    domain = scene.domain_at(cx_um, cy_um)
    fraction = scene.tissue_fraction(cx_um, cy_um, 4.0)
    genes = choose_genes(universe, sizes.hd_genes, rng)
    gene_ids = [universe.ids[g] for g in genes]
    gene_names = [universe.symbols[g] for g in genes]
    counts = sample_counts(slide_rng(seed, slide_id, "counts"), universe, genes, domain, fraction, in_tissue,
                           sizes.hd_density)
    barcodes = hd_barcode(8, row, col)
    code = _hd_codes(row, col)
    # 16 µm bins
    half = n_side // 2
    row16, col16 = np.divmod(np.arange(half * half), half)
    parent = (row // 2) * half + (col // 2)
    aggregate = sp.csr_matrix((np.ones(len(parent), np.int64), (parent, np.arange(len(parent)))),
                              shape=(half * half, len(parent)))
    counts16 = (aggregate @ counts).tocsr()
    counts16.sort_indices()
    in_tissue16 = np.asarray(aggregate @ in_tissue.astype(np.int64)).ravel() > 0
    px16, py16 = mx + col16 * 2 * bin_px + bin_px, my + row16 * 2 * bin_px + bin_px
    barcodes16 = hd_barcode(16, row16, col16)

    hires_scalef = min(0.5, 2000.0 / max(width, height))
    lowres_scalef = sizes.lowres_side / max(width, height)
    image_seed = zlib.crc32(slide_id.encode()) ^ seed
    hires_png = encode_image(render(Renderer(scene, int(round(width * hires_scalef)), int(round(height * hires_scalef)),
                                             mpp / hires_scalef, seed=image_seed)), "png")
    lowres_png = encode_image(render(Renderer(scene, int(round(width * lowres_scalef)),
                                              int(round(height * lowres_scalef)), mpp / lowres_scalef,
                                              seed=image_seed)), "png")
    for bin_um, bcs, r_, c_, x_, y_, tissue_, mat in (
            (8, barcodes, row, col, px, py, in_tissue, counts),
            (16, barcodes16, row16, col16, px16, py16, in_tissue16, counts16)):
        folder = os.path.join(root, "binned_outputs", f"square_{bin_um:03d}um")
        spatial = ensure_dir(os.path.join(folder, "spatial"))
        table = pa.table({
            "barcode": pa.array(list(bcs), pa.string()), "in_tissue": pa.array(tissue_.astype(np.int32)),
            "array_row": pa.array(r_.astype(np.int32)), "array_col": pa.array(c_.astype(np.int32)),
            "pxl_row_in_fullres": pa.array(y_.astype(np.float64)),
            "pxl_col_in_fullres": pa.array(x_.astype(np.float64))})
        pq.write_table(table, os.path.join(spatial, "tissue_positions.parquet"))
        write_json(os.path.join(spatial, "scalefactors_json.json"), {
            "spot_diameter_fullres": bin_um / mpp, "bin_size_um": float(bin_um), "microns_per_pixel": mpp,
            "tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef,
            "fiducial_diameter_fullres": 60.0 / mpp, "regist_target_img_scalef": hires_scalef})
        for name, data in (("tissue_hires_image.png", hires_png), ("tissue_lowres_image.png", lowres_png)):
            with open(os.path.join(spatial, name), "wb") as handle:
                handle.write(data)
        write_10x_h5(os.path.join(folder, "filtered_feature_bc_matrix.h5"), mat[np.flatnonzero(tissue_)],
                     bcs[tissue_], gene_ids, gene_names)
    image_path = os.path.join(root, "image.tif")
    marked = code >= 0
    write_tiff(image_path, Renderer(scene, width, height, mpp, seed=image_seed),
               Markers(px[marked], py[marked], code[marked]), sizes.tile)
    truth = Truth(
        slide_id=slide_id, layout="visiumhd", technology="VisiumHD", spot_id=barcodes, x=px, y=py, code=code,
        gene_names=gene_names, counts=counts, labels=None, domain=domain, image_path=image_path, in_tissue=in_tissue,
        spot_diameter_px=float(bin_px), microns_per_pixel=mpp, image_width=width, image_height=height,
        gene_ids=gene_ids, gene_symbols=gene_names,
        extra={"array_row": row, "array_col": col, "bin016_spot_id": barcodes16, "bin016_x": px16, "bin016_y": py16,
               "bin016_in_tissue": in_tissue16, "bin016_parent": parent})
    save_truth(out_dir, truth)
    return SlideInfo(slide_id, "visiumhd", "VisiumHD", root, species, tissue, int(in_tissue.sum()), len(row),
                     image_path, truth)


# ---------------------------------------------------------------- legacy ST

def write_st(out_dir: str, sizes: Sizes, universe: GeneUniverse, seed: int) -> SlideInfo:
    """Counts TSV.gz (rows ``{x}x{y}``), spot detector TSV, H&E JPEG; 2 + 2 deliberately unmatched spots."""
    slide_id = "st_1"
    root = os.path.join(out_dir, "st", slide_id)
    if os.path.isdir(root):
        shutil.rmtree(root)
    ensure_dir(root)
    species, tissue = SLIDE_META[slide_id]
    rng = slide_rng(seed, slide_id, "layout")
    mpp = sizes.st_mpp
    pitch = 200.0 / mpp
    mx, my = sizes.st_margin_px, sizes.st_margin_px + 40
    width = int(round(2 * mx + (sizes.st_nx - 1) * pitch))
    height = int(round(2 * my + (sizes.st_ny - 1) * pitch))
    ay, ax = np.divmod(np.arange(sizes.st_nx * sizes.st_ny), sizes.st_nx)
    ax, ay = ax + 1, ay + 1  # array x = column 1..nx, y = row 1..ny
    n = len(ax)
    px = np.rint(mx + (ax - 1) * pitch).astype(np.int64) + rng.integers(-2, 3, n)
    py = np.rint(my + (ay - 1) * pitch).astype(np.int64) + rng.integers(-2, 3, n)
    pixel_x = np.round(px + rng.uniform(-0.3, 0.3, n), 3)
    pixel_y = np.round(py + rng.uniform(-0.3, 0.3, n), 3)
    new_x = np.round((pixel_x - mx) / pitch + 1, 4)
    new_y = np.round((pixel_y - my) / pitch + 1, 4)
    truth_x, truth_y = np.rint(pixel_x).astype(np.int64), np.rint(pixel_y).astype(np.int64)
    scene = Scene.build(slide_rng(seed, slide_id, "scene"), width * mpp, height * mpp,
                        ((mx - pitch / 2) * mpp, (my - pitch / 2) * mpp, (width - mx + pitch / 2) * mpp,
                         (height - my + pitch / 2) * mpp), sizes.st_coverage)
    cx_um, cy_um = (truth_x + 0.5) * mpp, (truth_y + 0.5) * mpp
    selected = scene.tissue_um_at(cx_um, cy_um) > 0
    domain = scene.domain_at(cx_um, cy_um)
    fraction = scene.tissue_fraction(cx_um, cy_um, 50.0)
    chosen = rng.choice(np.flatnonzero(selected), size=4, replace=False)
    only_counts, only_detector = np.sort(chosen[:2]), np.sort(chosen[2:])
    in_detector = np.ones(n, bool)
    in_detector[only_counts] = False
    in_counts = selected.copy()
    in_counts[only_detector] = False
    names = np.array([f"{x}x{y}" for x, y in zip(ax, ay)], dtype=object)
    detector_rows = np.flatnonzero(in_detector)
    code = np.full(n, -1, np.int64)
    code[detector_rows] = np.arange(len(detector_rows))

    with open_text(os.path.join(root, f"{slide_id}_spot_detector.tsv")) as text:
        text.write("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n")
        text.write("".join(f"{ax[i]}\t{ay[i]}\t{new_x[i]:.4f}\t{new_y[i]:.4f}\t{pixel_x[i]:.3f}\t{pixel_y[i]:.3f}"
                           f"\t{int(selected[i])}\n" for i in detector_rows))
    counts_rows = rng.permutation(np.flatnonzero(in_counts))  # counts files list spots in no particular order
    genes = choose_genes(universe, sizes.st_genes, rng)
    gene_names = [universe.symbols[g] for g in genes]
    counts = sample_counts(slide_rng(seed, slide_id, "counts"), universe, genes, domain[counts_rows],
                           fraction[counts_rows], np.ones(len(counts_rows), bool), sizes.density)
    write_dense(os.path.join(root, f"{slide_id}_counts.tsv.gz"), list(names[counts_rows]), gene_names, counts, "\t")
    image_path = os.path.join(root, f"{slide_id}_HE.jpg")
    markers = Markers(truth_x[detector_rows], truth_y[detector_rows], code[detector_rows])
    write_image(image_path, Renderer(scene, width, height, mpp, seed=zlib.crc32(slide_id.encode()) ^ seed),
                markers, "jpeg", quality=92)
    matched = in_detector[counts_rows]
    spots = counts_rows[matched]
    truth = Truth(
        slide_id=slide_id, layout="st", technology="ST", spot_id=names[spots], x=truth_x[spots], y=truth_y[spots],
        code=code[spots], gene_names=gene_names, counts=counts[np.flatnonzero(matched)], labels=None,
        domain=domain[spots], image_path=image_path, in_tissue=selected[spots], spot_diameter_px=100.0 / mpp,
        microns_per_pixel=mpp, image_width=width, image_height=height,
        gene_ids=[universe.ids[g] for g in genes], gene_symbols=gene_names,
        unmatched_counts=sorted(names[only_counts].tolist()), unmatched_detector=sorted(names[only_detector].tolist()),
        extra={"array_x": ax[spots], "array_y": ay[spots]})
    save_truth(out_dir, truth)
    return SlideInfo(slide_id, "st", "ST", root, species, tissue, len(spots), int(in_detector.sum()), image_path, truth)


# ---------------------------------------------------------------- the dataset

def write_manifest(out_dir: str, infos: Sequence[SlideInfo], rewritten: Sequence[str]) -> str:
    """``manifest.csv``: the slides of ``infos`` plus earlier rows of layouts not in ``rewritten`` that still exist."""
    path = os.path.join(out_dir, "manifest.csv")
    rows = {info.slide_id: [info.slide_id, info.layout, info.technology, os.path.relpath(info.path, out_dir),
                            info.species, info.tissue, "", "", "", ""] for info in infos}
    if os.path.exists(path):
        earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
        for row in earlier.to_dict("records"):
            if (row.get("layout") not in rewritten and row.get("slide_id") not in rows
                    and os.path.exists(os.path.join(out_dir, row.get("path", "")))):
                rows[row["slide_id"]] = [row.get(c, "") for c in MANIFEST_COLUMNS]
    with open_text(path, gz=False) as text:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for slide_id in sorted(rows):
            writer.writerow(rows[slide_id])
    return path


def generate(out_dir: str, size: Union[str, Sizes] = "small", seed: int = 0,
             layouts: Sequence[str] = LAYOUTS, corrupt: bool = False) -> dict:
    """Write a synthetic dataset (the chosen ``layouts``) into ``out_dir`` and return a summary.

    ``size`` is ``"small"`` (unit tests, a few seconds), ``"full"`` (benchmarks) or a :class:`Sizes`.
    ``corrupt`` also writes the broken STimage slides of ``CORRUPT_SLIDES`` (listed in the meta CSV and the
    manifest, no truth). Each written layout replaces its folder; ``manifest.csv`` keeps the rows of other
    layouts already in ``out_dir`` (e.g. a full-size Visium slide added to a small dataset).

    The summary has ``slides`` (layout -> valid slide ids), ``corrupt`` (slide id -> expected reject reason),
    ``technology``, ``paths`` (slide root, or release root for stimage), ``images``, ``truth`` (slide id ->
    path), ``n_spots`` (spots a reader returns by default: in tissue for Visium/VisiumHD, matched for ST),
    ``n_positions`` (all spots / bins of the coordinate file), ``n_genes``, ``manifest`` and ``seconds``.
    """
    started = time.perf_counter()
    if isinstance(layouts, str):
        layouts = (layouts,)
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown:
        raise ValueError(f"unknown layout(s) {', '.join(unknown)} (expected {', '.join(LAYOUTS)})")
    sizes = get_sizes(size)
    out_dir = os.path.abspath(out_dir)
    ensure_dir(out_dir)
    universe = gene_universe(sizes.n_genes, seed)
    infos: list[SlideInfo] = []
    if "stimage" in layouts or corrupt:
        infos += write_stimage(out_dir, replace(sizes, stimage=sizes.stimage if "stimage" in layouts else ()),
                               universe, seed, corrupt)
    if "visium" in layouts:
        infos += [write_visium(out_dir, sizes, universe, seed, 1), write_visium(out_dir, sizes, universe, seed, 2)]
    if "visiumhd" in layouts:
        infos.append(write_visiumhd(out_dir, sizes, universe, seed))
    if "st" in layouts:
        infos.append(write_st(out_dir, sizes, universe, seed))
    rewritten = list(layouts) + (["stimage"] if corrupt else [])
    manifest = write_manifest(out_dir, infos, rewritten)
    valid = [i for i in infos if i.slide_id not in CORRUPT_SLIDES]
    return {
        "out_dir": out_dir, "size": sizes.name, "seed": seed, "layouts": tuple(layouts),
        "slides": {layout: [i.slide_id for i in valid if i.layout == layout] for layout in layouts},
        "corrupt": {i.slide_id: CORRUPT_SLIDES[i.slide_id] for i in infos if i.slide_id in CORRUPT_SLIDES},
        "technology": {i.slide_id: i.technology for i in infos},
        "paths": {i.slide_id: i.path for i in infos},
        "images": {i.slide_id: i.image_path for i in infos},
        "truth": {i.slide_id: truth_path(out_dir, i.slide_id) for i in valid},
        "n_spots": {i.slide_id: i.n_spots for i in infos},
        "n_positions": {i.slide_id: i.n_positions for i in infos},
        "n_genes": {i.slide_id: len(i.truth.gene_names) for i in valid if i.truth is not None},
        "manifest": manifest,
        "seconds": round(time.perf_counter() - started, 3),
    }
