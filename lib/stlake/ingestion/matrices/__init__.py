"""Expression matrices -> bounded batches of sparse rows (local gene columns, raw integer counts).

``plan_expression`` reads only headers and small metadata and cuts the matrix into chunks, each one
Spark task; ``read_chunk`` turns one chunk into ``SparseBatch`` es of at most ``MAX_BATCH_ROWS`` rows.

Sources (``ExpressionSource.kind``):

* ``dense_csv`` / ``st_tsv``: rows = spots (first field = spot id), header = genes. Plain files are
  cut into byte ranges the Hadoop way: chunk ``[start, stop)`` owns every line that *starts* in it,
  so no task reads more than its range plus one line. Gzipped files are one chunk, streamed.
  Text is read in ~8 MB blocks of whole lines and parsed in ~1 MB pieces by a vectorised numpy
  parser (digits, optional ``.0``); from a piece it cannot handle on (signs, fractions, empty cells,
  quoted separators, blank lines) the block goes through ``pyarrow.csv``, whose values are then
  validated with errors naming the spot, gene and value.
* ``tenx_h5``: CSC matrix, one column per barcode; a chunk is a barcode range read by slicing.
* ``tenx_mtx``: 10x matrix folder, read whole (one chunk).

Counts are validated: non-integral -> ``non_integer_counts``, negative -> ``negative_counts``,
empty/NA or beyond int32 -> ``expression_unreadable``, a spot twice in a chunk -> ``duplicate_spot_ids``.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from stlake.ingestion.records import ExpressionSource, SlideError
from stlake.lake import storage

MAX_BATCH_ROWS = 4096  # rows of one SparseBatch
MAX_BATCH_NNZ = 1 << 22  # non-zeros of one SparseBatch (~32 MB of index + count arrays)
PARSE_BLOCK = 1 << 20  # bytes of text one vectorised parse handles (cache friendly)
READ_BLOCK = 8 << 20  # bytes read from storage at once; also the unit of the (slower) pyarrow parse
INT32_MAX = np.iinfo(np.int32).max
GENE_EXPRESSION = "Gene Expression"
DEFAULT_SEP = {"dense_csv": ",", "st_tsv": "\t"}

_NL, _CR, _DOT, _ZERO = 10, 13, 46, 48


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


@dataclass
class SparseBatch:
    """CSR rows of a few spots: ``indices`` = local gene columns (ascending per row), counts > 0."""

    spot_ids: np.ndarray  # object array of str
    indptr: np.ndarray  # int64, len n + 1
    indices: np.ndarray  # int32
    counts: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.spot_ids)


# ---------------------------------------------------------------- public API

def plan_expression(src: ExpressionSource, chunk_bytes: int = 64 << 20) -> ExprPlan:
    """Genes and chunks of ``src``, from headers / metadata only."""
    planners = {"dense_csv": _plan_text, "st_tsv": _plan_text, "tenx_h5": _plan_h5, "tenx_mtx": _plan_mtx}
    if src.kind not in planners:
        raise SlideError("expression_unreadable", f"unknown expression source kind {src.kind!r} ({src.uri})")
    with _unreadable(src.uri):
        return planners[src.kind](src, max(1, int(chunk_bytes)))


def read_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The sparse rows of one chunk, in batches of at most ``MAX_BATCH_ROWS`` rows, validated."""
    readers = {"bytes": _read_text_chunk, "gzip": _read_text_chunk, "barcodes": _read_h5_chunk,
               "matrix": _read_mtx_chunk}
    if chunk.kind not in readers:
        raise SlideError("expression_unreadable", f"unknown chunk kind {chunk.kind!r} ({src.uri})")
    seen: set[str] = set()
    with _unreadable(src.uri):
        for batch in readers[chunk.kind](src, plan, chunk):
            _check_unique(batch.spot_ids, seen, src.uri)
            yield batch


# ---------------------------------------------------------------- shared helpers

