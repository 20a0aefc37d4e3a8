"""A whole synthetic dataset: :func:`generate` runs the layout writers and writes ``manifest.csv``.

``{out_dir}/``
  ``stimage/``   an STimage-1K4M release (one slide per technology, plus broken slides with ``corrupt``)
  ``visium/{visium_1,visium_2}/``   Space Ranger outputs (h5 + full-res TIFF; MTX + hires PNG only)
  ``visiumhd/visiumhd_1/``          Space Ranger HD ``binned_outputs/square_{002,008,016}um`` + ``image.tif``
  ``st/st_1/``                      legacy ST: counts TSV.gz, spot detector TSV, H&E JPEG
  ``truth/{slide_id}.npz``          ground truth (:mod:`stlake.synth.truth`)
  ``manifest.csv``                  one row per slide (paths relative to ``out_dir``)
"""
from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Union

import pandas as pd

from stlake.synth.expression import gene_universe
from stlake.synth.formats import ensure_dir, open_text
from stlake.synth.specs import CORRUPT_SLIDES, Sizes, get_sizes
from stlake.synth.truth import truth_path
from stlake.synth.writers import WRITERS, DatasetJob, SlideInfo

logger = logging.getLogger(__name__)

LAYOUTS = tuple(WRITERS)
#: The layout whose folder holds the broken slides of ``corrupt=True``.
CORRUPT_LAYOUT = "stimage"
MANIFEST_COLUMNS = ("slide_id", "layout", "technology", "path", "species", "tissue", "image", "coords", "counts",
                    "annotation", "annotation_columns")


def generate(out_dir: str, size: Union[str, Sizes] = "small", seed: int = 0,
             layouts: Sequence[str] = LAYOUTS, corrupt: bool = False) -> dict[str, Any]:
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
    layouts = _checked_layouts(layouts)
    sizes = get_sizes(size)
    out_dir = os.path.abspath(out_dir)
    ensure_dir(out_dir)
    job = DatasetJob(out_dir, sizes, gene_universe(sizes.n_genes, seed), seed, layouts, corrupt)
    rewritten = list(layouts) + ([CORRUPT_LAYOUT] if corrupt else [])
    infos: list[SlideInfo] = []
    for number, layout in enumerate(layout for layout in WRITERS if layout in rewritten):
        written = WRITERS[layout](job)
        logger.info("[%d/%d] %s: wrote %s (%.0f s)", number + 1, len(rewritten), layout,
                    ", ".join(info.slide_id for info in written) or "no slides", time.perf_counter() - started)
        infos += written
    manifest = write_manifest(out_dir, infos, rewritten)
    summary = _summary(job, infos, manifest)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    logger.info("wrote %d slides (%s) to %s in %.1f s", len(infos), ", ".join(layouts), out_dir, summary["seconds"])
    return summary


def _checked_layouts(layouts: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``layouts`` as a tuple (a lone name allowed); unknown names raise ``ValueError``."""
    if isinstance(layouts, str):
        layouts = (layouts,)
    unknown = [layout for layout in layouts if layout not in WRITERS]
    if unknown:
        raise ValueError(f"unknown layout(s) {', '.join(unknown)} (expected {', '.join(WRITERS)})")
    return tuple(layouts)


def _summary(job: DatasetJob, infos: Sequence[SlideInfo], manifest: str) -> dict[str, Any]:
    valid = [i for i in infos if i.slide_id not in CORRUPT_SLIDES]
    return {
        "out_dir": job.out_dir, "size": job.sizes.name, "seed": job.seed, "layouts": job.layouts,
        "slides": {layout: [i.slide_id for i in valid if i.layout == layout] for layout in job.layouts},
        "corrupt": {i.slide_id: CORRUPT_SLIDES[i.slide_id] for i in infos if i.slide_id in CORRUPT_SLIDES},
        "technology": {i.slide_id: i.technology for i in infos},
        "paths": {i.slide_id: i.path for i in infos},
        "images": {i.slide_id: i.image_path for i in infos},
        "truth": {i.slide_id: truth_path(job.out_dir, i.slide_id) for i in valid},
        "n_spots": {i.slide_id: i.n_spots for i in infos},
        "n_positions": {i.slide_id: i.n_positions for i in infos},
        "n_genes": {i.slide_id: len(i.truth.gene_names) for i in valid if i.truth is not None},
        "manifest": manifest,
    }


def write_manifest(out_dir: str, infos: Sequence[SlideInfo], rewritten: Sequence[str]) -> str:
    """``manifest.csv``: the slides of ``infos`` plus earlier rows of layouts not in ``rewritten`` that still exist."""
    path = os.path.join(out_dir, "manifest.csv")
    rows = {info.slide_id: [info.slide_id, info.layout, info.technology, os.path.relpath(info.path, out_dir),
                            info.species, info.tissue, "", "", "", "", info.annotation_columns] for info in infos}
    if os.path.exists(path):
        earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
        for row in earlier.to_dict("records"):
            if (row.get("layout") not in rewritten and row.get("slide_id") not in rows
                    and os.path.exists(os.path.join(out_dir, row.get("path", "")))):
                rows[str(row["slide_id"])] = [str(row.get(c, "")) for c in MANIFEST_COLUMNS]
    with open_text(path, gz=False) as text:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for slide_id in sorted(rows):
            writer.writerow(rows[slide_id])
    return path
