"""10x matrix folders (``tenx_mtx``): ``matrix.mtx``, ``features.tsv`` (or ``genes.tsv``), ``barcodes.tsv``.

Each file may be gzipped. The MatrixMarket file is a coordinate list (feature, barcode, value;
1-based). These matrices are small, so a folder is one chunk, read whole. The entry lines are parsed
by ``pyarrow.csv`` rather than ``scipy.io.mmread`` so that entry count, value type and indices are
checked here and the entries go through the same numpy mapping and validation as the HDF5 format
(sorted by barcode, cut into batches of consecutive barcodes).

Errors name the file, the line (and field) or barcode and feature, and the kind of problem, never a
value or a line (:mod:`.errors`): pyarrow's message quotes the row it chokes on, so a failed parse is
located again by scanning the lines. ``features.tsv`` and ``barcodes.tsv`` must be UTF-8.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from stlake.ingestion.matrices.batch import ExprChunk, ExprPlan, SparseBatch, row_ranges
from stlake.ingestion.matrices.errors import decode_text, line_number
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.tenx import GENE_EXPRESSION, csc_batch, gene_plan, local_columns
from stlake.ingestion.records import ExpressionSource, SlideError
from stlake.lake import storage

MATRIX_FILES = ("matrix.mtx.gz", "matrix.mtx")
FEATURE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")
#: MatrixMarket value fields (banner keywords, safe to name in messages); only the first two hold counts.
VALUE_FIELDS = ("integer", "real", "complex", "pattern")
ENTRY_FIELDS = ("feature index", "barcode index", "value")
_INTEGER = re.compile(rb"[+-]?\d+")
_NUMBER = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE)


def _mtx_file(folder: str, *names: str) -> str:
    """The first of ``names`` present in ``folder``."""
    present = set(storage.list_dir(folder))
    for name in names:
        if name in present:
            return storage.join(folder, name)
    raise SlideError("expression_unreadable", f"none of {', '.join(names)} in {folder}")


def _tsv_columns(uri: str) -> list[list[str]]:
    """Columns of a small header-less TSV file."""
    text = decode_text(storage.read_decompressed(uri), uri)
    lines = [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]
    width = max((len(line) for line in lines), default=0)
    return [[line[j].strip() if j < len(line) else "" for line in lines] for j in range(width)]


def _mtx_features(folder: str) -> tuple[list[str], list[str], list[str]]:
    """Feature ids, names and types (names = ids and types Gene Expression where columns are missing)."""
    columns = _tsv_columns(_mtx_file(folder, *FEATURE_FILES))
    if not columns:
        raise SlideError("expression_unreadable", f"empty features file in {folder}")
    ids = columns[0]
    names = columns[1] if len(columns) > 1 else ids
    types = columns[2] if len(columns) > 2 else [GENE_EXPRESSION] * len(ids)
    return ids, names, types


def _mtx_header(data: bytes, uri: str) -> tuple[str, tuple[int, int, int], int]:
    """(value field, (rows, cols, entries), offset of the first entry line) of a MatrixMarket text."""
    first = data.split(b"\n", 1)[0].decode("ascii", errors="replace").lower().split()
    if len(first) < 5 or first[0] != "%%matrixmarket" or first[2] != "coordinate":
        raise SlideError("expression_unreadable", f"{uri} line 1: not a MatrixMarket coordinate matrix banner")
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        line = data[position:len(data) if end < 0 else end].strip()
        start, position = position, len(data) if end < 0 else end + 1
        if line and not line.startswith(b"%"):
            size = line.split()
            if len(size) != 3 or not all(_INTEGER.fullmatch(v) for v in size):
                raise SlideError("expression_unreadable", f"{uri} line {line_number(data, start)}: the size line is "
                                                          "not three integers (rows, columns, entries)")
            field = first[3] if first[3] in VALUE_FIELDS else "unknown"
            return field, (int(size[0]), int(size[1]), int(size[2])), position
    raise SlideError("expression_unreadable", f"MatrixMarket file without a size line: {uri}")


def _entry_lines(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, text) of every non-empty line from ``offset`` on: pyarrow's rows."""
    number, start = line_number(data, offset), offset
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end].rstrip(b"\r")
        if line:
            yield number, line
        number, start = number + 1, end + 1


def _entry_line(data: bytes, offset: int, index: int) -> Optional[int]:
    """Line number of entry ``index`` (0-based) of the entries starting at ``offset``."""
    return next((number for i, (number, _) in enumerate(_entry_lines(data, offset)) if i == index), None)


def _field_problem(text: bytes, integer: bool) -> Optional[str]:
    """What is wrong with one field of an entry line (None: nothing)."""
    if not text:
        return "empty"
    if integer and not _INTEGER.fullmatch(text):
        return "not an integer"
    return None if integer or _NUMBER.fullmatch(text) else "not a number"


