"""10x matrix folders (``tenx_mtx``): ``matrix.mtx``, ``features.tsv`` (or ``genes.tsv``), ``barcodes.tsv``.

Each file may be gzipped. The MatrixMarket file is a coordinate list (feature, barcode, value;
1-based). These matrices are small, so a folder is one chunk, read whole. The entry lines are parsed
by ``pyarrow.csv`` rather than ``scipy.io.mmread`` so that entry count, value type and indices are
checked here and the entries go through the same numpy mapping and validation as the HDF5 format
(sorted by barcode, cut into batches of consecutive barcodes).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from stlake.ingestion.matrices.batch import ExprChunk, ExprPlan, SparseBatch, row_ranges
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.tenx import GENE_EXPRESSION, csc_batch, gene_plan, local_columns
from stlake.ingestion.records import ExpressionSource, SlideError
from stlake.lake import storage

MATRIX_FILES = ("matrix.mtx.gz", "matrix.mtx")
FEATURE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")


def _mtx_file(folder: str, *names: str) -> str:
    """The first of ``names`` present in ``folder``."""
    present = set(storage.list_dir(folder))
    for name in names:
        if name in present:
            return storage.join(folder, name)
    raise SlideError("expression_unreadable", f"none of {', '.join(names)} in {folder}")


def _tsv_columns(uri: str) -> list[list[str]]:
    """Columns of a small header-less TSV file."""
    text = storage.read_decompressed(uri).decode("utf-8")
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
    first = data[:data.find(b"\n")].decode("ascii", errors="replace").lower().split()
    if len(first) < 5 or first[0] != "%%matrixmarket" or first[2] != "coordinate":
        raise SlideError("expression_unreadable", f"not a MatrixMarket coordinate matrix: {uri}")
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        line = data[position:len(data) if end < 0 else end].strip()
        position = len(data) if end < 0 else end + 1
        if line and not line.startswith(b"%"):
            n_rows, n_cols, n_entries = (int(v) for v in line.split()[:3])
            return first[3], (n_rows, n_cols, n_entries), position
    raise SlideError("expression_unreadable", f"MatrixMarket file without a size line: {uri}")


def _mtx_entries(data: bytes, offset: int, field: str, n_entries: int,
                 uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature, barcode, value) of every entry line from ``offset`` on, 1-based as written."""
    value_type = pa.int64() if field == "integer" else pa.float64()
    table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(memoryview(data)[offset:])),
                           read_options=pacsv.ReadOptions(column_names=["f", "b", "v"]),
                           parse_options=pacsv.ParseOptions(delimiter=" "),
                           convert_options=pacsv.ConvertOptions(column_types={"f": pa.int64(), "b": pa.int64(),
                                                                              "v": value_type}))
    if table.num_rows != n_entries or any(column.null_count for column in table.columns):
        raise SlideError("expression_unreadable", f"{uri}: expected {n_entries} entries, read {table.num_rows}")
    features, cols, values = (table.column(name).to_numpy() for name in ("f", "b", "v"))
    return features, cols, values


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
        raise SlideError("expression_unreadable", f"MatrixMarket field {field!r} has no counts: {uri}")
    barcodes = np.array(_tsv_columns(_mtx_file(src.uri, *BARCODE_FILES))[0], dtype=object)
    if len(barcodes) != n_barcodes:
        raise SlideError("expression_unreadable", f"{uri} has {n_barcodes} columns but there are "
                                                  f"{len(barcodes)} barcodes")
    features, cols, values = _mtx_entries(data, offset, field, n_entries, uri)
    if len(cols) and (cols.min() < 1 or cols.max() > n_barcodes):
        raise SlideError("expression_unreadable", f"barcode index out of range in {uri}")
    order = np.argsort(cols, kind="stable")
    features, cols, values = features[order] - 1, cols[order] - 1, values[order]
    lookup = local_columns(expr_plan, n_features)
    for b0, b1 in row_ranges(chunk.start, chunk.stop):
        bounds = np.searchsorted(cols, np.arange(b0, b1 + 1))
        p0, p1 = int(bounds[0]), int(bounds[-1])
        yield csc_batch(barcodes[b0:b1], bounds - p0, features[p0:p1], values[p0:p1], lookup, expr_plan.genes, uri)


FORMAT = MatrixFormat("tenx_mtx", plan, read, ("matrix",))