@contextlib.contextmanager
def _unreadable(uri: str) -> Iterator[None]:
    """Turn I/O and format errors into ``SlideError('expression_unreadable')`` naming ``uri``."""
    try:
        yield
    except SlideError:
        raise
    except (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error, pa.ArrowException) as error:
        raise SlideError("expression_unreadable", f"{uri}: {type(error).__name__}: {error}") from error


def _check_unique(ids: np.ndarray, seen: set[str], uri: str) -> None:
    """Raise ``duplicate_spot_ids`` if an id repeats within the batch or was seen earlier in the chunk."""
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    repeated = [str(i) for i in unique[counts > 1]] + [str(i) for i in unique if i in seen]
    if repeated:
        raise SlideError("duplicate_spot_ids", f"spot id(s) with more than one row in {uri}: "
                                               f"{', '.join(repr(r) for r in sorted(set(repeated))[:5])}")
    seen.update(unique.tolist())


def _format_value(value: float) -> str:
    if isinstance(value, (int, np.integer)) or (np.isfinite(value) and float(value).is_integer()):
        return str(int(value))
    return repr(float(value))


def _to_counts(values: np.ndarray, where: Callable[[int], tuple[str, str]], uri: str) -> np.ndarray:
    """``values`` (any numeric dtype) as int32 counts, or ``SlideError`` naming the first bad entry.

    ``where(i)`` gives (spot id, gene name) of entry ``i``.
    """
    if values.dtype.kind in "iu":
        bad = (values < 0) | (values > INT32_MAX)
    else:
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0) | (values > INT32_MAX)
    if not bad.any():
        return values.astype(np.int32)
    first = int(np.flatnonzero(bad)[0])
    value = values[first]
    spot, gene = where(first)
    place = f"spot {spot!r}, gene {gene!r} in {uri}"
    if values.dtype.kind == "f" and np.isnan(value):
        raise SlideError("expression_unreadable", f"empty or NA count for {place}")
    if values.dtype.kind == "f" and (not np.isfinite(value) or value != np.floor(value)):
        raise SlideError("non_integer_counts", f"count {_format_value(value)} is not an integer: {place}")
    if value < 0:
        raise SlideError("negative_counts", f"count {_format_value(value)} is negative: {place}")
    raise SlideError("expression_unreadable", f"count {_format_value(value)} exceeds int32: {place}")