def _entry_problem(data: bytes, offset: int, integer_values: bool, uri: str) -> str:
    """Where the first malformed entry line is and what is wrong with it (never its text)."""
    for number, line in _entry_lines(data, offset):
        fields = line.split(b" ")
        if len(fields) != len(ENTRY_FIELDS):
            return (f"{uri} line {number}: wrong number of fields: {len(fields)}, expected {len(ENTRY_FIELDS)} "
                    f"({', '.join(ENTRY_FIELDS)})")
        for k, (name, text) in enumerate(zip(ENTRY_FIELDS, fields)):
            problem = _field_problem(text, k < 2 or integer_values)
            if problem:
                return f"{uri} line {number}, field {k + 1} ({name}): {problem}"
    return f"{uri}: malformed entry lines (line {line_number(data, offset)} or below)"


def _mtx_entries(data: bytes, offset: int, field: str, n_entries: int,
                 uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature, barcode, value) of every entry line from ``offset`` on, 1-based as written."""
    value_type = pa.int64() if field == "integer" else pa.float64()
    try:
        table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(memoryview(data)[offset:])),
                               read_options=pacsv.ReadOptions(column_names=["f", "b", "v"]),
                               parse_options=pacsv.ParseOptions(delimiter=" "),
                               convert_options=pacsv.ConvertOptions(column_types={"f": pa.int64(), "b": pa.int64(),
                                                                                  "v": value_type}))
    except pa.ArrowInvalid:
        raise SlideError("expression_unreadable", _entry_problem(data, offset, field == "integer", uri)) from None
    if any(column.null_count for column in table.columns):
        raise SlideError("expression_unreadable", _entry_problem(data, offset, field == "integer", uri))
    if table.num_rows != n_entries:
        raise SlideError("expression_unreadable", f"{uri}: expected {n_entries} entries, read {table.num_rows}")
    features, cols, values = (table.column(name).to_numpy() for name in ("f", "b", "v"))
    return features, cols, values


def _check_indices(data: bytes, offset: int, indices: tuple[np.ndarray, np.ndarray], limits: tuple[int, int],
                   uri: str) -> None:
    """Feature and barcode indices (1-based) within ``1..limit``; else an error naming the entry's line."""
    for k, (values, limit) in enumerate(zip(indices, limits)):
        bad = np.flatnonzero((values < 1) | (values > limit))
        if len(bad):
            line = _entry_line(data, offset, int(bad[0]))
            raise SlideError("expression_unreadable", f"{uri} line {line}, field {k + 1} ({ENTRY_FIELDS[k]}): "
                                                      f"out of range 1..{limit}")


def plan(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Features and barcode count; one chunk (these matrices are small)."""
    ids, names, types = _mtx_features(src.uri)
    barcodes = _tsv_columns(_mtx_file(src.uri, *BARCODE_FILES))
    n_barcodes = len(barcodes[0]) if barcodes else 0
    genes, ensembl, symbols, rows = gene_plan(ids, names, types)
    chunks = [ExprChunk("matrix", 0, n_barcodes)] if n_barcodes else []
    return ExprPlan(genes, ensembl, symbols, chunks, n_barcodes, columns=rows)


def read(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The whole matrix, sorted by barcode, in batches of consecutive barcodes."""
    uri = _mtx_file(src.uri, *MATRIX_FILES)
    data = storage.read_decompressed(uri)
    field, (n_features, n_barcodes, n_entries), offset = _mtx_header(data, uri)
    if field not in ("integer", "real"):
        raise SlideError("expression_unreadable", f"{uri} line 1: MatrixMarket field {field!r} has no counts")
    barcode_columns = _tsv_columns(_mtx_file(src.uri, *BARCODE_FILES))
    barcodes = np.array(barcode_columns[0] if barcode_columns else [], dtype=object)
    if len(barcodes) != n_barcodes:
        raise SlideError("expression_unreadable", f"{uri} has {n_barcodes} columns but there are "
                                                  f"{len(barcodes)} barcodes")
    features, cols, values = _mtx_entries(data, offset, field, n_entries, uri)
    _check_indices(data, offset, (features, cols), (n_features, n_barcodes), uri)
    order = np.argsort(cols, kind="stable")
    features, cols, values = features[order] - 1, cols[order] - 1, values[order]
    if expr_plan.columns is not None and len(expr_plan.columns) and int(expr_plan.columns.max()) >= n_features:
        raise SlideError("expression_unreadable", f"{uri} has {n_features} rows but the features file lists "
                                                  f"more genes")
    lookup = local_columns(expr_plan, n_features)
    for b0, b1 in row_ranges(chunk.start, chunk.stop):
        bounds = np.searchsorted(cols, np.arange(b0, b1 + 1))
        p0, p1 = int(bounds[0]), int(bounds[-1])
        yield csc_batch(barcodes[b0:b1], bounds - p0, features[p0:p1], values[p0:p1], lookup, expr_plan.genes, uri,
                        b0)


def row_ids(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> np.ndarray:
    """The spot ids of the chunk's barcodes, in order (the barcodes file only)."""
    columns = _tsv_columns(_mtx_file(src.uri, *BARCODE_FILES))
    return np.array(columns[0][chunk.start:chunk.stop] if columns else [], dtype=object)


FORMAT = MatrixFormat("tenx_mtx", plan, read, ("matrix",), row_ids)
