"""Write the QC PNGs of a slide and of the lake's rejects into a folder."""
from __future__ import annotations

import os
from typing import Optional

from stlake.lake import tables
from stlake.qc import figures
from stlake.qc.data import read_rejects, read_slide
from stlake.qc.mosaic import slide_mosaic


def _name(text: str) -> str:
    """``text`` when it is a safe file name part (slide and run ids are), else a hash of it."""
    return text if tables.is_safe_name(text) else tables.file_token(text)


def slide_pictures(lake: str, slide_id: str, out_dir: str, seed: int = 0) -> list[str]:
    """Write the slide's PNGs into ``out_dir``; their paths (``NoSuchSlide`` when it has not landed).

    ``<slide>_counts|label|tissue.png`` (outlines on the thumbnail), ``<slide>_tiles.png``,
    ``<slide>_counts_hist.png``.
    """
    slide = read_slide(lake, slide_id)
    canvas = slide_mosaic(slide, seed=seed)
    stem = os.path.join(out_dir, _name(slide_id))
    paths = [figures.save(figures.outline_figure(slide, canvas, by), f"{stem}_{by}.png") for by in figures.OUTLINES]
    paths.append(figures.save(figures.tiles_figure(slide, seed), f"{stem}_tiles.png"))
    paths.append(figures.save(figures.histogram_figure(slide), f"{stem}_counts_hist.png"))
    return paths


def reject_pages(lake: str, out_dir: str) -> list[str]:
    """``rejects_<run id>.png``: one page per run that has rows in ``rejects``; their paths."""
    return [figures.save(figures.rejects_figure(run, rows),
                         os.path.join(out_dir, f"rejects_{_name(run or 'none')}.png"))
            for run, rows in read_rejects(lake).items()]


def write_qc(lake: str, slide_id: Optional[str], out_dir: str, seed: int = 0) -> list[str]:
    """The slide's pictures (when ``slide_id`` is given) and the rejects pages, in ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = slide_pictures(lake, slide_id, out_dir, seed) if slide_id else []
    return paths + reject_pages(lake, out_dir)
