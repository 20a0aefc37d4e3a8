"""The records that flow through the pipeline: what discovery finds, what a reader returns.

Data flows one way: ``SlideRef`` (discovery, cheap) -> ``SlideRecord`` (a reader, per slide) ->
work units (planner) -> Parquet files + Delta add actions (Spark tasks) -> one commit per table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

#: Count-matrix formats (one module each in :mod:`stlake.ingestion.matrices`).
MatrixKind = Literal["dense_csv", "tenx_h5", "tenx_mtx", "st_tsv"]


#: Where in the run a slide was judged: discovery (its manifest entry or scanned folder), its reader and
#: planner, its tile units or its expression units.
Stage = Literal["discover", "read", "tiles", "expression"]
#: ``error``: the slide does not land; ``warning``: it lands, and the row says what was off.
Severity = Literal["error", "warning"]
#: A reader's or planner's remark on a slide that still lands: (reason, detail).
Remark = tuple[str, str]


@dataclass(frozen=True)
class Rejection:
    """Why a slide did not land (``error``) or what was off in one that did (``warning``): a ``rejects`` row."""

    stage: Stage
    reason: str  # a short code, e.g. image_unreadable
    detail: str  # a sentence saying what exactly was wrong and where
    severity: Severity = "error"


@dataclass(frozen=True)
class EntryRejection:
    """A discovered entry (manifest row or scanned folder) refused before it is read: a ``discover`` reject.

    ``slide_id`` is the entry's id as given (shortened when very long), or a placeholder such as
    ``manifest:entry-3`` or ``scan:batch1/S1`` when it has none; ``source_uri`` says where the entry is.
    """

    slide_id: str
    source_uri: Optional[str]
    rejection: Rejection


class RunError(Exception):
    """A problem that stops the whole run before any slide is read; its message is one line.

    The discovery source cannot be opened at all, or the lake path cannot hold a lake (e.g. it is a
    file). Everything else is judged per entry or per slide. The CLI prints the message as is.
    """


class SourceNotFound(RunError, FileNotFoundError):
    """The discovery source is neither a folder nor a manifest file."""


class SlideError(Exception):
    """Bad input that makes one slide unusable; the slide is written to ``rejects`` and skipped.

    ``reason`` is a short machine-friendly code (e.g. ``image_unreadable``, ``coords_outside_image``,
    ``spots_without_expression``, ``non_integer_counts``, ``negative_counts``, ``duplicate_spot_ids``),
    ``detail`` a human sentence saying what exactly was wrong and where.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def rejection(self, stage: Stage) -> Rejection:
        """This error as a ``rejects`` row of ``stage``."""
        return Rejection(stage, self.reason, self.detail)


@dataclass(frozen=True)
class SlideRef:
    """One slide as found by a manifest or a scan: ids and paths only, nothing read yet.

    ``paths`` maps a role to a local path or ``s3://`` URI: ``root`` (the slide or release folder) and
    the roles its layout declares (``Layout.roles`` in :mod:`stlake.ingestion.readers`).
    """

    slide_id: str
    layout: str
    technology: str
    paths: dict[str, str]
    species: Optional[str] = None
    tissue: Optional[str] = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Spots:
    """Spots of one slide as parallel numpy arrays, coordinates in pixels of the image that is tiled."""

    spot_id: np.ndarray  # str (object) array, unique within the slide
    x: np.ndarray  # float64, column of the spot centre
    y: np.ndarray  # float64, row of the spot centre
    in_tissue: np.ndarray  # bool
    array_row: np.ndarray  # int32, -1 when unknown
    array_col: np.ndarray  # int32, -1 when unknown
    label: np.ndarray  # object array of str or None (pathologist annotation)

    def __len__(self) -> int:
        return len(self.spot_id)

    def take(self, index: np.ndarray) -> Spots:
        """The spots at ``index`` (int positions or bool mask), same order."""
        return Spots(*(getattr(self, name)[index] for name in SPOT_FIELDS))


SPOT_FIELDS = ("spot_id", "x", "y", "in_tissue", "array_row", "array_col", "label")


@dataclass(frozen=True)
class ExpressionSource:
    """Where a slide's counts live and how to read them.

    kind: ``dense_csv`` (rows = spots, first column = spot id, header = genes; ``sep`` option),
    ``tenx_h5`` (10x HDF5 CSC matrix), ``tenx_mtx`` (10x matrix folder), ``st_tsv`` (legacy ST counts,
    rows = ``{x}x{y}`` spots, optionally gzipped). Row ids of the source are the ``spot_id`` values of
    ``Spots``.
    """

    kind: MatrixKind
    uri: str
    options: dict = field(default_factory=dict)


@dataclass
class SlideRecord:
    """Everything needed to process one slide, as returned by a reader."""

    ref: SlideRef
    image_uri: str
    spots: Spots
    spot_diameter_px: float  # in pixels of the image that is tiled
    expression: ExpressionSource
    microns_per_pixel: Optional[float] = None
    coord_scale: float = 1.0  # factor applied to full-res coordinates (e.g. tissue_hires_scalef)
    image_source: str = "fullres"  # "fullres" or "hires"
    warnings: list[Remark] = field(default_factory=list)  # go to rejects as warnings
