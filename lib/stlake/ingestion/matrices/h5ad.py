"""AnnData ``.h5ad`` count matrices (``h5ad``): ``X``, ``layers/counts`` or ``raw/X``, rows = spots (obs).

The source's ``options`` name the matrix (``matrix``: ``X``, ``layers/counts`` or ``raw/X``) and the
frame of its genes (``var``: ``var``, or ``raw/var`` for ``raw/X``); the reader chose them
(:mod:`stlake.ingestion.readers.anndata`). AnnData's on-disk encodings (``encoding-type`` attribute):

* ``array``: a dense 2-D dataset (obs x var); a chunk slices rows, a few MiB at a time.
* ``csr_matrix``: a group with ``data``, ``indices``, ``indptr`` and a ``shape`` attribute; a chunk slices
  ``indptr`` for its rows, then ``indices`` / ``data`` (the 10x HDF5 layout with obs as barcodes).
* ``csc_matrix``: the same by gene; a chunk streams ``indices`` / ``data`` in bounded blocks and keeps
  the entries of its rows (each chunk reads the whole matrix once, memory stays bounded).

Files written before anndata 0.7 (``h5sparse_format`` attribute) are read the same way. Gene names are
the ``var`` index; ``gene_ids`` (scanpy's ``read_visium``) or ``gene_id`` / ``ensembl_id`` give Ensembl
ids; when ``feature_types`` is present only ``Gene Expression`` features are kept. Spot ids are the
``obs`` index. Counts are validated like every format (integral, non-negative, int32).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from stlake.ingestion.matrices.batch import MAX_CHUNK_ROWS, ExprChunk, ExprPlan, SparseBatch, row_ranges
from stlake.ingestion.matrices.errors import decode_entries
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.tenx import GENE_EXPRESSION, csc_batch, local_columns
from stlake.ingestion.matrices.tenx_h5 import _open_h5
from stlake.ingestion.records import ExpressionSource, SlideError

#: ``var`` columns holding Ensembl ids, in preference order.
ENSEMBL_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "gene_ids-0")
#: Bytes of dense rows or CSC entries read at once.
BLOCK_BYTES = 32 << 20
#: Most matrix entries a CSC chunk's rows may hold (their triplets are kept until the chunk is sorted).
CSC_CHUNK_ENTRIES = 1 << 24

open_h5 = _open_h5


def encoding(node: Any) -> str:
    """AnnData's ``encoding-type`` of a node (``array`` for a plain dataset, legacy ``h5sparse_format`` read)."""
    kind = node.attrs.get("encoding-type")
    if kind is None and "h5sparse_format" in node.attrs:
        kind = f"{_text(node.attrs['h5sparse_format'])}_matrix"
    if kind is None:
        kind = "array" if hasattr(node, "shape") else "dict"
    return _text(kind)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def matrix_shape(node: Any, uri: str, name: str) -> tuple[int, int]:
    """(obs, var) of a dense dataset or a sparse group."""
    if hasattr(node, "shape"):
        if len(node.shape) != 2:
            raise SlideError("expression_unreadable", f"{uri}: {name} is not a 2-D matrix")
        return int(node.shape[0]), int(node.shape[1])
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if shape is None or len(shape) != 2:
        raise SlideError("expression_unreadable", f"{uri}: {name} has no shape attribute")
    return int(shape[0]), int(shape[1])


def frame_index(handle: Any, frame: str, uri: str, start: int = 0, stop: Optional[int] = None) -> list[str]:
    """Entries ``[start, stop)`` of the index of dataframe ``frame`` (``obs``, ``var``, ``raw/var``)."""
    if frame not in handle:
        raise SlideError("expression_unreadable", f"{uri}: no {frame} frame")
    group = handle[frame]
    name = _text(group.attrs.get("_index", "_index"))
    if name not in group:
        raise SlideError("expression_unreadable", f"{uri}: {frame} has no index dataset {name}")
    return decode_entries(group[name][start:stop], uri, f"{frame}/{name}", start)


