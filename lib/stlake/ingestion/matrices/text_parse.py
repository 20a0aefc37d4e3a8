"""Blocks of whole delimited-text lines (``id,count,count,...``) -> ``SparseBatch`` es: the hot path.

Shared by the dense CSV and legacy ST TSV formats (:mod:`.text` cuts the files into blocks). A block
is parsed in ~``PARSE_BLOCK`` pieces by a vectorised numpy parser that handles digits with an optional
``.0`` tail; from the first piece it cannot handle on (signs, fractions, empty cells, quoted
separators, blank lines) the rest of the block goes through ``pyarrow.csv``, whose values are then
validated with errors naming the spot, gene and value. Hand-written rather than pandas: no Python
work per value, memory bounded by the block instead of a dense frame of the file, exact integers.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from stlake.ingestion.matrices.batch import INT32_MAX, SparseBatch, batch_from_triplets, to_counts
from stlake.ingestion.records import SlideError

log = logging.getLogger(__name__)

PARSE_BLOCK = 1 << 20  # bytes of text one vectorised parse handles (cache friendly)

_NL, _CR, _DOT, _ZERO = 10, 13, 46, 48


def parse_text_block(block: bytes, genes: list[str], sep: str, uri: str) -> Iterator[SparseBatch]:
    """Sparse rows of a block of whole text lines.

    The vectorised parser takes ~``PARSE_BLOCK`` pieces; from the first piece it cannot handle on, the
    rest of the block goes through pyarrow in one call (its cost per call grows with the column count).
    """
    view = memoryview(block)
    for start, stop in _parse_ranges(block):
        batch = _parse_fast(view[start:stop], len(genes), sep)
        if batch is None:
            log.debug("%s: %d bytes of text parsed by pyarrow", uri, len(block) - start)
            yield _parse_careful(view[start:], genes, sep, uri)
            return
        yield batch


def _parse_ranges(block: bytes) -> Iterator[tuple[int, int]]:
    """``block`` cut at line ends into ranges of about ``PARSE_BLOCK`` bytes."""
    start = 0
    while start < len(block):
        cut = block.find(b"\n", start + PARSE_BLOCK - 1)
        stop = len(block) if cut < 0 else cut + 1
        yield start, stop
        start = stop


# ---------------------------------------------------------------- vectorised parser

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
    return batch_from_triplets(ids, row[nonzero], col[nonzero], values[nonzero])


# ---------------------------------------------------------------- pyarrow parser (anything else)

_CONVERSION_ERROR = re.compile(
    r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to \w+: invalid value '(.*)'", re.S)


def _arrow_read(block: memoryview, names: list[str], types: dict[str, pa.DataType], sep: str,
                include: Optional[list[str]] = None) -> pa.Table:
    """``block`` as a table of columns ``names`` typed by ``types`` (only ``include`` when given)."""
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
    counts = to_counts(dense[rows, cols], lambda i: (ids[rows[i]], genes[cols[i]]), uri)
    keep = counts > 0
    return batch_from_triplets(ids, rows[keep], cols[keep], counts[keep])