def _batch_from_triplets(ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> SparseBatch:
    """CSR batch from entries sorted by (row, col) with counts > 0."""
    per_row = np.bincount(rows, minlength=len(ids)) if len(rows) else np.zeros(len(ids), dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    return SparseBatch(np.asarray(ids, dtype=object), indptr, cols.astype(np.int32), counts.astype(np.int32))


def _concat(batches: list[SparseBatch]) -> SparseBatch:
    if len(batches) == 1:
        return batches[0]
    offsets = np.cumsum([0] + [len(b.indices) for b in batches[:-1]])
    indptr = np.concatenate([[0]] + [b.indptr[1:] + off for b, off in zip(batches, offsets)])
    return SparseBatch(np.concatenate([b.spot_ids for b in batches]), indptr.astype(np.int64),
                       np.concatenate([b.indices for b in batches]), np.concatenate([b.counts for b in batches]))


def _slice(batch: SparseBatch, start: int, stop: int) -> SparseBatch:
    lo, hi = batch.indptr[start], batch.indptr[stop]
    return SparseBatch(batch.spot_ids[start:stop], batch.indptr[start:stop + 1] - lo,
                       batch.indices[lo:hi], batch.counts[lo:hi])


def _split(batch: SparseBatch, max_rows: int) -> Iterator[SparseBatch]:
    for start in range(0, len(batch), max_rows):
        yield _slice(batch, start, min(start + max_rows, len(batch)))


def _rebatch(pieces: Iterable[SparseBatch]) -> Iterator[SparseBatch]:
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


# ---------------------------------------------------------------- text matrices: planning

def _sep(src: ExpressionSource) -> str:
    sep = src.options.get("sep") or DEFAULT_SEP.get(src.kind, ",")
    if len(sep) != 1:
        raise SlideError("expression_unreadable", f"separator must be one character, got {sep!r} ({src.uri})")
    return sep


def _read_line(handle: BinaryIO) -> bytes:
    """Bytes from the current position through the next ``\\n`` (or EOF); the handle is left after them."""
    start, parts = handle.tell(), []
    while True:
        piece = handle.read(1 << 16)
        cut = piece.find(b"\n")
        if cut >= 0 or not piece:
            parts.append(piece[:cut + 1] if cut >= 0 else piece)
            line = b"".join(parts)
            handle.seek(start + len(line))
            return line
        parts.append(piece)


def _split_fields(line: bytes, sep: str) -> list[str]:
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return [field.strip() for field in next(csv.reader([text], delimiter=sep))] if text else []


def _text_genes(header: list[str], first_row: list[str], uri: str) -> list[str]:
    """Gene names from the header: after its first cell, or all of it when rows have one more field."""
    if not header:
        raise SlideError("expression_unreadable", f"empty header line in {uri}")
    if not first_row or len(first_row) == len(header):
        return header[1:]
    if len(first_row) == len(header) + 1:
        return header
    raise SlideError("expression_unreadable", f"header of {uri} has {len(header)} fields but the first row has "
                                              f"{len(first_row)}")


def _plan_text(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Header -> genes; byte-range chunks of the data lines (one ``gzip`` chunk when compressed)."""
    sep, size = _sep(src), storage.size(src.uri)
    with storage.open_decompressed(src.uri) as (handle, compressed):
        header = _read_line(handle)
        first = _read_line(handle)
    genes = _text_genes(_split_fields(header, sep), _split_fields(first, sep), src.uri)
    data_start = len(header)
    if compressed:
        chunks, hint = [ExprChunk("gzip", 0, size)], None
    else:
        chunks = [ExprChunk("bytes", s, min(s + chunk_bytes, size)) for s in range(data_start, size, chunk_bytes)]
        hint = max(1, round((size - data_start) / len(first))) if first.strip() else 0
    nones: list[Optional[str]] = [None] * len(genes)
    return ExprPlan(genes, list(nones), list(nones), chunks, hint)


# ---------------------------------------------------------------- text matrices: reading lines

def _first_line_start(handle: BinaryIO, start: int) -> int:
    """Position of the first line starting at or after ``start`` (Hadoop: skip the partial line)."""
    position = start - 1
    handle.seek(position)
    while True:
        piece = handle.read(1 << 16)
        if not piece:
            return position
        cut = piece.find(b"\n")
        if cut >= 0:
            return position + cut + 1
        position += len(piece)


def _line_blocks(handle: BinaryIO, position: int, stop: Optional[int]) -> Iterator[bytes]:
    """Blocks of whole lines from ``position`` (a line start) covering every line starting before ``stop``.

    Each block ends with ``\\n`` (one is added after a last line without it).
    """
    buffer = b""
    while True:
        piece = handle.read(READ_BLOCK)
        eof = not piece
        buffer += piece
        if stop is not None and position + len(buffer) >= stop:
            cut = buffer.find(b"\n", max(0, stop - 1 - position))
            if cut >= 0:
                yield buffer[:cut + 1]
                return
            if eof:
                break
            continue
        if eof:
            break
        cut = buffer.rfind(b"\n")
        if cut >= 0:
            yield buffer[:cut + 1]
            position, buffer = position + cut + 1, buffer[cut + 1:]
    if buffer.strip():
        yield buffer if buffer.endswith(b"\n") else buffer + b"\n"


def _parse_ranges(block: bytes) -> Iterator[tuple[int, int]]:
    """``block`` cut at line ends into ranges of about ``PARSE_BLOCK`` bytes."""
    start = 0
    while start < len(block):
        cut = block.find(b"\n", start + PARSE_BLOCK - 1)
        stop = len(block) if cut < 0 else cut + 1
        yield start, stop
        start = stop


def _text_blocks(src: ExpressionSource, chunk: ExprChunk) -> Iterator[bytes]:
    """The chunk's lines in blocks of about ``READ_BLOCK`` bytes of whole lines."""
    with storage.open_input(src.uri) as raw:
        if chunk.kind == "gzip":
            handle = gzip.GzipFile(fileobj=raw)
            _read_line(handle)  # header
            yield from _line_blocks(handle, 0, None)
            return
        first = _first_line_start(raw, chunk.start)
        if first < chunk.stop:
            raw.seek(first)
            yield from _line_blocks(raw, first, chunk.stop)


# ---------------------------------------------------------------- text matrices: parsing

def _spot_ids(block: memoryview, line_starts: np.ndarray, id_ends: np.ndarray) -> np.ndarray:
    """First field of every line, decoded, whitespace and surrounding quotes stripped."""
    data = block.tobytes() if isinstance(block, memoryview) else block
    return np.array([data[a:b].decode("utf-8", errors="replace").strip().strip('"')
                     for a, b in zip(line_starts.tolist(), id_ends.tolist())], dtype=object)


def _zero_fields(buf: np.ndarray, term: np.ndarray, has_dot: bool) -> np.ndarray:
    """Mask over bytes 1..len-1: True where a field ``0`` (or ``0.0``) starts."""
    zero = buf[1:] == _ZERO
    zero[:-1] &= term[2:]
    zero[-1] = False
    if has_dot and len(buf) > 4:
        zero_dot = (buf[1:-3] == _ZERO) & (buf[2:-2] == _DOT) & (buf[3:-1] == _ZERO) & term[4:]
        zero[:-3] |= zero_dot
    return zero


def _digits(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Optional[np.ndarray]:
    """Integer values of fields ``[start, start+length)`` made of digits with an optional ``.0*`` tail.

    None when any field is something else (sign, fraction, empty, text, > 18 digits).
    """
    values = np.zeros(len(starts), dtype=np.int64)
    n_digits = np.zeros(len(starts), dtype=np.int64)
    after_dot = np.zeros(len(starts), dtype=bool)
    for j in range(int(lengths.max()) if len(lengths) else 0):
        idx = np.flatnonzero(lengths > j)
        char = buf[starts[idx] + j]
        digit = char - np.uint8(_ZERO)  # wraps around for chars below '0'
        is_digit, is_dot, dotted = digit <= 9, char == _DOT, after_dot[idx]
        if (~is_digit & ~is_dot).any() or (dotted & (char != _ZERO)).any() or (dotted & is_dot).any():
            return None
        take = idx[is_digit & ~dotted]
        values[take] = values[take] * 10 + digit[is_digit & ~dotted]
        n_digits[take] += 1
        after_dot[idx[is_dot]] = True
    if (n_digits == 0).any() or (n_digits > 18).any() or (values > INT32_MAX).any():
        return None
    return values


def _parse_fast(block: memoryview, n_genes: int, sep: str) -> Optional[SparseBatch]:
    """Vectorised parse of whole lines ``id,count,...``; None when the block needs the careful parser."""
    buf = np.frombuffer(block, dtype=np.uint8)
    newline = buf == _NL
    term = newline | (buf == ord(sep))
    ends = np.flatnonzero(term)
    line_ends = np.flatnonzero(newline)
    width, n_rows = n_genes + 1, len(line_ends)
    if len(buf) < 2 or len(ends) != n_rows * width or not np.array_equal(ends[width - 1::width], line_ends):
        return None
    has_dot = bool((buf == _DOT).any())
    candidate = term[:-1] & ~_zero_fields(buf, term, has_dot)  # index i: a non-zero field may start at i + 1
    field_ends = ends[:-1]
    field = np.flatnonzero(candidate[field_ends]) + 1  # field numbers (0 = first id)
    row, col = np.divmod(field, width)
    keep = col > 0
    field, row, col = field[keep], row[keep], col[keep] - 1
    starts, stops = ends[field - 1] + 1, ends[field]
    lengths = stops - starts
    lengths -= ((col == n_genes - 1) & (buf[stops - 1] == _CR) & (lengths > 0)).astype(np.int64)
    values = _digits(buf, starts, lengths)
    if values is None:
        return None
    nonzero = values > 0
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])
    ids = _spot_ids(block, line_starts, ends[::width])
    return _batch_from_triplets(ids, row[nonzero], col[nonzero], values[nonzero])


_CONVERSION_ERROR = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to \w+: invalid value '(.*)'", re.S)


def _arrow_read(block: memoryview, names: list[str], types: dict, sep: str,
                include: Optional[list[str]] = None) -> pa.Table:
    return pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(block)),
        read_options=pacsv.ReadOptions(column_names=names, block_size=max(len(block) + 1, 1 << 16),
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=sep),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=include))


