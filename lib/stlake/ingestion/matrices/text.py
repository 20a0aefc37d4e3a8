"""Delimited-text count matrices (rows = spots, header = genes): planning by byte range and reading lines.

Shared by the dense CSV and legacy ST TSV formats, which differ only in their default separator.
The first field of a row is the spot id; the header names the genes after a corner cell, or (R's
``write.csv``) without one. Plain files are cut into byte ranges the Hadoop way: chunk
``[start, stop)`` owns every line that *starts* in it, so no task reads more than its range plus one
line. Gzipped files are one chunk, streamed. Lines are read in ~``READ_BLOCK`` blocks of whole lines
and parsed by :mod:`.text_parse`. Hand-written rather than pandas: a task reads only its byte range,
and memory stays bounded by the block size whatever the file size.

Errors name the file and the line number (counted from the start of the file, header = line 1, only
when an error is raised), the column and the kind of problem, never the text (:mod:`.errors`). The
header and the spot ids must be UTF-8: other bytes reject the slide with ``text_not_utf8``.
"""
from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Optional, Protocol

from stlake.ingestion.matrices.batch import ExprChunk, ExprPlan, SparseBatch, rebatch
from stlake.ingestion.matrices.errors import NOT_UTF8
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.text_parse import Locate, parse_text_block
from stlake.ingestion.records import ExpressionSource, MatrixKind, SlideError, describe_input_error
from stlake.lake import storage

READ_BLOCK = 8 << 20  # bytes read from storage at once; also the unit of the (slower) pyarrow parse
TEXT_CHUNK_KINDS = ("bytes", "gzip")  # the chunk kinds ``plan_text`` makes


class ByteStream(Protocol):
    """A readable, seekable binary stream: a storage file or a ``gzip.GzipFile`` over one."""

    def read(self, size: int = ..., /) -> bytes: ...  # noqa: D102

    def seek(self, offset: int, whence: int = ..., /) -> int: ...  # noqa: D102

    def tell(self) -> int: ...  # noqa: D102


def separator(src: ExpressionSource, default: str) -> str:
    """The field separator: option ``sep`` of ``src``, else the format's ``default``; one character."""
    sep = src.options.get("sep") or default
    if len(sep) != 1:
        raise SlideError("expression_unreadable", f"separator must be one character, got {sep!r} ({src.uri})")
    return sep


# ---------------------------------------------------------------- planning

def _read_line(handle: ByteStream) -> bytes:
    """Bytes from the current position through the next newline (or EOF); the handle is left after them."""
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


def _split_fields(line: bytes, sep: str, uri: str, number: int) -> list[str]:
    """The fields of line ``number`` of ``uri`` (CSV quoting rules), stripped; [] for an empty line."""
    try:
        text = line.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as error:
        field = line.count(sep.encode(), 0, error.start) + 1
        line_name = f"line {number} (header)" if number == 1 else f"line {number}"
        raise SlideError(NOT_UTF8, f"{uri} {line_name}, field {field}: not valid UTF-8 "
                                   f"(byte {error.start + 1} of the line)") from None
    return [field.strip() for field in next(csv.reader([text], delimiter=sep))] if text else []


def _text_genes(header: list[str], first_row: list[str], uri: str) -> list[str]:
    """Gene names from the header: after its first cell, or all of it when rows have one more field."""
    if not header:
        raise SlideError("expression_unreadable", f"{uri} line 1: no header (the file is empty or starts with a "
                                                  "blank line)")
    if not first_row or len(first_row) == len(header):
        return header[1:]
    if len(first_row) == len(header) + 1:
        return header
    raise SlideError("expression_unreadable", f"{uri}: the header (line 1) has {len(header)} fields but line 2 has "
                                              f"{len(first_row)}")


def plan_text(src: ExpressionSource, chunk_bytes: int, default_sep: str) -> ExprPlan:
    """Header -> genes; byte-range chunks of the data lines (one ``gzip`` chunk when compressed)."""
    sep, size = separator(src, default_sep), storage.size(src.uri)
    with storage.open_decompressed(src.uri) as (handle, compressed):
        header = _read_line(handle)
        first = _read_line(handle)
    genes = _text_genes(_split_fields(header, sep, src.uri, 1), _split_fields(first, sep, src.uri, 2), src.uri)
    if not first:
        raise SlideError("expression_unreadable", f"{src.uri}: no data lines after the header (line 1)")
    data_start = len(header)
    if compressed:
        chunks, hint = [ExprChunk("gzip", 0, size)], None
    else:
        chunks = [ExprChunk("bytes", s, min(s + chunk_bytes, size)) for s in range(data_start, size, chunk_bytes)]
        hint = max(1, round((size - data_start) / len(first))) if first.strip() else 0
    nones: list[Optional[str]] = [None] * len(genes)
    return ExprPlan(genes, list(nones), list(nones), chunks, hint)


