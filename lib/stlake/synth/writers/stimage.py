"""STimage-1K4M release writer: ``{tech}/{image,coord,gene_exp}/``, ``annotation/``, ``meta/meta_all_gene.csv``.

Spot grids: ST 200 µm square, Visium 100 µm hex, VisiumHD 8 µm square bins. Each slide's image is
``image_side`` px wide and 85 % as high; the grid fills ~80 % of it, and the ``n_spots`` grid positions
most inside the tissue are listed.
"""
from __future__ import annotations

import csv
import math
import os
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stlake.synth.expression import GeneUniverse, choose_genes, gene_universe, sample_counts
from stlake.synth.formats import ensure_dir, open_text, write_dense
from stlake.synth.image import DOMAINS, Markers, Renderer, Scene
from stlake.synth.imagefiles import write_image
from stlake.synth.markers import MARKER_SIDE
from stlake.synth.specs import StimageSpec, corrupt_specs
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.common import (
    HEX_ROW_UM,
    DatasetJob,
    SlideInfo,
    fresh_dir,
    hd_barcode,
    hd_codes,
    image_seed,
    random_barcodes,
    slide_rng,
)

LAYOUT = "stimage"
STIMAGE_TECHS = ("ST", "Visium", "VisiumHD")
PITCH_UM = {"ST": 200.0, "Visium": 100.0, "VisiumHD": 8.0}
SPOT_DIAMETER_UM = {"ST": 100.0, "Visium": 55.0, "VisiumHD": 8.0}
COVERAGE = 0.6  # tissue share of the capture area
META_COLUMNS = ("slide", "species", "tissue", "pmid", "title", "abstract", "keywords", "involve_cancer", "tech",
                "spot_num", "gene_num")
#: Genes whose column is a versioned Ensembl id in an STimage slide with ``versioned_ids``.
VERSIONED_SYMBOLS = ("TP53", "ACTB", "GAPDH", "EPCAM", "PTPRC")


@dataclass(frozen=True)
class Placement:
    """Where a slide's listed spots sit: the image's size and pixel size, its scene, grid and pixel positions."""

    width: int
    height: int
    mpp: float
    scene: Scene
    row: np.ndarray
    col: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray

    def centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Spot centres in µm."""
        return (self.x_px + 0.5) * self.mpp, (self.y_px + 0.5) * self.mpp


@dataclass(frozen=True)
class Spots:
    """The listed spots' ids, domains, genes, counts and marker codes."""

    ids: np.ndarray
    domain: np.ndarray
    in_tissue: np.ndarray
    genes: np.ndarray
    columns: list[str]
    counts: sp.csr_matrix
    code: np.ndarray


def write(job: DatasetJob) -> list[SlideInfo]:
    """Rewrite the release under ``{out_dir}/stimage``: the sizes' slides if requested, the broken ones if corrupt."""
    root = fresh_dir(os.path.join(job.out_dir, LAYOUT))
    specs = job.sizes.stimage if LAYOUT in job.layouts else ()
    if job.corrupt:
        specs += corrupt_specs(job.sizes.corrupt_spots)
    return [_release_slide(root, spec, job) for spec in specs]


def _release_slide(root: str, spec: StimageSpec, job: DatasetJob) -> SlideInfo:
    truth = generate_stimage_slide(root, spec, job.seed, universe=job.universe, truth_root=job.out_dir)
    return SlideInfo(spec.slide_id, LAYOUT, spec.tech, root, spec.species, spec.tissue, len(truth), len(truth),
                     truth.image_path, None if spec.corruption else truth)


def generate_stimage_slide(out_dir: str, spec: StimageSpec, seed: int, *, universe: Optional[GeneUniverse] = None,
                           truth_root: Optional[str] = None) -> Truth:
    """Write one slide into the STimage-1K4M release at ``out_dir`` and return its truth.

    PNGs above ``imagefiles.STREAM_PNG_PIXELS`` pixels are streamed strip by strip. The truth goes to
    ``{truth_root}/truth/{slide_id}.npz`` (``truth_root`` defaults to ``out_dir``; none for a broken
    slide) and the slide's row is added to ``meta/meta_all_gene.csv``.
    """
    if spec.tech not in STIMAGE_TECHS:
        raise ValueError(f"tech must be one of {', '.join(STIMAGE_TECHS)} (got {spec.tech!r})")
    universe = universe or gene_universe(max(spec.n_genes, 400), seed)
    rng = slide_rng(seed, spec.slide_id, "layout")
    place = place_spots(spec, seed)
    spots = sample_spots(spec, place, universe, seed, rng)
    image_path = _write_slide_image(out_dir, spec, place, spots.code, seed, rng)
    radius_px = SPOT_DIAMETER_UM[spec.tech] / 2.0 / place.mpp
    _write_coords(out_dir, spec, place, spots.ids, radius_px, rng)
    _write_counts(out_dir, spec, spots)
    labels = _write_annotation(out_dir, spec, spots) if spec.annotate else None
    _upsert_meta(out_dir, _meta_row(spec, spots))
    truth = Truth(
        slide_id=spec.slide_id, layout=LAYOUT, technology=spec.tech, spot_id=spots.ids, x=place.x_px, y=place.y_px,
        code=spots.code, gene_names=spots.columns, counts=spots.counts, labels=labels, domain=spots.domain,
        image_path=image_path, in_tissue=spots.in_tissue, spot_diameter_px=2 * radius_px,
        microns_per_pixel=place.mpp, image_width=place.width, image_height=place.height,
        gene_ids=[universe.ids[g] for g in spots.genes], gene_symbols=[universe.symbols[g] for g in spots.genes])
    if spec.corruption is None:
        save_truth(truth_root or out_dir, truth)
    return truth


