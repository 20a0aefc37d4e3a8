"""How count-matrix problems are reported: what is wrong and where, never what the file holds.

``rejects`` is readable by everyone who can read the lake, and a count matrix is a private file. So a
``SlideError`` detail raised by a matrix format names the file, the place (line number of a text file,
entry of an HDF5 dataset, barcode of a 10x matrix), the column (gene name and column number, or field
number) and the kind of problem (not a number, not an integer, negative, too large, wrong number of
fields, not valid UTF-8, ...), but never quotes a cell value or a line.

Identifiers are not content: spot ids (the lake's ``spot_id`` column) and gene names (the ``genes``
table) may be named. Messages of pyarrow, the codecs and ``int()`` quote the text they choke on, and
gzip quotes bytes of a bad header, so :func:`unreadable` keeps only the exception's type (and, for
other ``OSError`` s, the I/O layer's own message: S3 and HDF5 errors name objects, never data).

Text must be UTF-8: gene names and spot ids of delimited-text matrices, 10x ``features.tsv`` /
``barcodes.tsv`` and HDF5 string datasets. Invalid bytes reject the slide with ``text_not_utf8``
naming the file, the line (or dataset entry), the field and the byte offset. Decoding as Latin-1
instead would be a guess (cp1252? Mac Roman?), and a spot id decoded one way here and another way by
the coordinate reader would silently fail to match.
"""
from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Iterator

import pyarrow as pa

from stlake.ingestion.records import SlideError, describe_input_error

NOT_UTF8 = "text_not_utf8"


@contextlib.contextmanager
def unreadable(uri: str) -> Iterator[None]:
    """Turn I/O and format errors into ``SlideError`` naming ``uri`` and the kind of error, not its text."""
    try:
        yield
    except SlideError:
        raise
    except (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error, pa.ArrowException) as error:
        reason = NOT_UTF8 if isinstance(error, UnicodeError) else "expression_unreadable"
        raise SlideError(reason, f"{uri}: {describe_input_error(error)}") from None


def line_number(data: bytes, offset: int) -> int:
    """1-based number of the line holding byte ``offset`` of ``data``."""
    return data.count(b"\n", 0, offset) + 1


def decode_text(data: bytes, uri: str, sep: str = "\t") -> str:
    """``data`` (the whole text of ``uri``) decoded as UTF-8, or ``text_not_utf8`` naming line, field and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        field = data.count(sep.encode(), line_start, error.start) + 1
        raise SlideError(NOT_UTF8, f"{uri} line {line_number(data, error.start)}, field {field}: not valid UTF-8 "
                                   f"(byte {error.start - line_start + 1} of the line)") from None


def decode_entries(values: Iterable[object], uri: str, dataset: str, first: int = 0) -> list[str]:
    """Strings of an HDF5 string dataset (bytes decoded as UTF-8); ``first`` = index of the first value.

    Invalid UTF-8 raises ``text_not_utf8`` naming the dataset and its 1-based entry.
    """
    out = []
    for index, value in enumerate(values):
        if not isinstance(value, bytes):
            out.append(str(value))
            continue
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise SlideError(NOT_UTF8, f"{uri}: dataset {dataset}, entry {first + index + 1}: not valid UTF-8 "
                                       f"(byte {error.start} of the entry)") from None
    return out