def _conversion_failure(block: memoryview, names: list[str], genes: list[str], sep: str, uri: str,
                        error: Exception) -> SlideError:
    """A ``SlideError`` for a value pyarrow could not convert, naming spot, gene and value."""
    match = _CONVERSION_ERROR.search(str(error))
    if not match or not 1 <= int(match.group(1)) < len(names):
        return SlideError("expression_unreadable", f"malformed rows in {uri}: {str(error)[:300]}")
    column, value = int(match.group(1)), match.group(2)
    table = _arrow_read(block, names, {names[0]: pa.string(), names[column]: pa.string()}, sep,
                        [names[0], names[column]])
    cells = table.column(1).to_pylist()
    spot = table.column(0)[cells.index(value)].as_py() if value in cells else "?"
    return SlideError("expression_unreadable", f"unreadable count {value!r}: spot {str(spot).strip()!r}, gene "
                                               f"{genes[column - 1]!r} in {uri}")


def _parse_careful(block: memoryview, genes: list[str], sep: str, uri: str) -> SparseBatch:
    """Pyarrow parse of a block (quotes, signs, fractions, blanks), validated with precise errors."""
    names = [f"c{j}" for j in range(len(genes) + 1)]
    types = {name: pa.float64() for name in names[1:]}
    types[names[0]] = pa.string()
    try:
        table = _arrow_read(block, names, types, sep)
    except pa.ArrowInvalid as error:
        raise _conversion_failure(block, names, genes, sep, uri, error) from error
    ids = np.array([str(s).strip() for s in table.column(0).to_pylist()], dtype=object)
    dense = np.empty((table.num_rows, len(genes)), dtype=np.float64)
    for j in range(len(genes)):
        dense[:, j] = table.column(j + 1).to_numpy(zero_copy_only=False)
    rows, cols = np.nonzero(dense)  # NaN (empty / NA) counts as non-zero and is reported
    counts = _to_counts(dense[rows, cols], lambda i: (ids[rows[i]], genes[cols[i]]), uri)
    keep = counts > 0
    return _batch_from_triplets(ids, rows[keep], cols[keep], counts[keep])