# ---------------------------------------------------------------- spots

def place_spots(spec: StimageSpec, seed: int) -> Placement:
    """Size the image to the grid, build the scene and keep the ``n_spots`` positions most inside the tissue."""
    row, col, gx, gy = _grid(spec.tech, math.ceil(spec.n_spots / COVERAGE * 1.25) + 4)
    width, height = int(spec.image_side), int(round(spec.image_side * 0.85))
    extent_x, extent_y = float(gx.max()), float(gy.max())
    mpp = max(extent_x / (width * 0.8), extent_y / (height * 0.8))
    _check_pitch(spec, mpp)
    x_um = gx + (width * mpp - extent_x) * 0.55
    y_um = gy + (height * mpp - extent_y) * 0.45
    scene = Scene.build(slide_rng(seed, spec.slide_id, "scene"), width * mpp, height * mpp,
                        (float(x_um.min()), float(y_um.min()), float(x_um.max()), float(y_um.max())), COVERAGE)
    x_px = np.rint(x_um / mpp - 0.5).astype(np.int64)
    y_px = np.rint(y_um / mpp - 0.5).astype(np.int64)
    score = scene.tissue_um_at((x_px + 0.5) * mpp, (y_px + 0.5) * mpp)
    keep = np.sort(np.argsort(-score, kind="stable")[:spec.n_spots])
    return Placement(width, height, mpp, scene, row[keep], col[keep], x_px[keep], y_px[keep])


def _check_pitch(spec: StimageSpec, mpp: float) -> None:
    """Neighbouring markers must not touch: the spot pitch must exceed a marker by 2 px."""
    pitch_px = PITCH_UM[spec.tech] / mpp
    if pitch_px < MARKER_SIDE + 2:
        raise ValueError(f"{spec.slide_id}: {spec.n_spots} {spec.tech} spots need an image side of at least "
                         f"{math.ceil(spec.image_side * (MARKER_SIDE + 2) / pitch_px)} px "
                         f"(spot pitch {pitch_px:.1f} px)")


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


def sample_spots(spec: StimageSpec, place: Placement, universe: GeneUniverse, seed: int,
                 rng: np.random.Generator) -> Spots:
    """Ids, domains and counts of the placed spots (``rng`` draws the ids, then the genes)."""
    cx_um, cy_um = place.centres_um()
    ids = _spot_ids(spec.tech, rng, place.row, place.col)
    domain = place.scene.domain_at(cx_um, cy_um)
    fraction = place.scene.tissue_fraction(cx_um, cy_um, SPOT_DIAMETER_UM[spec.tech] / 2.0)
    in_tissue = place.scene.tissue_um_at(cx_um, cy_um) > 0
    genes = choose_genes(universe, spec.n_genes, rng)
    density = spec.density if spec.density is not None else (0.05 if spec.tech == "VisiumHD" else 0.10)
    n = len(ids)
    counts = sample_counts(slide_rng(seed, spec.slide_id, "counts"), universe, genes, domain, fraction,
                           np.ones(n, bool), density)
    code = hd_codes(place.row, place.col) if spec.tech == "VisiumHD" else np.arange(n, dtype=np.int64)
    return Spots(ids, domain, in_tissue, genes, _gene_columns(universe, genes, spec.versioned_ids), counts, code)