# ---------------------------------------------------------------- reading lines

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


def _line_blocks(handle: ByteStream, position: int, stop: Optional[int]) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of whole-line blocks from ``position`` (a line start) to the last line starting before ``stop``.

    Each block ends with a newline (one is added after a last line without it).
    """
    buffer = b""
    while True:
        piece = handle.read(READ_BLOCK)
        eof = not piece
        buffer += piece
        if stop is not None and position + len(buffer) >= stop:
            cut = buffer.find(b"\n", max(0, stop - 1 - position))
            if cut >= 0:
                yield position, buffer[:cut + 1]
                return
            if eof:
                break
            continue
        if eof:
            break
        cut = buffer.rfind(b"\n")
        if cut >= 0:
            yield position, buffer[:cut + 1]
            position, buffer = position + cut + 1, buffer[cut + 1:]
    if buffer.strip():
        yield position, buffer if buffer.endswith(b"\n") else buffer + b"\n"


def _gzip_blocks(raw: ByteStream, uri: str) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of the data lines of a gzipped matrix; truncated or corrupt data says how far it was read."""
    handle = gzip.GzipFile(fileobj=raw)
    position = lines = 0
    try:
        position = len(_read_line(handle))  # header
        lines = 1
        for offset, block in _line_blocks(handle, position, None):
            yield offset, block
            position, lines = offset + len(block), lines + block.count(b"\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise SlideError("expression_unreadable", f"{uri}: {describe_input_error(error)}; lines 1 to {lines} "
                                                  f"were read ({position} bytes of text)") from None


def _text_blocks(src: ExpressionSource, chunk: ExprChunk) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of the chunk's lines in blocks of about ``READ_BLOCK`` bytes of whole lines.

    ``offset`` is the block's position in the (uncompressed) text.
    """
    with storage.open_input(src.uri) as raw:
        if chunk.kind == "gzip":
            yield from _gzip_blocks(raw, src.uri)
            return
        first = _first_line_start(raw, chunk.start)
        if first < chunk.stop:
            raw.seek(first)
            yield from _line_blocks(raw, first, chunk.stop)


def line_number(uri: str, offset: int) -> Optional[int]:
    """1-based line of byte ``offset`` of the (uncompressed) text of ``uri``; None when it cannot be counted.

    Reads the file from its start: only called to name the line of an error.
    """
    newlines, left = 0, offset
    try:
        with storage.open_decompressed(uri) as (handle, _):
            while left > 0:
                piece = handle.read(min(left, READ_BLOCK))
                if not piece:
                    break
                newlines, left = newlines + piece.count(b"\n"), left - len(piece)
    except (OSError, EOFError, zlib.error):
        return None
    return newlines + 1


def _locator(uri: str, block_offset: int) -> Locate:
    """Where a line of the block at ``block_offset`` of ``uri`` is: ``uri line N``."""
    def locate(offset: int) -> str:
        number = line_number(uri, block_offset + offset)
        return f"{uri} line {number}" if number else f"{uri} (line at byte {block_offset + offset})"
    return locate


def read_text_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk, default_sep: str) -> Iterator[SparseBatch]:
    """The rows of one ``bytes`` / ``gzip`` chunk, in batches of at most ``MAX_BATCH_ROWS`` rows."""
    sep = separator(src, default_sep)
    yield from rebatch(batch for offset, block in _text_blocks(src, chunk)
                       for batch in parse_text_block(block, plan.genes, sep, src.uri, _locator(src.uri, offset)))


def delimited_format(kind: MatrixKind, default_sep: str) -> MatrixFormat:
    """The format of a delimited-text matrix whose separator defaults to ``default_sep`` (option ``sep``)."""
    def plan(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
        return plan_text(src, chunk_bytes, default_sep)

    def read(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
        return read_text_chunk(src, expr_plan, chunk, default_sep)

    return MatrixFormat(kind, plan, read, TEXT_CHUNK_KINDS)
