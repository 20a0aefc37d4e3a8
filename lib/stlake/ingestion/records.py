"""The records that flow through the pipeline: what discovery finds, what a reader returns.

Data flows one way: ``SlideRef`` (discovery, cheap) -> ``SlideRecord`` (a reader, per slide) ->
work units (planner) -> Parquet files + Delta add actions (Spark tasks) -> one commit per table.
"""
from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import pyarrow as pa

#: Count-matrix formats (one module each in :mod:`stlake.ingestion.matrices`).
MatrixKind = Literal["dense_csv", "tenx_h5", "tenx_mtx", "st_tsv", "h5ad"]


#: Where in the run a slide was judged: discovery (its manifest entry or scanned folder), its reader and
#: planner, its tile units or its expression units.
Stage = Literal["discover", "read", "tiles", "expression"]
#: ``error``: the slide does not land; ``warning``: it lands, and the row says what was off.
Severity = Literal["error", "warning"]
#: A reader's or planner's remark on a slide that still lands: (reason, detail).
Remark = tuple[str, str]


#: "line 3", "column 2", "byte 17" in a parser's message: where it failed (kept in details).
POSITION_PHRASE = re.compile(r"\b(line|row|column|col|char|position|offset|byte)s?\s+(\d+)\b", re.IGNORECASE)
#: "Expected 6 fields in line 3, saw 7" (pandas) / "Expected 6 columns, got 7" (Arrow): what is wrong.
FIELD_COUNT_PHRASE = re.compile(r"\bexpected\s+(\d+)\s+(fields|columns)\b.*?\b(?:saw|got)\s+(\d+)\b",
                                re.IGNORECASE)


def _error_kind(error: BaseException) -> str:
    """What kind of failure ``error`` is, in words that cannot quote the input."""
    if isinstance(error, UnicodeError):
        return "text is not valid UTF-8"
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        return "compressed data ends early or is corrupt"
    if isinstance(error, OSError):
        return error.strerror if isinstance(error.strerror, str) and error.strerror else str(error)
    if isinstance(error, KeyError):
        return "a required dataset or field is missing"
    if isinstance(error, IndexError):
        return "an index is out of range"
    if isinstance(error, pa.ArrowException):
        return "malformed data"
    return "malformed value"


def describe_input_error(error: BaseException) -> str:
    """A parser's or reader's exception for a ``rejects`` detail: kind, type and position, never its message.

    Messages of pandas, pyarrow, the codecs and ``float()``/``int()`` quote the line or value they choke on,
    and ``rejects`` is readable by everyone who can read the lake; so only the kind of failure, the
    exception type, field counts and positions found in the message are kept, e.g.
    ``malformed data (ParserError: expected 6 fields, found 7 at line 3)``. ``OSError`` keeps the I/O
    layer's message (it names paths and conditions, not data).
    """
    message = str(error)
    what = [f"expected {m[1]} {m[2].lower()}, found {m[3]}" for m in FIELD_COUNT_PHRASE.finditer(message)][:1]
    if isinstance(error, UnicodeDecodeError):
        what.append(f"not {error.encoding} text")
    where = list(dict.fromkeys(f"{m[1].lower()} {m[2]}" for m in POSITION_PHRASE.finditer(message)))
    if isinstance(error, OSError):
        where = []  # the message is kept whole: no need to mine it
    detail = type(error).__name__ + (f": {'; '.join(what)}" if what else "")
    at = f" at {', '.join(where)}" if where else ""
    return f"{_error_kind(error)} ({detail}{at})"


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
    """Spots of one slide as parallel numpy arrays, coordinates in pixels of the image that is tiled.

    Pickled (into a task, back to the driver) as one small Parquet buffer (:func:`pack_spots`), about
    0.5-13 bytes a spot instead of ~50; an unpickled ``Spots`` decodes it on first use of a column, so
    the driver, which mostly needs only ``len``, holds the buffer and not the arrays.
    """

    spot_id: np.ndarray  # str (object) array, unique within the slide
    x: np.ndarray  # float64, column of the spot centre
    y: np.ndarray  # float64, row of the spot centre
    in_tissue: np.ndarray  # bool
    array_row: np.ndarray  # int32, -1 when unknown
    array_col: np.ndarray  # int32, -1 when unknown
    label: np.ndarray  # object array of str or None: the chosen annotation set's normalised label
    #: raw labels, one column per annotation set (``SlideRecord.label_sets`` order), None where a spot has none
    #: (a factory, not ``= None``: a class attribute would hide the field of a packed ``Spots`` from ``__getattr__``)
    annotations: Optional[np.ndarray] = field(default_factory=lambda: None)

    def __len__(self) -> int:
        packed = self.__dict__.get("_packed")
        return packed.n if packed is not None else len(self.spot_id)

    def take(self, index: np.ndarray) -> Spots:
        """The spots at ``index`` (int positions or bool mask), same order."""
        taken: dict[str, Any] = {name: None if getattr(self, name) is None else getattr(self, name)[index]
                                 for name in SPOT_FIELDS}
        return Spots(**taken)

    def label_columns(self) -> np.ndarray:
        """``annotations`` as an (n, sets) object array (no column when there are no sets)."""
        return np.empty((len(self), 0), dtype=object) if self.annotations is None else self.annotations

    def __reduce__(self) -> tuple[Any, ...]:
        packed = self.__dict__.get("_packed") or pack_spots(self)
        if packed is None:  # values Arrow cannot hold as strings: plain pickle
            return (Spots, tuple(getattr(self, name) for name in SPOT_FIELDS))
        return (_packed_spots, (packed,))

    if not TYPE_CHECKING:  # mypy keeps checking attribute names
        def __getattr__(self, name: str) -> Any:
            """A column of a packed ``Spots``: all of them are decoded on first use (and the buffer dropped)."""
            packed = self.__dict__.get("_packed")
            if packed is None or name not in SPOT_FIELDS:
                raise AttributeError(name)
            self.__dict__.update(unpack_spots(packed))
            del self.__dict__["_packed"]
            return self.__dict__[name]