def parse_text_block(block: bytes, genes: list[str], sep: str, uri: str) -> Iterator[SparseBatch]:
    """Sparse rows of a block of whole text lines.

    The vectorised parser takes ~``PARSE_BLOCK`` pieces; from the first piece it cannot handle on, the
    rest of the block goes through pyarrow in one call (its cost per call grows with the column count).
    """
    view = memoryview(block)
    for start, stop in _parse_ranges(block):
        batch = _parse_fast(view[start:stop], len(genes), sep)
        if batch is None:
            yield _parse_careful(view[start:], genes, sep, uri)
            return
        yield batch


def _read_text_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    sep = _sep(src)
    yield from _rebatch(batch for block in _text_blocks(src, chunk)
                        for batch in parse_text_block(block, plan.genes, sep, src.uri))


# ---------------------------------------------------------------- 10x HDF5

class _RawFile(io.RawIOBase):
    """A ``RawIOBase`` over a pyarrow ``NativeFile`` so reads can be buffered (fewer S3 requests)."""

    def __init__(self, native: BinaryIO):
        self._native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        data = self._native.read(len(buffer))
        buffer[:len(data)] = data
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
def _open_h5(uri: str) -> Iterator[object]:
    import h5py

    if not storage.is_s3(uri):
        with h5py.File(storage.normalize(uri), "r") as handle:
            yield handle
        return
    with _h5_file_object(storage.open_input(uri)) as fileobj, h5py.File(fileobj, "r") as handle:
        yield handle


