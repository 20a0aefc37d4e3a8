"""Synthetic slide writers, one module per input layout (the counterparts of ``stlake.ingestion.readers``).

Each writer takes a :class:`DatasetJob` and rewrites its layout's folder under ``job.out_dir``,
returning a :class:`SlideInfo` per slide written. ``WRITERS`` lists them by layout name, in the order
``generate`` writes them; it must name the same layouts as ``stlake.ingestion.readers.READERS``.
"""
from __future__ import annotations

from collections.abc import Callable

from stlake.synth.writers import anndata, hest, st, stimage, visium, visiumhd
from stlake.synth.writers.common import DatasetJob, SlideInfo

LayoutWriter = Callable[[DatasetJob], list[SlideInfo]]

WRITERS: dict[str, LayoutWriter] = {
    stimage.LAYOUT: stimage.write,
    visium.LAYOUT: visium.write,
    visiumhd.LAYOUT: visiumhd.write,
    st.LAYOUT: st.write,
    hest.LAYOUT: hest.write,
    anndata.LAYOUT: anndata.write,
}

__all__ = ["WRITERS", "DatasetJob", "LayoutWriter", "SlideInfo"]