def frame_column(handle: Any, frame: str, column: str, uri: str) -> Optional[list[str]]:
    """A string column of a dataframe (plain or categorical) as strings, None when absent."""
    group = handle[frame]
    if column not in group:
        return None
    node = group[column]
    if encoding(node) == "categorical":
        categories = np.array(decode_entries(node["categories"][:], uri, f"{frame}/{column}/categories"), dtype=object)
        codes = np.asarray(node["codes"][:], dtype=np.int64)
        return [str(categories[c]) if c >= 0 else "" for c in codes]
    if node.dtype.kind not in "SOU":
        return [str(v) for v in node[:]]
    return decode_entries(node[:], uri, f"{frame}/{column}")


def var_genes(handle: Any, frame: str, uri: str) -> tuple[list[str], list[Optional[str]], np.ndarray]:
    """(names, Ensembl ids, kept var positions) of a matrix's genes."""
    names = frame_index(handle, frame, uri)
    ensembl: list[Optional[str]] = [None] * len(names)
    for column in ENSEMBL_COLUMNS:
        values = frame_column(handle, frame, column, uri)
        if values is not None:
            ensembl = [v or None for v in values]
            break
    types = frame_column(handle, frame, "feature_types", uri)
    keep = np.arange(len(names), dtype=np.int64) if types is None else \
        np.array([i for i, kind in enumerate(types) if kind == GENE_EXPRESSION], dtype=np.int64)
    return names, ensembl, keep


def _matrix(handle: Any, src: ExpressionSource) -> tuple[Any, str, tuple[int, int]]:
    name = src.options.get("matrix", "X")
    if name not in handle:
        raise SlideError("expression_unreadable", f"{src.uri}: no {name} matrix")
    node = handle[name]
    kind = encoding(node)
    if kind not in ("array", "csr_matrix", "csc_matrix"):
        raise SlideError("expression_unreadable", f"{src.uri}: {name} is encoded as {kind!r}, not a dense or "
                                                  "CSR/CSC matrix")
    if kind == "array" and node.dtype.kind not in "iuf":
        raise SlideError("expression_unreadable", f"{src.uri}: {name} does not hold numbers")
    return node, kind, matrix_shape(node, src.uri, name)


def plan(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Genes from ``var`` (or ``raw/var``); chunks of obs rows holding about ``chunk_bytes`` of entries."""
    frame = src.options.get("var", "var")
    with open_h5(src.uri) as handle:
        node, kind, (n_obs, n_var) = _matrix(handle, src)
        names, ensembl, keep = var_genes(handle, frame, src.uri)
        if kind == "array":
            per_row = n_var * node.dtype.itemsize
        else:
            entry = node["data"].dtype.itemsize + node["indices"].dtype.itemsize
            per_row = max(1.0, node["data"].shape[0] / max(1, n_obs)) * entry
    if n_var != len(names):
        raise SlideError("expression_unreadable", f"{src.uri}: the matrix has {n_var} columns, {frame} names "
                                                  f"{len(names)} genes")
    rows = max(1, min(MAX_CHUNK_ROWS, int(chunk_bytes // max(1.0, per_row))))
    if kind == "csc_matrix":
        rows = min(rows, max(1, int(CSC_CHUNK_ENTRIES // max(1.0, per_row / 12))))
    chunks = [ExprChunk("rows", r, min(r + rows, n_obs)) for r in range(0, n_obs, rows)]
    genes = [names[i] for i in keep]
    ids = [ensembl[i] for i in keep]
    symbols: list[Optional[str]] = list(genes) if any(ids) else [None] * len(genes)
    return ExprPlan(genes, ids, symbols, chunks, n_obs, columns=keep)


def read(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The rows of one chunk as validated sparse batches."""
    with open_h5(src.uri) as handle:
        node, kind, (_, n_var) = _matrix(handle, src)
        lookup = local_columns(expr_plan, n_var)
        readers = {"array": _dense_rows, "csr_matrix": _csr_rows, "csc_matrix": _csc_rows}
        yield from readers[kind](handle, node, src.uri, chunk, lookup, expr_plan.genes)


def _ids(handle: Any, uri: str, r0: int, r1: int) -> np.ndarray:
    return np.array([s.strip() for s in frame_index(handle, "obs", uri, r0, r1)], dtype=object)


def row_ids(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> np.ndarray:
    """The spot ids of one chunk's rows, in order (the ``obs`` index only)."""
    with open_h5(src.uri) as handle:
        return _ids(handle, src.uri, chunk.start, chunk.stop)


def _dense_rows(handle: Any, node: Any, uri: str, chunk: ExprChunk, lookup: np.ndarray,
                genes: list[str]) -> Iterator[SparseBatch]:
    step = max(1, BLOCK_BYTES // max(1, node.shape[1] * node.dtype.itemsize))
    for r0, r1 in row_ranges(chunk.start, chunk.stop):
        for b0 in range(r0, r1, step):
            b1 = min(b0 + step, r1)
            block = np.asarray(node[b0:b1])
            rows, cols = np.nonzero(block)
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=b1 - b0))]).astype(np.int64)
            yield csc_batch(_ids(handle, uri, b0, b1), indptr, cols.astype(np.int64), block[rows, cols], lookup,
                            genes, uri, b0)