def _h5_group(handle: object, uri: str) -> object:
    """``matrix`` (Cell Ranger 3+) or the single genome group of the v2 format."""
    if "matrix" in handle:
        return handle["matrix"]
    groups = [key for key in handle.keys() if "indptr" in handle[key]]
    if not groups:
        raise SlideError("expression_unreadable", f"no matrix group in {uri}")
    return handle[groups[0]]


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]


def _h5_features(group: object) -> tuple[list[str], list[str], list[str]]:
    """Feature ids, names and types (types all Gene Expression for the v2 format)."""
    if "features" in group:
        features = group["features"]
        ids, names = _decode(features["id"][:]), _decode(features["name"][:])
        types = _decode(features["feature_type"][:]) if "feature_type" in features else [GENE_EXPRESSION] * len(ids)
    else:
        ids, names = _decode(group["genes"][:]), _decode(group["gene_names"][:])
        types = [GENE_EXPRESSION] * len(ids)
    return ids, names, types


def _gene_plan(ids: list[str], names: list[str], types: list[str]) -> tuple[list[str], list, list, np.ndarray]:
    """Keep Gene Expression features: (names, ids, symbols, source rows)."""
    rows = np.array([i for i, kind in enumerate(types) if kind == GENE_EXPRESSION], dtype=np.int64)
    return ([names[i] for i in rows], [ids[i] or None for i in rows], [names[i] or None for i in rows], rows)


