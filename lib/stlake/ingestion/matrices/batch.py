"""What every count-matrix format produces: plans, chunks and bounded ``SparseBatch`` es of validated counts.

This module owns the types shared by all formats (``ExprChunk``, ``ExprPlan``, ``SparseBatch``), the
batch size limits, the count validation (``to_counts``: integral, non-negative, int32; errors say where
and what, never the value) and the helpers
that build, merge and split CSR batches. Batches are plain numpy CSR arrays rather than scipy sparse
matrices: a few arrays per batch are all the writer needs, and merging / slicing them stays in numpy.
"""
from __future__ import annotations

import dataclasses
import pickle
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from stlake.ingestion.records import SlideError

MAX_BATCH_ROWS = 4096  # rows of one SparseBatch
MAX_BATCH_NNZ = 1 << 22  # non-zeros of one SparseBatch (~32 MB of index + count arrays)
INT32_MAX = np.iinfo(np.int32).max
#: rows of one chunk (one task) at most: a 2 µm VisiumHD matrix of millions of sparse rows is still cut
#: into several tasks, each with a small row mask (:mod:`.rows`)
MAX_CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class ExprChunk:
    """One task's part of a matrix.

    kind ``bytes``: lines starting in byte range ``[start, stop)``; ``gzip``: the whole compressed file
    (``stop`` = its size); ``barcodes``: 10x barcodes ``[start, stop)``; ``matrix``: a whole mtx folder.
    """

    kind: str
    start: int
    stop: int


@dataclass
class ExprPlan:
    """Genes (source column order) and chunks of one slide's matrix."""

    genes: list[str]  # raw source names
    ensembl_ids: list[Optional[str]]  # 10x feature ids; None for text matrices
    symbols: list[Optional[str]]  # 10x feature names; None for text matrices
    chunks: list[ExprChunk]
    n_spots_hint: Optional[int]
    columns: Optional[np.ndarray] = None  # 10x: source feature row of each gene column (others dropped)

    def for_tasks(self) -> ExprPlan:
        """The plan as expression tasks need it: Ensembl ids and symbols (used only to key genes) left out."""
        return dataclasses.replace(self, ensembl_ids=[None] * len(self.genes), symbols=[None] * len(self.genes))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as one zlib buffer: every expression task carries the plan, and gene names shrink ~3x."""
        state = (self.genes, self.ensembl_ids, self.symbols, self.chunks, self.n_spots_hint, self.columns)
        return (_unpack_plan, (zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 6),))


def _unpack_plan(packed: bytes) -> ExprPlan:
    """An unpickled ``ExprPlan``."""
    return ExprPlan(*pickle.loads(zlib.decompress(packed)))


@dataclass
class SparseBatch:
    """CSR rows of a few spots: ``indices`` = local gene columns (ascending per row), counts > 0."""

    spot_ids: np.ndarray  # object array of str
    indptr: np.ndarray  # int64, len n + 1
    indices: np.ndarray  # int32
    counts: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.spot_ids)


# ---------------------------------------------------------------- validation

def check_unique(ids: np.ndarray, seen: set[str], uri: str) -> None:
    """Raise ``duplicate_spot_ids`` if an id repeats within the batch or was seen earlier in the chunk."""
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    repeated = [str(i) for i in unique[counts > 1]] + [str(i) for i in unique if i in seen]
    if repeated:
        raise SlideError("duplicate_spot_ids", f"spot id(s) with more than one row in {uri}: "
                                               f"{', '.join(repr(r) for r in sorted(set(repeated))[:5])}")
    seen.update(unique.tolist())


def to_counts(values: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """``values`` (any numeric dtype) as int32 counts, or ``SlideError`` saying where the first bad entry is.

    ``where(i)`` describes the place of entry ``i`` (file, row, spot, gene); the detail says what is
    wrong with the value but never quotes it (see :mod:`.errors`).
    """
    if values.dtype.kind in "iu":
        bad = (values < 0) | (values > INT32_MAX)
    else:
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0) | (values > INT32_MAX)
    if not bad.any():
        return values.astype(np.int32)
    first = int(np.flatnonzero(bad)[0])
    value = values[first]
    place = where(first)
    if values.dtype.kind == "f" and np.isnan(value):
        raise SlideError("expression_unreadable", f"{place}: count is empty or NA")
    if values.dtype.kind == "f" and not np.isfinite(value):
        raise SlideError("non_integer_counts", f"{place}: count is infinite")
    if values.dtype.kind == "f" and value != np.floor(value):
        raise SlideError("non_integer_counts", f"{place}: count is not an integer")
    if value < 0:
        raise SlideError("negative_counts", f"{place}: count is negative")
    raise SlideError("expression_unreadable", f"{place}: count is too large (above {INT32_MAX}, the int32 limit)")


# ---------------------------------------------------------------- building and rebatching

def batch_from_triplets(ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> SparseBatch:
    """CSR batch from entries sorted by (row, col) with counts > 0."""
    per_row = np.bincount(rows, minlength=len(ids)) if len(rows) else np.zeros(len(ids), dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    return SparseBatch(np.asarray(ids, dtype=object), indptr, cols.astype(np.int32), counts.astype(np.int32))


def row_ranges(start: int, stop: int) -> Iterator[tuple[int, int]]:
    """Rows ``[start, stop)`` cut into ranges of at most ``MAX_BATCH_ROWS`` rows."""
    for lo in range(start, stop, MAX_BATCH_ROWS):
        yield lo, min(lo + MAX_BATCH_ROWS, stop)


def _concat(batches: list[SparseBatch]) -> SparseBatch:
    """The rows of ``batches`` in order, as one batch."""
    if len(batches) == 1:
        return batches[0]
    offsets = np.cumsum([0] + [len(b.indices) for b in batches[:-1]])
    indptr = np.concatenate([[0]] + [b.indptr[1:] + off for b, off in zip(batches, offsets)])
    return SparseBatch(np.concatenate([b.spot_ids for b in batches]), indptr.astype(np.int64),
                       np.concatenate([b.indices for b in batches]), np.concatenate([b.counts for b in batches]))


def _slice(batch: SparseBatch, start: int, stop: int) -> SparseBatch:
    """Rows ``[start, stop)`` of ``batch`` (views, not copies)."""
    lo, hi = batch.indptr[start], batch.indptr[stop]
    return SparseBatch(batch.spot_ids[start:stop], batch.indptr[start:stop + 1] - lo,
                       batch.indices[lo:hi], batch.counts[lo:hi])


def _split(batch: SparseBatch, max_rows: int) -> Iterator[SparseBatch]:
    """``batch`` in consecutive slices of at most ``max_rows`` rows."""
    for start in range(0, len(batch), max_rows):
        yield _slice(batch, start, min(start + max_rows, len(batch)))


def rebatch(pieces: Iterable[SparseBatch]) -> Iterator[SparseBatch]:
    """Merge small pieces / split big ones into batches of at most ``MAX_BATCH_ROWS`` rows."""
    pending: list[SparseBatch] = []
    rows = nnz = 0
    for piece in pieces:
        pending.append(piece)
        rows, nnz = rows + len(piece), nnz + len(piece.indices)
        if rows >= MAX_BATCH_ROWS or nnz >= MAX_BATCH_NNZ:
            yield from _split(_concat(pending), MAX_BATCH_ROWS)
            pending, rows, nnz = [], 0, 0
    if pending:
        yield from _split(_concat(pending), MAX_BATCH_ROWS)