def _csr_rows(handle: Any, node: Any, uri: str, chunk: ExprChunk, lookup: np.ndarray,
              genes: list[str]) -> Iterator[SparseBatch]:
    nnz = int(node["data"].shape[0])
    for r0, r1 in row_ranges(chunk.start, chunk.stop):
        indptr = node["indptr"][r0:r1 + 1].astype(np.int64)
        if len(indptr) != r1 - r0 + 1 or (np.diff(indptr) < 0).any() or indptr[0] < 0 or indptr[-1] > nnz:
            raise SlideError("expression_unreadable", f"{uri}: indptr is not non-decreasing within [0, {nnz}] "
                                                      f"(rows {r0 + 1}-{r1})")
        p0, p1 = int(indptr[0]), int(indptr[-1])
        yield csc_batch(_ids(handle, uri, r0, r1), indptr - p0, node["indices"][p0:p1].astype(np.int64),
                        node["data"][p0:p1], lookup, genes, uri, r0)


def _csc_rows(handle: Any, node: Any, uri: str, chunk: ExprChunk, lookup: np.ndarray,
              genes: list[str]) -> Iterator[SparseBatch]:
    """Entries of rows ``[start, stop)`` gathered from every column, in bounded blocks."""
    indptr = node["indptr"][:].astype(np.int64)
    nnz = int(node["data"].shape[0])
    if (np.diff(indptr) < 0).any() or indptr[0] < 0 or indptr[-1] > nnz:
        raise SlideError("expression_unreadable", f"{uri}: indptr is not non-decreasing within [0, {nnz}]")
    step = max(1, BLOCK_BYTES // (node["data"].dtype.itemsize + node["indices"].dtype.itemsize))
    rows, cols, values = [], [], []
    for p0 in range(int(indptr[0]), int(indptr[-1]), step):
        p1 = min(p0 + step, int(indptr[-1]))
        block_rows = node["indices"][p0:p1].astype(np.int64)
        keep = (block_rows >= chunk.start) & (block_rows < chunk.stop)
        if keep.any():
            positions = np.arange(p0, p1)[keep]
            rows.append(block_rows[keep] - chunk.start)
            cols.append(np.searchsorted(indptr, positions, side="right") - 1)
            values.append(node["data"][p0:p1][keep])
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    value = np.concatenate(values) if values else np.zeros(0, node["data"].dtype)
    order = np.lexsort((col, row))
    row, col, value = row[order], col[order], value[order]
    n = chunk.stop - chunk.start
    indptr_rows = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))]).astype(np.int64)
    for r0, r1 in row_ranges(0, n):
        a, b = int(indptr_rows[r0]), int(indptr_rows[r1])
        yield csc_batch(_ids(handle, uri, chunk.start + r0, chunk.start + r1), indptr_rows[r0:r1 + 1] - a,
                        col[a:b], value[a:b], lookup, genes, uri, chunk.start + r0)


FORMAT = MatrixFormat("h5ad", plan, read, ("rows",), row_ids)