def _plan_h5(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Features and barcode count; chunks of barcodes holding about ``chunk_bytes`` of indices + data."""
    with _open_h5(src.uri) as handle:
        group = _h5_group(handle, src.uri)
        ids, names, types = _h5_features(group)
        n_features, n_barcodes = (int(v) for v in group["shape"][:2])
        nnz = int(group["data"].shape[0])
        entry = group["data"].dtype.itemsize + group["indices"].dtype.itemsize
    if n_features != len(ids):
        raise SlideError("expression_unreadable", f"{src.uri}: shape says {n_features} features, found {len(ids)}")
    per_chunk = max(1, int(chunk_bytes // max(1.0, nnz / max(1, n_barcodes) * entry)))
    chunks = [ExprChunk("barcodes", b, min(b + per_chunk, n_barcodes)) for b in range(0, n_barcodes, per_chunk)]
    genes, ensembl, symbols, rows = _gene_plan(ids, names, types)
    return ExprPlan(genes, ensembl, symbols, chunks, n_barcodes, columns=rows)


def _local_columns(plan: ExprPlan, n_features: int) -> np.ndarray:
    """Local gene column of every source feature row (-1 = not a kept gene)."""
    lookup = np.full(n_features, -1, dtype=np.int64)
    rows = plan.columns if plan.columns is not None else np.arange(len(plan.genes))
    lookup[rows] = np.arange(len(rows))
    return lookup


def _csc_batch(ids: np.ndarray, indptr: np.ndarray, features: np.ndarray, values: np.ndarray,
               lookup: np.ndarray, genes: list[str], uri: str) -> SparseBatch:
    """One batch from CSC slices of consecutive barcodes: map, drop zeros, sort, validate."""
    if len(features) and (features.min() < 0 or features.max() >= len(lookup)):
        raise SlideError("expression_unreadable", f"feature index out of range in {uri}")
    rows = np.repeat(np.arange(len(ids)), np.diff(indptr))
    cols = lookup[features]
    keep = (cols >= 0) & (values != 0)
    rows, cols, values = rows[keep], cols[keep], values[keep]
    if len(cols) > 1 and ((np.diff(rows) == 0) & (np.diff(cols) <= 0)).any():
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        twice = (np.diff(rows) == 0) & (np.diff(cols) == 0)
        if twice.any():
            i = int(np.flatnonzero(twice)[0])
            raise SlideError("expression_unreadable", f"gene {genes[cols[i]]!r} listed twice for spot "
                                                      f"{ids[rows[i]]!r} in {uri}")
    counts = _to_counts(values, lambda i: (ids[rows[i]], genes[cols[i]]), uri)
    return _batch_from_triplets(ids, rows, cols, counts)


def _read_h5_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    with _open_h5(src.uri) as handle:
        group = _h5_group(handle, src.uri)
        lookup = _local_columns(plan, int(group["shape"][0]))
        for b0 in range(chunk.start, chunk.stop, MAX_BATCH_ROWS):
            b1 = min(b0 + MAX_BATCH_ROWS, chunk.stop)
            indptr = group["indptr"][b0:b1 + 1].astype(np.int64)
            p0, p1 = int(indptr[0]), int(indptr[-1])
            ids = np.array([s.strip() for s in _decode(group["barcodes"][b0:b1])], dtype=object)
            yield _csc_batch(ids, indptr - p0, group["indices"][p0:p1].astype(np.int64), group["data"][p0:p1],
                             lookup, plan.genes, src.uri)


# ---------------------------------------------------------------- 10x matrix folder

def _mtx_file(folder: str, *names: str) -> str:
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
    columns = _tsv_columns(_mtx_file(folder, "features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"))
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
    while True:
        end = data.find(b"\n", position)
        line = data[position:len(data) if end < 0 else end].strip()
        position = len(data) if end < 0 else end + 1
        if line and not line.startswith(b"%"):
            sizes = tuple(int(v) for v in line.split()[:3])
            return first[3], sizes, position  # type: ignore[return-value]


def _plan_mtx(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Features and barcode count; one chunk (these matrices are small)."""
    ids, names, types = _mtx_features(src.uri)
    barcodes = _tsv_columns(_mtx_file(src.uri, "barcodes.tsv.gz", "barcodes.tsv"))
    n_barcodes = len(barcodes[0]) if barcodes else 0
    genes, ensembl, symbols, rows = _gene_plan(ids, names, types)
    chunks = [ExprChunk("matrix", 0, n_barcodes)] if n_barcodes else []
    return ExprPlan(genes, ensembl, symbols, chunks, n_barcodes, columns=rows)


def _read_mtx_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    uri = _mtx_file(src.uri, "matrix.mtx.gz", "matrix.mtx")
    data = storage.read_decompressed(uri)
    field, (n_features, n_barcodes, n_entries), offset = _mtx_header(data, uri)
    if field not in ("integer", "real"):
        raise SlideError("expression_unreadable", f"MatrixMarket field {field!r} has no counts: {uri}")
    barcodes = np.array(_tsv_columns(_mtx_file(src.uri, "barcodes.tsv.gz", "barcodes.tsv"))[0], dtype=object)
    if len(barcodes) != n_barcodes:
        raise SlideError("expression_unreadable", f"{uri} has {n_barcodes} columns but there are "
                                                  f"{len(barcodes)} barcodes")
    value_type = pa.int64() if field == "integer" else pa.float64()
    table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(memoryview(data)[offset:])),
                           read_options=pacsv.ReadOptions(column_names=["f", "b", "v"]),
                           parse_options=pacsv.ParseOptions(delimiter=" "),
                           convert_options=pacsv.ConvertOptions(column_types={"f": pa.int64(), "b": pa.int64(),
                                                                              "v": value_type}))
    if table.num_rows != n_entries or any(column.null_count for column in table.columns):
        raise SlideError("expression_unreadable", f"{uri}: expected {n_entries} entries, read {table.num_rows}")
    features, cols, values = (table.column(name).to_numpy() for name in ("f", "b", "v"))
    if len(cols) and (cols.min() < 1 or cols.max() > n_barcodes):
        raise SlideError("expression_unreadable", f"barcode index out of range in {uri}")
    order = np.argsort(cols, kind="stable")
    features, cols, values = features[order] - 1, cols[order] - 1, values[order]
    lookup = _local_columns(plan, n_features)
    for b0 in range(chunk.start, chunk.stop, MAX_BATCH_ROWS):
        b1 = min(b0 + MAX_BATCH_ROWS, chunk.stop)
        bounds = np.searchsorted(cols, np.arange(b0, b1 + 1))
        p0, p1 = int(bounds[0]), int(bounds[-1])
        yield _csc_batch(barcodes[b0:b1], bounds - p0, features[p0:p1], values[p0:p1], lookup, plan.genes, uri)
