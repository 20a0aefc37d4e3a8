"""Blocks of whole delimited-text lines (``id,count,count,...``) -> ``SparseBatch`` es: the hot path.

Shared by the dense CSV and legacy ST TSV formats (:mod:`.text` cuts the files into blocks). A block
is parsed in ~``PARSE_BLOCK`` pieces by a vectorised numpy parser that handles digits with an optional
``.0`` tail; from the first piece it cannot handle on (signs, fractions, empty cells, quoted
separators, blank lines) the rest of the block goes through ``pyarrow.csv``, whose values are then
validated. Hand-written rather than pandas: no Python work per value, memory bounded by the block
instead of a dense frame of the file, exact integers.

Errors say what is wrong and where, never the content (:mod:`.errors`): the line (a ``Locate``
callback turns a byte offset of the block into ``file line N``), the spot id, the column (number and
gene) and the kind of problem. A block that is not ASCII must be valid UTF-8 (``text_not_utf8``).
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stlake.ingestion.matrices.batch import INT32_MAX, SparseBatch, batch_from_triplets, to_counts
from stlake.ingestion.matrices.errors import NOT_UTF8
from stlake.ingestion.records import SlideError

log = logging.getLogger(__name__)

PARSE_BLOCK = 1 << 20  # bytes of text one vectorised parse handles (cache friendly)

_NL, _CR, _DOT, _ZERO = 10, 13, 46, 48

#: Byte offset of a line start in the block being parsed -> where that line is (``x.csv line 57``).
Locate = Callable[[int], str]


def block_locator(uri: str) -> Locate:
    """Where a line is when only the block is known: its byte offset in the block."""
    return lambda offset: f"{uri} (line at byte {offset} of a parsed block)"


def shifted(locate: Locate, start: int) -> Locate:
    """``locate`` for the part of a block that starts at byte ``start``."""
    return lambda offset: locate(start + offset)


def parse_text_block(block: bytes, genes: list[str], sep: str, uri: str,
                     locate: Optional[Locate] = None) -> Iterator[SparseBatch]:
    """Sparse rows of a block of whole text lines; ``locate`` names a line of the block in errors.

    The vectorised parser takes ~``PARSE_BLOCK`` pieces; from the first piece it cannot handle on, the
    rest of the block goes through pyarrow in one call (its cost per call grows with the column count).
    """
    where = locate or block_locator(uri)
    check_utf8(block, genes, sep, where)
    view = memoryview(block)
    for start, stop in _parse_ranges(block):
        batch = _parse_fast(view[start:stop], len(genes), sep)
        if batch is None:
            log.debug("%s: %d bytes of text parsed by pyarrow", uri, len(block) - start)
            yield _parse_careful(view[start:], genes, sep, uri, shifted(where, start))
            return
        yield batch


def column_name(field: int, genes: list[str]) -> str:
    """Field ``field`` (1-based) of a data line, for messages: the spot id or a gene's column."""
    if field == 1:
        return "column 1 (spot id)"
    return f"column {field} (gene {genes[field - 2]!r})" if 2 <= field <= len(genes) + 1 else f"column {field}"


def check_utf8(block: bytes, genes: list[str], sep: str, locate: Locate) -> None:
    """``text_not_utf8`` naming line, column and byte when ``block`` is not valid UTF-8 (ASCII is)."""
    data = block if isinstance(block, bytes) else bytes(block)
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.rfind(b"\n", 0, error.start) + 1
        field = data.count(sep.encode(), line, error.start) + 1
        raise SlideError(NOT_UTF8, f"{locate(line)}, {column_name(field, genes)}: not valid UTF-8 "
                                   f"(byte {error.start - line + 1} of the line)") from None


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
    return np.array([data[a:b].decode("utf-8").strip().strip('"')
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

def _arrow_read(block: memoryview, names: list[str], types: dict[str, pa.DataType], sep: str,
                strings_can_be_null: bool = False) -> pa.Table:
    """``block`` as a table of columns ``names`` typed by ``types``."""
    return pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(block)),
        read_options=pacsv.ReadOptions(column_names=names, block_size=max(len(block) + 1, 1 << 16),
                                       use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=sep),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=strings_can_be_null))


