"""Legacy ST writer: ``st/st_1/`` with counts TSV.gz, spot detector TSV, H&E JPEG and labelled coordinates.

Counts rows are named ``{x}x{y}``; the labelled-coordinates TSV is HER2ST's (:mod:`stlake.synth.labels`).
Two spots under tissue are only in the counts file and two only in the spot detector file, as in real
legacy data; readers match the two files and report the unmatched spots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from stlake.synth import labels
from stlake.synth.expression import choose_genes, sample_counts
from stlake.synth.formats import ensure_dir, open_text, write_dense
from stlake.synth.image import Markers, Renderer, Scene
from stlake.synth.imagefiles import write_image
from stlake.synth.specs import SLIDE_META, Sizes
from stlake.synth.truth import Truth, save_truth
from stlake.synth.writers.common import DatasetJob, SlideInfo, fresh_dir, image_seed, slide_rng

LAYOUT = "st"
SLIDE_ID = "st_1"
PITCH_UM = 200.0
SPOT_DIAMETER_UM = 100.0


@dataclass(frozen=True)
class SpotArray:
    """The ST array on its image: array x/y (1-based), detected pixel centres, refined array coordinates."""

    mpp: float
    width: int
    height: int
    scene: Scene
    ax: np.ndarray
    ay: np.ndarray
    pixel_x: np.ndarray  # spot detector output, 3 decimals
    pixel_y: np.ndarray
    new_x: np.ndarray  # refined array coordinates, 4 decimals
    new_y: np.ndarray

    @property
    def truth_x(self) -> np.ndarray:
        """Integer pixel centres."""
        return np.rint(self.pixel_x).astype(np.int64)

    @property
    def truth_y(self) -> np.ndarray:
        """Integer pixel centres."""
        return np.rint(self.pixel_y).astype(np.int64)

    @property
    def names(self) -> np.ndarray:
        """``{x}x{y}`` spot names."""
        return np.array([f"{x}x{y}" for x, y in zip(self.ax, self.ay)], dtype=object)


@dataclass(frozen=True)
class Matching:
    """Which spots each file lists: ``selected`` = under tissue; two only in counts, two only in the detector."""

    selected: np.ndarray
    in_detector: np.ndarray
    in_counts: np.ndarray
    only_counts: np.ndarray
    only_detector: np.ndarray


def write(job: DatasetJob) -> list[SlideInfo]:
    """``st_1``, its folder rewritten."""
    root = ensure_dir(fresh_dir(os.path.join(job.out_dir, LAYOUT, SLIDE_ID)))
    rng = slide_rng(job.seed, SLIDE_ID, "layout")
    array = spot_array(job.sizes, job.seed, rng)
    cx_um, cy_um = (array.truth_x + 0.5) * array.mpp, (array.truth_y + 0.5) * array.mpp
    match = matching(array.scene.tissue_um_at(cx_um, cy_um) > 0, rng)
    domain = array.scene.domain_at(cx_um, cy_um)
    fraction = array.scene.tissue_fraction(cx_um, cy_um, SPOT_DIAMETER_UM / 2)
    code = np.full(len(array.ax), -1, np.int64)
    detector_rows = np.flatnonzero(match.in_detector)
    code[detector_rows] = np.arange(len(detector_rows))
    _write_detector(root, array, match.selected, detector_rows)
    counts_rows = rng.permutation(np.flatnonzero(match.in_counts))  # counts files list spots in no particular order
    genes = choose_genes(job.universe, job.sizes.st_genes, rng)
    gene_names = [job.universe.symbols[g] for g in genes]
    counts = sample_counts(slide_rng(job.seed, SLIDE_ID, "counts"), job.universe, genes, domain[counts_rows],
                           fraction[counts_rows], np.ones(len(counts_rows), bool), job.sizes.density)
    names = array.names
    write_dense(os.path.join(root, f"{SLIDE_ID}_counts.tsv.gz"), list(names[counts_rows]), gene_names, counts, "\t")
    image_path = _write_he_image(root, array, code, detector_rows, job.seed)
    matched = match.in_detector[counts_rows]
    spots = counts_rows[matched]
    rows = np.concatenate([spots, match.only_detector])
    raw, unmatched_labels = labels.write_labelled_coordinates(
        root, SLIDE_ID, names[spots], array.new_x[rows], array.new_y[rows], array.pixel_x[rows], array.pixel_y[rows],
        domain[rows], np.arange(len(spots), len(rows)), slide_rng(job.seed, SLIDE_ID, "labels"))
    truth = Truth(
        slide_id=SLIDE_ID, layout=LAYOUT, technology="ST", spot_id=names[spots], x=array.truth_x[spots],
        y=array.truth_y[spots], code=code[spots], gene_names=gene_names, counts=counts[np.flatnonzero(matched)],
        labels=labels.normalised(raw), domain=domain[spots], image_path=image_path, in_tissue=match.selected[spots],
        spot_diameter_px=SPOT_DIAMETER_UM / array.mpp, microns_per_pixel=array.mpp, image_width=array.width,
        image_height=array.height, gene_ids=[job.universe.ids[g] for g in genes], gene_symbols=gene_names,
        unmatched_counts=sorted(names[match.only_counts].tolist()),
        unmatched_detector=sorted(names[match.only_detector].tolist()),
        extra={"array_x": array.ax[spots], "array_y": array.ay[spots], **labels.truth_extra({labels.ST_SET: raw}),
               "unmatched_label_rows": np.array(unmatched_labels)})
    save_truth(job.out_dir, truth)
    species, tissue = SLIDE_META[SLIDE_ID]
    return [SlideInfo(SLIDE_ID, LAYOUT, "ST", root, species, tissue, len(spots), int(match.in_detector.sum()),
                      image_path, truth)]


def spot_array(sizes: Sizes, seed: int, rng: np.random.Generator) -> SpotArray:
    """The nx x ny array on glass: pixel centres off by up to 2 px, detected to 0.3 px (drawn from ``rng``)."""
    mpp = sizes.st_mpp
    pitch = PITCH_UM / mpp
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
    scene = Scene.build(slide_rng(seed, SLIDE_ID, "scene"), width * mpp, height * mpp,
                        ((mx - pitch / 2) * mpp, (my - pitch / 2) * mpp, (width - mx + pitch / 2) * mpp,
                         (height - my + pitch / 2) * mpp), sizes.st_coverage)
    return SpotArray(mpp, width, height, scene, ax, ay, pixel_x, pixel_y, new_x, new_y)


def matching(selected: np.ndarray, rng: np.random.Generator) -> Matching:
    """Pick (from ``rng``) two selected spots left out of the detector file and two left out of the counts."""
    chosen = rng.choice(np.flatnonzero(selected), size=4, replace=False)
    only_counts, only_detector = np.sort(chosen[:2]), np.sort(chosen[2:])
    in_detector = np.ones(len(selected), bool)
    in_detector[only_counts] = False
    in_counts = selected.copy()
    in_counts[only_detector] = False
    return Matching(selected, in_detector, in_counts, only_counts, only_detector)


def _write_detector(root: str, array: SpotArray, selected: np.ndarray, rows: np.ndarray) -> None:
    """``st_1_spot_detector.tsv``: the detector's rows with array, refined and pixel coordinates."""
    a = array
    with open_text(os.path.join(root, f"{SLIDE_ID}_spot_detector.tsv")) as text:
        text.write("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n")
        text.write("".join(f"{a.ax[i]}\t{a.ay[i]}\t{a.new_x[i]:.4f}\t{a.new_y[i]:.4f}\t{a.pixel_x[i]:.3f}"
                           f"\t{a.pixel_y[i]:.3f}\t{int(selected[i])}\n" for i in rows))


def _write_he_image(root: str, array: SpotArray, code: np.ndarray, rows: np.ndarray, seed: int) -> str:
    """``st_1_HE.jpg`` with a marker on every detector spot."""
    image_path = os.path.join(root, f"{SLIDE_ID}_HE.jpg")
    markers = Markers(array.truth_x[rows], array.truth_y[rows], code[rows])
    renderer = Renderer(array.scene, array.width, array.height, array.mpp, seed=image_seed(seed, SLIDE_ID))
    write_image(image_path, renderer, markers, "jpeg", quality=92)
    return image_path