def _spot_ids(tech: str, rng: np.random.Generator, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    if tech == "ST":
        return np.array([f"{c + 1}x{r + 1}" for r, c in zip(row, col)], dtype=object)
    if tech == "Visium":
        return random_barcodes(rng, len(row))
    return hd_barcode(8, row, col)


def _gene_columns(universe: GeneUniverse, genes: np.ndarray, versioned: bool) -> list[str]:
    """Gene symbols; with ``versioned``, versioned Ensembl ids for a few named genes and 3 fillers."""
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


# ---------------------------------------------------------------- files

def _write_slide_image(out_dir: str, spec: StimageSpec, place: Placement, code: np.ndarray, seed: int,
                       rng: np.random.Generator) -> str:
    """``{tech}/image/{slide}.png`` (random bytes for an ``image_unreadable`` slide, drawn from ``rng``)."""
    image_path = os.path.join(out_dir, spec.tech, "image", f"{spec.slide_id}.png")
    if spec.corruption == "image_unreadable":
        ensure_dir(os.path.dirname(image_path))
        with open(image_path, "wb") as handle:
            handle.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return image_path
    renderer = Renderer(place.scene, place.width, place.height, place.mpp, seed=image_seed(seed, spec.slide_id))
    marked = code >= 0
    write_image(image_path, renderer, Markers(place.x_px[marked], place.y_px[marked], code[marked]),
                spec.image_format)
    return image_path


def _write_coords(out_dir: str, spec: StimageSpec, place: Placement, ids: np.ndarray, radius_px: float,
                  rng: np.random.Generator) -> None:
    """``{tech}/coord/{slide}_coord.csv``: spot centres jittered by up to 0.3 px."""
    n = len(ids)
    written_x = place.x_px + _jitter(rng, n)
    written_y = place.y_px + _jitter(rng, n)
    coord_ids = ids.copy()
    if spec.corruption == "coords_outside_image":
        written_x[: min(3, n)] = place.width + 50.0 + np.arange(min(3, n))
    if spec.corruption == "duplicate_spot_ids" and n > 2:
        coord_ids[2] = coord_ids[1]
    with open_text(os.path.join(out_dir, spec.tech, "coord", f"{spec.slide_id}_coord.csv")) as text:
        text.write(",yaxis,xaxis,r\n")
        text.write("".join(f"{i},{yy:.2f},{xx:.2f},{radius_px:.4f}\n"
                           for i, yy, xx in zip(coord_ids, written_y, written_x)))


def _jitter(rng: np.random.Generator, n: int, amplitude: float = 0.3) -> np.ndarray:
    return np.round(rng.uniform(-amplitude, amplitude, n), 2)


def _write_counts(out_dir: str, spec: StimageSpec, spots: Spots) -> None:
    """``{tech}/gene_exp/{slide}_count.csv`` (dense); a broken slide gets one negative or fractional count."""
    counts_path = os.path.join(out_dir, spec.tech, "gene_exp", f"{spec.slide_id}_count.csv")
    write_dense(counts_path, list(spots.ids), spots.columns, spots.counts, ",")
    if spec.corruption in ("negative_counts", "non_integer_counts"):
        with open(counts_path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        fields = lines[1].split(",")
        fields[1] = "-3" if spec.corruption == "negative_counts" else "1.5"
        lines[1] = ",".join(fields)
        with open(counts_path, "w", encoding="utf-8", newline="") as handle:
            handle.write("\n".join(lines))


def _write_annotation(out_dir: str, spec: StimageSpec, spots: Spots) -> np.ndarray:
    """``annotation/{slide}_anno.csv``: the domain of each spot; returns the labels."""
    labels = np.asarray(DOMAINS, dtype=object)[spots.domain]
    with open_text(os.path.join(out_dir, "annotation", f"{spec.slide_id}_anno.csv")) as text:
        text.write("\tV2\n")
        text.write("".join(f"{i}\t{label}\n" for i, label in zip(spots.ids, labels)))
    return labels


def _meta_row(spec: StimageSpec, spots: Spots) -> dict[str, str]:
    n = len(spots.ids)
    return {
        "slide": spec.slide_id, "species": spec.species, "tissue": spec.tissue,
        "pmid": str(30000000 + zlib.crc32(spec.slide_id.encode()) % 9000000),
        "title": f'Synthetic {spec.tissue} section, {spec.tech} ("stlake synth")',
        "abstract": f"A generated {spec.tech} slide with {n} spots; domains: {', '.join(DOMAINS)}.",
        "keywords": f"spatial transcriptomics; {spec.tissue}; synthetic",
        "involve_cancer": str(bool((spots.domain == DOMAINS.index("tumor")).any())),
        "tech": spec.tech, "spot_num": str(n), "gene_num": str(len(spots.genes))}


def _upsert_meta(root: str, row: dict[str, str]) -> None:
    """Add (or replace) the slide's row of ``meta/meta_all_gene.csv``, rows sorted by slide."""
    path = os.path.join(root, "meta", "meta_all_gene.csv")
    rows: list[dict[str, str]] = []
    if os.path.exists(path):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records") if r.get("slide") != row["slide"]]
    rows.append(row)
    rows.sort(key=lambda r: r["slide"])
    with open_text(path, gz=False) as text:
        writer = csv.DictWriter(text, fieldnames=list(META_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in META_COLUMNS})