def _row_offsets(block: memoryview) -> list[int]:
    """Byte offset of every non-empty line of ``block``: pyarrow's row ``i`` is the ``i``-th (blank lines skipped)."""
    data, offsets, start = bytes(block), [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if data[start:end].rstrip(b"\r"):
            offsets.append(start)
        start = end + 1
    return offsets


def _field_count(line: bytes, sep: str) -> int:
    """Number of fields of one line (CSV quoting rules when it has quotes)."""
    if b'"' not in line:
        return line.count(sep.encode()) + 1
    return len(next(csv.reader([line.decode("utf-8", errors="ignore")], delimiter=sep), []))


def _not_a_number(column: pa.ChunkedArray) -> Optional[int]:
    """Row of the first value of a string column that is neither null nor a number; None when all are."""
    try:
        pc.cast(column, pa.float64())
        return None
    except pa.ArrowInvalid:
        pass
    for row, value in enumerate(column.to_pylist()):
        try:
            pc.cast(pa.array([value], pa.string()), pa.float64())
        except pa.ArrowInvalid:
            return row
    return None


def _line_of_row(block: memoryview, row: int, locate: Locate) -> str:
    """Where pyarrow's row ``row`` of ``block`` is."""
    offsets = _row_offsets(block)
    return locate(offsets[row]) if row < len(offsets) else f"{locate(0)} or below"


def _wrong_field_count(block: memoryview, width: int, sep: str) -> Optional[tuple[int, int]]:
    """(offset, fields) of the first non-empty line without ``width`` fields; None when all have them."""
    data = bytes(block)
    for offset in _row_offsets(block):
        end = data.find(b"\n", offset)
        fields = _field_count(data[offset:len(data) if end < 0 else end].rstrip(b"\r"), sep)
        if fields != width:
            return offset, fields
    return None


def _first_text_cell(block: memoryview, width: int, sep: str) -> Optional[tuple[int, int, str]]:
    """(row, field, spot id) of the first count cell that is neither empty / NA nor a number."""
    names = [f"c{j}" for j in range(width)]
    try:
        table = _arrow_read(block, names, {name: pa.string() for name in names}, sep, strings_can_be_null=True)
    except pa.ArrowInvalid:
        return None
    for j in range(1, width):
        row = _not_a_number(table.column(j))
        if row is not None:
            return row, j + 1, str(table.column(0)[row].as_py() or "").strip()
    return None


def _malformed(block: memoryview, genes: list[str], sep: str, locate: Locate) -> SlideError:
    """Why pyarrow could not read ``block`` as a spot id and numbers per line, and where; never the text."""
    width = len(genes) + 1
    wrong = _wrong_field_count(block, width, sep)
    if wrong is not None:
        offset, fields = wrong
        return SlideError("expression_unreadable", f"{locate(offset)}: wrong number of fields: {fields}, expected "
                                                   f"{width} (a spot id and {len(genes)} counts)")
    cell = _first_text_cell(block, width, sep)
    if cell is not None:
        row, field, spot = cell
        return SlideError("expression_unreadable", f"{_line_of_row(block, row, locate)}, spot {spot!r}, "
                                                   f"{column_name(field, genes)}: count is not a number")
    return SlideError("expression_unreadable", f"{locate(0)} or below: malformed rows (unreadable as a spot id "
                                               f"and {len(genes)} counts per line)")


def _parse_careful(block: memoryview, genes: list[str], sep: str, uri: str,
                   locate: Optional[Locate] = None) -> SparseBatch:
    """Pyarrow parse of a block (quotes, signs, fractions, blanks), validated; errors name line, spot and gene."""
    where = locate or block_locator(uri)
    names = [f"c{j}" for j in range(len(genes) + 1)]
    types = {name: pa.float64() for name in names[1:]}
    types[names[0]] = pa.string()
    try:
        table = _arrow_read(block, names, types, sep)
    except pa.ArrowInvalid:
        raise _malformed(block, genes, sep, where) from None
    ids = np.array([str(s).strip() for s in table.column(0).to_pylist()], dtype=object)
    dense = np.empty((table.num_rows, len(genes)), dtype=np.float64)
    for j in range(len(genes)):
        dense[:, j] = table.column(j + 1).to_numpy(zero_copy_only=False)
    rows, cols = np.nonzero(dense)  # NaN (empty / NA) counts as non-zero and is reported

    def place(i: int) -> str:
        line = _line_of_row(block, int(rows[i]), where)
        return f"{line}, spot {ids[rows[i]]!r}, {column_name(int(cols[i]) + 2, genes)}"

    counts = to_counts(dense[rows, cols], place)
    keep = counts > 0
    return batch_from_triplets(ids, rows[keep], cols[keep], counts[keep])
