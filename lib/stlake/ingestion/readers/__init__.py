"""Slide readers, one module per input layout: ``SlideRef`` -> ``SlideRecord``.

Each reader module declares its layout once (``LAYOUT``, see :mod:`.layout`); ``LAYOUTS`` below is the
registry built from those declarations, in the order discovery tries them on a scanned folder.
Adding a layout is one new module and one line here (docs/architecture.md lists the steps).

Readers read coordinates, annotations, scale factors and small metadata only; they never decode the
image and never read the expression matrix (the legacy ST reader reads the counts file's first column).
"""
from __future__ import annotations

from typing import Optional

from stlake.ingestion.readers import anndata, hest, labels, st, stimage, visium, visiumhd
from stlake.ingestion.readers.common import ReaderOptions
from stlake.ingestion.readers.layout import Layout
from stlake.ingestion.records import SlideError, SlideRecord, SlideRef, describe_input_error

#: The registry: layout name -> its declaration. An STimage release is recognised before the
#: Space Ranger folders it could contain; a HEST-1k root or sample
#: holds ``.h5ad`` files, and any other folder holding them is AnnData, so ``anndata`` comes last.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    stimage.LAYOUT,
    visium.LAYOUT,
    visiumhd.LAYOUT,
    st.LAYOUT,
    hest.LAYOUT,
    anndata.LAYOUT,
)}

#: What a reader raises on values it cannot use; other exceptions (AttributeError, NameError...) are bugs.
INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, UnicodeError)

__all__ = ["LAYOUTS", "Layout", "ReaderOptions", "get_layout", "layout_names", "read_slide", "roles",
           "technologies"]


def layout_names() -> tuple[str, ...]:
    """The names of every registered input layout, in registry order."""
    return tuple(LAYOUTS)


def technologies() -> tuple[str, ...]:
    """Every technology some layout can hold, in registry order."""
    return tuple(dict.fromkeys(tech for layout in LAYOUTS.values() for tech in layout.technologies))


def roles() -> tuple[str, ...]:
    """Every file role some layout reads (the manifest's path columns)."""
    return tuple(dict.fromkeys(role for layout in LAYOUTS.values() for role in layout.roles))


def get_layout(name: str) -> Layout:
    """The declaration of layout ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r} (expected one of {', '.join(LAYOUTS)})") from None


def read_slide(ref: SlideRef, options: Optional[ReaderOptions] = None) -> SlideRecord:
    """Read one slide with the reader of its layout, its labels normalised; bad input raises ``SlideError``.

    Readers name what is wrong themselves; a value error they did not foresee still becomes
    ``SlideError('input_unreadable')`` naming the slide's files, never an internal error.
    """
    try:
        layout = get_layout(ref.layout)
    except ValueError as error:
        raise ValueError(f"slide {ref.slide_id}: {error}") from None
    options = options or ReaderOptions()
    try:
        record = layout.read(ref, options)
    except SlideError:
        raise
    except INPUT_ERRORS as error:
        files = ", ".join(f"{role} {path}" for role, path in ref.paths.items())
        raise SlideError("input_unreadable", f"the {ref.layout} reader could not use the files of slide "
                                             f"{ref.slide_id} ({describe_input_error(error)}): {files}") from error
    return labels.finish(record, options.label_set, options.label_map, options.strict_labels)
