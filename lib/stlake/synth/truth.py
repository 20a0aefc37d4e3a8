"""Ground truth of a synthetic slide, saved next to the data as ``{out_dir}/truth/{slide_id}.npz``.

Spots are listed in the order of the slide's coordinate file (Space Ranger positions, STimage coords,
ST counts rows). ``x``/``y`` are integer pixel centres in the image the reader should tile (``image_path``);
for a Visium slide with only ``tissue_hires_image.png`` that is ``round(full-res * tissue_hires_scalef)``.
``counts`` rows align with the spots; spots that are not in the written matrix (Visium / VisiumHD spots
outside the tissue) have empty rows. ``code`` is the number drawn in the spot's marker (its index within
the slide's coordinate file), -1 for spots without a marker (VisiumHD bins: only one bin in 4 x 4 is
marked, as a 14-px marker nearly fills a 16-px bin). Paths are stored relative to ``out_dir`` and returned absolute.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp

from stlake.synth.formats import write_npz
from stlake.synth.image import DOMAINS

TRUTH_DIR = "truth"


@dataclass
class Truth:
    """What a reader should find in one synthetic slide (see the module docstring)."""

    slide_id: str
    layout: str
    technology: str
    spot_id: np.ndarray  # str
    x: np.ndarray  # int64 column of the spot centre in image_path
    y: np.ndarray  # int64 row
    code: np.ndarray  # int64 marker code
    gene_names: list[str]  # as written in the source (symbols, Ensembl ids, versioned ids)
    counts: sp.csr_matrix  # spots x genes int64
    labels: Optional[np.ndarray]  # str annotation per spot, None when the slide has no annotation
    domain: np.ndarray  # int8 index into DOMAINS
    image_path: str
    in_tissue: np.ndarray  # bool
    spot_diameter_px: float = 0.0  # in pixels of image_path
    microns_per_pixel: float = 0.0  # of image_path
    image_width: int = 0
    image_height: int = 0
    gene_ids: list[str] = field(default_factory=list)  # Ensembl ids (unversioned) of gene_names
    gene_symbols: list[str] = field(default_factory=list)  # symbols of gene_names
    unmatched_counts: list[str] = field(default_factory=list)  # ST: counts rows without a detector spot
    unmatched_detector: list[str] = field(default_factory=list)  # ST: selected detector spots without counts
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. VisiumHD 16 µm bins ("bin016_*")
    domain_names: tuple[str, ...] = DOMAINS

    def __len__(self) -> int:
        return len(self.spot_id)

    def take(self, index: np.ndarray) -> Truth:
        """The truth restricted to spots ``index`` (positions or bool mask), same order."""
        return Truth(self.slide_id, self.layout, self.technology, self.spot_id[index], self.x[index], self.y[index],
                     self.code[index], list(self.gene_names), self.counts[index],
                     None if self.labels is None else self.labels[index], self.domain[index], self.image_path,
                     self.in_tissue[index], self.spot_diameter_px, self.microns_per_pixel, self.image_width,
                     self.image_height, list(self.gene_ids), list(self.gene_symbols), list(self.unmatched_counts),
                     list(self.unmatched_detector), dict(self.extra), self.domain_names)

    def domain_labels(self) -> np.ndarray:
        """Domain name per spot."""
        return np.asarray(self.domain_names, dtype=object)[self.domain]


def truth_path(out_dir: str, slide_id: str) -> str:
    """``{out_dir}/truth/{slide_id}.npz``."""
    return os.path.join(out_dir, TRUTH_DIR, f"{slide_id}.npz")


def _str_array(values: Iterable[object]) -> np.ndarray:
    strings = [str(v) for v in values]
    return np.array(strings, dtype=np.str_) if strings else np.zeros(0, dtype="<U1")


def save_truth(out_dir: str, truth: Truth) -> str:
    """Write ``truth`` to ``{out_dir}/truth/{slide_id}.npz``; returns the path."""
    path = truth_path(out_dir, truth.slide_id)
    counts = sp.csr_matrix(truth.counts)
    image = os.path.relpath(truth.image_path, out_dir) if os.path.isabs(truth.image_path) else truth.image_path
    arrays = {
        "slide_id": np.array(truth.slide_id), "layout": np.array(truth.layout),
        "technology": np.array(truth.technology), "spot_id": _str_array(truth.spot_id),
        "x": np.asarray(truth.x, np.int64), "y": np.asarray(truth.y, np.int64),
        "code": np.asarray(truth.code, np.int64),
        "gene_names": _str_array(truth.gene_names), "gene_ids": _str_array(truth.gene_ids),
        "gene_symbols": _str_array(truth.gene_symbols),
        "counts_data": counts.data.astype(np.int64), "counts_indices": counts.indices.astype(np.int64),
        "counts_indptr": counts.indptr.astype(np.int64), "counts_shape": np.array(counts.shape, np.int64),
        "domain": np.asarray(truth.domain, np.int8), "image_path": np.array(image),
        "in_tissue": np.asarray(truth.in_tissue, bool),
        "spot_diameter_px": np.array(float(truth.spot_diameter_px)),
        "microns_per_pixel": np.array(float(truth.microns_per_pixel)),
        "image_size": np.array([truth.image_width, truth.image_height], np.int64),
        "unmatched_counts": _str_array(truth.unmatched_counts),
        "unmatched_detector": _str_array(truth.unmatched_detector),
        "domain_names": _str_array(truth.domain_names),
    }
    if truth.labels is not None:
        arrays["labels"] = _str_array(["" if v is None else v for v in truth.labels])
    for key, value in truth.extra.items():
        value = np.asarray(value)
        arrays[f"extra__{key}"] = _str_array(value) if value.dtype.kind in "OUS" else value
    write_npz(path, arrays)
    return path


def load_truth(out_dir: str, slide_id: str) -> Truth:
    """The truth of ``slide_id`` written by :func:`stlake.synth.generate` into ``out_dir``."""
    path = truth_path(out_dir, slide_id)
    with np.load(path, allow_pickle=False) as data:
        d = {k: data[k] for k in data.files}
    counts = sp.csr_matrix((d["counts_data"], d["counts_indices"], d["counts_indptr"]),
                           shape=tuple(int(v) for v in d["counts_shape"]))
    image = str(d["image_path"])
    labels = d["labels"].astype(object) if "labels" in d else None
    if labels is not None:
        labels[labels == ""] = None
    extra = {k[len("extra__"):]: (v.astype(object) if v.dtype.kind == "U" else v)
             for k, v in d.items() if k.startswith("extra__")}
    width, height = (int(v) for v in d["image_size"])
    return Truth(
        slide_id=str(d["slide_id"]), layout=str(d["layout"]), technology=str(d["technology"]),
        spot_id=d["spot_id"].astype(object), x=d["x"], y=d["y"], code=d["code"],
        gene_names=d["gene_names"].tolist(), counts=counts, labels=labels, domain=d["domain"],
        image_path=image if os.path.isabs(image) else os.path.normpath(os.path.join(out_dir, image)),
        in_tissue=d["in_tissue"], spot_diameter_px=float(d["spot_diameter_px"]),
        microns_per_pixel=float(d["microns_per_pixel"]), image_width=width, image_height=height,
        gene_ids=d["gene_ids"].tolist(), gene_symbols=d["gene_symbols"].tolist(),
        unmatched_counts=d["unmatched_counts"].tolist(), unmatched_detector=d["unmatched_detector"].tolist(),
        extra=extra, domain_names=tuple(d["domain_names"].tolist()))
