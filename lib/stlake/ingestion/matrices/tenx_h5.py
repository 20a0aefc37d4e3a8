"""10x HDF5 count matrices (``tenx_h5``): Cell Ranger / Space Ranger ``*_feature_bc_matrix.h5``.

A CSC matrix with one column per barcode (group ``matrix`` since Cell Ranger 3, one group per
genome before). Planning reads the features and the shape only; a chunk is a barcode range, read by
slicing ``indptr`` / ``indices`` / ``data`` directly with h5py (scanpy / anndata would load the whole
matrix; a slice keeps memory bounded by the chunk). ``s3://`` files are read through a buffered file
object over a pyarrow ``NativeFile`` (ranged GETs).

Planning checks the datasets' presence, types and lengths (metadata only); a chunk checks its ``indptr``
slice. Errors name the file, dataset, barcode / entry and feature, never a value (:mod:`.errors`);
string datasets must be UTF-8.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import numpy as np

from stlake.ingestion.matrices.batch import MAX_CHUNK_ROWS, ExprChunk, ExprPlan, SparseBatch, row_ranges
from stlake.ingestion.matrices.errors import decode_entries
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.tenx import GENE_EXPRESSION, csc_batch, gene_plan, local_columns
from stlake.ingestion.records import ExpressionSource, SlideError
from stlake.lake import storage

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class _RawFile(io.RawIOBase):
    """A ``RawIOBase`` over a pyarrow ``NativeFile`` so reads can be buffered (fewer S3 requests)."""

    def __init__(self, native: BinaryIO) -> None:
        self._native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer)
        data = self._native.read(len(view))
        view[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._native.seek(offset, whence)

    def tell(self) -> int:
        return self._native.tell()

    def close(self) -> None:
        self._native.close()
        super().close()


def _h5_file_object(native: BinaryIO, buffer_size: int = 1 << 18) -> io.BufferedReader:
    """A buffered file object h5py can read (used for ``s3://`` matrices)."""
    return io.BufferedReader(_RawFile(native), buffer_size=buffer_size)


@contextlib.contextmanager
def _open_h5(uri: str) -> Iterator[Any]:
    """``uri`` opened read-only with h5py (imported here: only 10x matrices need it)."""
    import h5py

    if not storage.is_s3(uri):
        with h5py.File(storage.normalize(uri), "r") as handle:
            yield handle
        return
    with _h5_file_object(storage.open_input(uri)) as fileobj, h5py.File(fileobj, "r") as handle:
        yield handle


def _h5_group(handle: Any, uri: str) -> Any:
    """``matrix`` (Cell Ranger 3+) or the single genome group of the v2 format."""
    if "matrix" in handle:
        return handle["matrix"]
    groups = [key for key in handle.keys() if hasattr(handle[key], "keys") and "indptr" in handle[key]]
    if not groups:
        raise SlideError("expression_unreadable", f"no matrix group in {uri}")
    return handle[groups[0]]


#: The CSC datasets of a matrix group and the dtype kinds each may have (counts may be stored as floats).
CSC_DATASETS = {"data": "iuf", "indices": "iu", "indptr": "iu", "shape": "iu"}
_KIND_WORDS = {"S": "strings", "U": "strings", "O": "strings or objects", "f": "floating-point values",
               "b": "booleans", "c": "complex numbers", "V": "compound values"}


def _dataset(group: Any, name: str, uri: str) -> Any:
    """Dataset ``name`` of ``group``, or ``expression_unreadable`` naming it."""
    if name not in group:
        raise SlideError("expression_unreadable", f"{uri}: no dataset {group.name}/{name}")
    return group[name]


def _strings(group: Any, name: str, uri: str, start: int = 0, stop: Optional[int] = None) -> list[str]:
    """Entries ``[start, stop)`` of string dataset ``name`` of ``group``, decoded as UTF-8."""
    return decode_entries(_dataset(group, name, uri)[start:stop], uri, f"{group.name}/{name}", start)


def _check_csc(group: Any, uri: str) -> tuple[int, int, int]:
    """(features, barcodes, entries) after checking the CSC datasets' types and lengths (metadata only)."""
    for name, kinds in CSC_DATASETS.items():
        kind = _dataset(group, name, uri).dtype.kind
        if kind not in kinds:
            wanted = "numbers" if "f" in kinds else "integers"
            raise SlideError("expression_unreadable", f"{uri}: dataset {group.name}/{name} holds "
                                                      f"{_KIND_WORDS.get(kind, 'other values')}, not {wanted}")
    if group["shape"].shape[0] < 2:
        raise SlideError("expression_unreadable", f"{uri}: dataset {group.name}/shape has fewer than 2 entries")
    n_features, n_barcodes = (int(v) for v in group["shape"][:2])
    nnz = int(group["data"].shape[0])
    lengths = {"indptr": n_barcodes + 1, "indices": nnz, "barcodes": n_barcodes}
    for name, length in lengths.items():
        if _dataset(group, name, uri).shape[0] != length:
            raise SlideError("expression_unreadable", f"{uri}: dataset {group.name}/{name} has "
                                                      f"{group[name].shape[0]} entries, expected {length}")
    return n_features, n_barcodes, nnz


def _h5_features(group: Any, uri: str) -> tuple[list[str], list[str], list[str]]:
    """Feature ids, names and types (types all Gene Expression for the v2 format)."""
    if "features" in group:
        features = group["features"]
        ids, names = _strings(features, "id", uri), _strings(features, "name", uri)
        types = _strings(features, "feature_type", uri) if "feature_type" in features else [GENE_EXPRESSION] * len(ids)
    else:
        ids, names = _strings(group, "genes", uri), _strings(group, "gene_names", uri)
        types = [GENE_EXPRESSION] * len(ids)
    return ids, names, types


def plan(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Features and barcode count; chunks of barcodes holding about ``chunk_bytes`` of indices + data.

    A chunk holds at most ``MAX_CHUNK_ROWS`` barcodes.
    """
    with _open_h5(src.uri) as handle:
        group = _h5_group(handle, src.uri)
        n_features, n_barcodes, nnz = _check_csc(group, src.uri)
        ids, names, types = _h5_features(group, src.uri)
        entry = group["data"].dtype.itemsize + group["indices"].dtype.itemsize
    if n_features != len(ids) or len(names) != len(ids) or len(types) != len(ids):
        raise SlideError("expression_unreadable", f"{src.uri}: shape says {n_features} features, found {len(ids)} "
                                                  f"ids, {len(names)} names and {len(types)} types")
    per_chunk = max(1, min(MAX_CHUNK_ROWS, int(chunk_bytes // max(1.0, nnz / max(1, n_barcodes) * entry))))
    chunks = [ExprChunk("barcodes", b, min(b + per_chunk, n_barcodes)) for b in range(0, n_barcodes, per_chunk)]
    genes, ensembl, symbols, rows = gene_plan(ids, names, types)
    return ExprPlan(genes, ensembl, symbols, chunks, n_barcodes, columns=rows)


def _check_indptr(indptr: np.ndarray, nnz: int, first_barcode: int, uri: str) -> None:
    """``indptr`` of barcodes from ``first_barcode`` on must be non-decreasing within ``[0, nnz]``."""
    bad = np.flatnonzero(np.diff(indptr) < 0)
    if len(bad) or indptr[0] < 0 or indptr[-1] > nnz:
        barcode = first_barcode + (int(bad[0]) if len(bad) else 0) + 1
        raise SlideError("expression_unreadable", f"{uri}: dataset indptr is not non-decreasing within [0, {nnz}] "
                                                  f"(near barcode {barcode})")


def _barcodes(group: Any, uri: str, start: int, stop: int) -> np.ndarray:
    """Barcodes ``[start, stop)`` as spot ids (object array of str, whitespace stripped)."""
    return np.array([s.strip() for s in _strings(group, "barcodes", uri, start, stop)], dtype=object)


def row_ids(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> np.ndarray:
    """The spot ids of one chunk's barcodes, in order (the barcodes dataset only)."""
    with _open_h5(src.uri) as handle:
        return _barcodes(_h5_group(handle, src.uri), src.uri, chunk.start, chunk.stop)


def read(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The barcodes of one chunk, sliced from the CSC arrays a batch at a time."""
    with _open_h5(src.uri) as handle:
        group = _h5_group(handle, src.uri)
        n_features, _, nnz = _check_csc(group, src.uri)
        lookup = local_columns(expr_plan, n_features)
        for b0, b1 in row_ranges(chunk.start, chunk.stop):
            indptr = group["indptr"][b0:b1 + 1].astype(np.int64)
            _check_indptr(indptr, nnz, b0, src.uri)
            p0, p1 = int(indptr[0]), int(indptr[-1])
            ids = _barcodes(group, src.uri, b0, b1)
            yield csc_batch(ids, indptr - p0, group["indices"][p0:p1].astype(np.int64), group["data"][p0:p1],
                            lookup, expr_plan.genes, src.uri, b0)


FORMAT = MatrixFormat("tenx_h5", plan, read, ("barcodes",), row_ids)