SPOT_FIELDS = ("spot_id", "x", "y", "in_tissue", "array_row", "array_col", "label", "annotations")
#: Parquet encodings of packed spots: ids share long prefixes (``s_002um_00084_00128-1``), grid
#: positions step evenly; labels repeat (dictionary).
_PACK_ENCODINGS = {"spot_id": "DELTA_BYTE_ARRAY", "array_row": "DELTA_BINARY_PACKED",
                   "array_col": "DELTA_BINARY_PACKED"}


@dataclass(frozen=True)
class PackedSpots:
    """``Spots`` as one zstd Parquet buffer (``n`` spots, ``sets`` annotation columns, None: no annotations)."""

    data: bytes
    n: int
    sets: Optional[int]


def pack_spots(spots: Spots) -> Optional[PackedSpots]:
    """``spots`` as a Parquet buffer; None when a text column holds values that are not strings."""
    import pyarrow.parquet as pq

    columns = spots.label_columns()
    try:
        table = pa.table({"spot_id": pa.array(spots.spot_id, pa.string()), "x": spots.x, "y": spots.y,
                          "in_tissue": spots.in_tissue, "array_row": spots.array_row, "array_col": spots.array_col,
                          "label": pa.array(spots.label, pa.string()),
                          **{f"set{j}": pa.array(columns[:, j], pa.string()) for j in range(columns.shape[1])}})
    except (pa.ArrowException, TypeError, ValueError):
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=9, write_statistics=False, store_schema=False,
                   use_dictionary=[name for name in table.column_names if name not in _PACK_ENCODINGS
                                   and name not in ("x", "y")],
                   column_encoding=_PACK_ENCODINGS)
    return PackedSpots(sink.getvalue().to_pybytes(), len(table),
                       None if spots.annotations is None else columns.shape[1])


def unpack_spots(packed: PackedSpots) -> dict[str, Optional[np.ndarray]]:
    """The columns of a packed ``Spots`` as numpy arrays (text as object arrays of str or None)."""
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(packed.data))
    arrays: dict[str, Optional[np.ndarray]] = {name: table.column(name).to_numpy(zero_copy_only=False)
                                               for name in table.column_names}
    sets = [arrays.pop(f"set{j}") for j in range(packed.sets or 0)]
    object_columns = np.empty((packed.n, len(sets)), dtype=object)
    for j, values in enumerate(sets):
        object_columns[:, j] = values
    for name in ("spot_id", "label"):
        arrays[name] = np.asarray(arrays[name], dtype=object)
    arrays["annotations"] = None if packed.sets is None else object_columns
    return arrays


def _packed_spots(packed: PackedSpots) -> Spots:
    """An unpickled ``Spots``: holds ``packed`` until a column is used."""
    spots = object.__new__(Spots)
    spots.__dict__["_packed"] = packed
    return spots


@dataclass(frozen=True)
class LabelSet:
    """One annotation set of a slide: a file or an ``obs`` column of labels.

    ``name`` is the set's name in ``annotations.set`` (see :mod:`stlake.ingestion.readers.labels`),
    ``source_uri`` the file it came from, ``vocabulary`` maps each raw label of the set to its normalised
    label (None: unknown under a strict label map, or mapped to nothing); it is filled by the planner.
    """

    name: str
    source_uri: str
    vocabulary: dict[str, Optional[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpressionSource:
    """Where a slide's counts live and how to read them.

    kind: ``dense_csv`` (rows = spots, first column = spot id, header = genes; ``sep`` option),
    ``tenx_h5`` (10x HDF5 CSC matrix), ``tenx_mtx`` (10x matrix folder), ``st_tsv`` (legacy ST counts,
    rows = ``{x}x{y}`` spots, optionally gzipped), ``h5ad`` (an AnnData matrix; ``matrix`` and ``var``
    options). Row ids of the source are the ``spot_id`` values of
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
    label_sets: list[LabelSet] = field(default_factory=list)  # columns of ``spots.annotations``, in order
    unexpressed: list[str] = field(default_factory=list)  # spots the matrix has no row for, dropped by the planner
