"""Slide readers, one module per input layout: ``SlideRef`` -> ``SlideRecord``.

Readers read coordinates, annotations, scale factors and small metadata only; they never decode the
image and never read the expression matrix (the legacy ST reader reads the counts file's first column).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from stlake.ingestion.readers import st, stimage, visium, visiumhd
from stlake.ingestion.readers.common import ReaderOptions
from stlake.ingestion.records import SlideRecord, SlideRef

READERS: dict[str, Callable[[SlideRef, Optional[ReaderOptions]], SlideRecord]] = {
    "stimage": stimage.read,
    "visium": visium.read,
    "visiumhd": visiumhd.read,
    "st": st.read,
}

__all__ = ["READERS", "ReaderOptions", "layout_names", "read_slide"]


def layout_names() -> tuple[str, ...]:
    """The names of every registered input layout, in registry order."""
    return tuple(READERS)


def read_slide(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one slide with the reader of its layout; bad input raises ``SlideError``."""
    try:
        reader = READERS[ref.layout]
    except KeyError:
        raise ValueError(f"unknown layout {ref.layout!r} for slide {ref.slide_id} "
                         f"(expected one of {', '.join(READERS)})") from None
    return reader(ref, options or ReaderOptions())
