"""PNG: the IHDR header, the header probe, chunk writing and the streaming reader for PNGs over budget.

A PNG within budget is decoded whole by ``region._CachedReader`` (``decode_png``); one over budget is
streamed top to bottom by ``_PngStreamReader``: the IDAT data is inflated incrementally and each strip
of rows is re-wrapped as a small PNG and decoded by OpenCV, so only a strip is ever held. Interlaced
PNGs over budget cannot be streamed.

Damage is ``image_corrupt``, checked on the whole stream whichever way it is read: the probe refuses
a header claiming more scanline bytes than the file could inflate to (deflate packs at most 1032:1),
``decode_png`` checks every chunk's CRC (libspng checks those of the IDAT chunks it reads past), one
run of IDAT chunks and IEND (libspng and libpng refuse image data shorter than the header, and a wrong
zlib checksum), and the streaming reader checks CRCs as it goes and, in
``finish``, inflates what the reads did not reach: every row down to the header's height, the end of
the zlib stream, and the chunks up to IEND. Data past the header's last row is ignored, as libpng does.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Optional

import cv2
import imagecodecs
import numpy as np

from stlake.ingestion.images.base import (
    FileBytes,
    ImageInfo,
    RegionReader,
    _check_tail,
    _file_size,
    _imdecode,
    _MemReader,
    _SeqReader,
    corrupt,
    describe_error,
)
from stlake.ingestion.records import SlideError
from stlake.lake import storage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
#: Deflate's best ratio: a 258-byte match coded in two bits.
_MAX_DEFLATE_RATIO = 1032


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, ``kind``, ``data`` and its CRC."""
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))))


IEND_CHUNK = png_chunk(b"IEND", b"")


@dataclass(frozen=True)
class _PngHeader:
    """The IHDR fields the readers need."""

    width: int
    height: int
    depth: int
    color_type: int
    interlace: int

    @property
    def samples(self) -> int:
        """Samples per pixel as stored (palette = 1 index)."""
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[self.color_type]

    @property
    def rowbytes(self) -> int:
        """Bytes of one unfiltered scanline."""
        return self._rowbytes(self.width)

    def _rowbytes(self, width: int) -> int:
        return (width * self.samples * self.depth + 7) // 8

    def scanline_bytes(self) -> int:
        """Bytes the IDAT data must inflate to: filter byte + scanline, each row (of each pass when interlaced)."""
        if not self.interlace:
            return self.height * (self.rowbytes + 1)
        total = 0
        for x0, y0, dx, dy in _ADAM7:
            cols, rows = -(-max(0, self.width - x0) // dx), -(-max(0, self.height - y0) // dy)
            total += rows * (self._rowbytes(cols) + 1) if cols else 0
        return total


def _parse_ihdr(head: bytes) -> _PngHeader:
    """The IHDR of a PNG's first 33 bytes, checked; ``SlideError`` when it is invalid."""
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[8:16] != b"\0\0\0\rIHDR":
        raise SlideError("image_unreadable", "PNG without a valid IHDR chunk")
    if struct.unpack(">I", head[29:33])[0] != zlib.crc32(head[12:29]):
        raise corrupt("PNG IHDR chunk at offset 8 fails its CRC check (damaged)")
    width, height, depth, color_type, comp, filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if width == 0 or height == 0 or depth not in _PNG_DEPTHS.get(color_type, ()) \
            or comp != 0 or filt != 0 or interlace > 1:
        raise SlideError("image_unreadable", f"PNG IHDR is invalid ({width}x{height}, bit depth {depth}, "
                                             f"color type {color_type})")
    return _PngHeader(width, height, depth, color_type, interlace)


def _probe_png(fh: BinaryIO) -> tuple[ImageInfo, _PngHeader]:
    """Info and IHDR of an open PNG; the file must end with its IEND chunk."""
    fh.seek(0)
    header = _parse_ihdr(fh.read(33))
    _check_tail(fh, b"IEND", 33, "PNG")
    _check_plausible_size(header, _file_size(fh))
    channels = 3 if header.color_type == 3 else header.samples
    return ImageInfo(header.width, header.height, channels, "png", False), header


def _check_plausible_size(header: _PngHeader, size: int) -> None:
    """A header claiming more scanlines than the file could inflate to is a lie (``image_corrupt``)."""
    need = -(-header.scanline_bytes() // _MAX_DEFLATE_RATIO)
    if size < need:
        raise corrupt(f"PNG header claims {header.width}x{header.height} pixels, but the file's {size} bytes cannot "
                      f"hold them (their {header.scanline_bytes()} bytes of scanlines need at least {need} bytes "
                      f"even at deflate's best ratio of {_MAX_DEFLATE_RATIO}:1)")


def _chunk_name(kind: bytes) -> str:
    """``IDAT chunk`` and the like; a type that is not four ASCII letters is not quoted."""
    return f"{kind.decode('ascii')} chunk" if kind.isascii() and kind.isalpha() else "chunk with an invalid type"


def _chunk_body(reader: _SeqReader, offset: int, kind: bytes, length: int, keep: bool = False) -> bytes:
    """The rest of the chunk whose 8-byte head (at ``offset``) was just read, its CRC checked.

    Returns the chunk's data when ``keep`` (else ``b""``); ``image_corrupt`` when it is cut or damaged.
    """
    if length > 0x7FFFFFFF:
        raise corrupt(f"PNG {_chunk_name(kind)} at offset {offset} has an invalid length")
    crc, left, parts = zlib.crc32(kind), length, []
    while left:
        piece = reader.read(min(left, 1 << 20))
        if not piece:
            break
        crc, left = zlib.crc32(piece, crc), left - len(piece)
        if keep:
            parts.append(piece)
    stored = reader.read(4)
    if left or len(stored) < 4:
        raise corrupt(f"PNG ends inside its {_chunk_name(kind)} at offset {offset} (truncated)")
    if struct.unpack(">I", stored)[0] != crc:
        raise corrupt(f"PNG {_chunk_name(kind)} at offset {offset} fails its CRC check (damaged)")
    return b"".join(parts)


def _check_chunks_to_iend(reader: _SeqReader, idat_seen: bool, decoded: bool = False) -> None:
    """Chunks from the reader's position to IEND: CRCs, a single run of IDAT chunks, IEND present.

    ``decoded``: libspng has decoded the image, checking the CRC of every IDAT chunk it read past (to
    the next IDAT chunk) and the image data's zlib checksum. The CRCs of IDAT chunks followed by another
    one are then not computed again (so IDAT chunks after the end of the zlib stream, which no decoder
    reads, go unchecked but for the last); that of the run's last, which libspng does not check, is.
    """
    in_idat = False
    while True:
        offset = reader.position
        head = reader.read(8)
        if len(head) < 8:
            raise corrupt(f"PNG ends at offset {offset} before its IEND chunk (truncated)")
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT" and idat_seen and not in_idat:
            raise corrupt(f"PNG has a second run of IDAT chunks at offset {offset} (its image data is split)")
        in_idat = kind == b"IDAT"
        idat_seen = idat_seen or in_idat
        if decoded and in_idat and length <= 0x7FFFFFFF and reader.peek(length + 8, 4) == b"IDAT":
            reader.skip(length + 4)
            continue
        _chunk_body(reader, offset, kind, length)
        if kind == b"IEND":
            if not idat_seen:
                raise corrupt("PNG has no image data (IDAT chunk) before its IEND chunk")
            return


#: Color types libspng decodes here (8-bit RGB and RGBA); others go through OpenCV.
_SPNG_COLOR_TYPES = (2, 6)


def _spng_bgr(data: FileBytes, header: _PngHeader) -> Optional[np.ndarray]:
    """An 8-bit RGB(A) PNG decoded by libspng (imagecodecs) as BGR, as ``cv2.imdecode(IMREAD_COLOR)`` gives it.

    libspng inflates and unfilters faster than OpenCV's libpng (``bench/bench_png.py``). RGB comes back
    as a view with the channels reversed (no copy: tiles are copied out of it anyway); alpha is dropped
    without compositing, as OpenCV does. None when the PNG is not one it is used for, or when libspng
    refuses it (OpenCV then decides).
    """
    if header.depth != 8 or header.color_type not in _SPNG_COLOR_TYPES:
        return None
    try:
        rgb = imagecodecs.spng_decode(data)
    except imagecodecs.SpngError:
        return None
    if rgb.ndim != 3 or rgb.shape[:2] != (header.height, header.width):
        return None
    if rgb.shape[2] == 4:
        return cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGR)
    return rgb[:, :, ::-1]


def decode_png(data: FileBytes, header: _PngHeader, flags: int) -> np.ndarray:
    """A whole PNG held in memory, its chunks checked, decoded with ``flags``; ``image_corrupt`` when damaged.

    Color decodes of 8-bit RGB(A) go through libspng (:func:`_spng_bgr`), then the chunks are checked
    without the IDAT CRCs libspng checked. The rest, and what libspng refuses, get every chunk checked
    first (a damaged one is named), then OpenCV's decode.
    """
    fast = _spng_bgr(data, header) if flags & ~cv2.IMREAD_IGNORE_ORIENTATION == cv2.IMREAD_COLOR else None
    _check_chunks_to_iend(_MemReader(data, 8), idat_seen=False, decoded=fast is not None)
    image = fast if fast is not None else _imdecode(data, flags)
    if image is None:
        raise corrupt(f"PNG image data is damaged or shorter than its header's {header.width}x{header.height} "
                      "(libpng refuses it)")
    return image


class _PngStreamReader(RegionReader):
    """A non-interlaced PNG over budget, decoded strip by strip from top to bottom.

    Each strip of rows ``[a, b)`` becomes a small PNG whose first row is the reconstructed row
    ``a - 1`` (filter 0) followed by the original filtered scanlines of rows ``a..b-1`` (copied
    verbatim; they reference the previous row), stored uncompressed and decoded by OpenCV with
    ``IMREAD_UNCHANGED``. Palette images are decoded as gray (the indices) and mapped through the
    palette here, so the raw bytes of the last row can be rebuilt for the next strip. Results are
    bit-identical to one ``cv2.imdecode(IMREAD_COLOR)`` of the whole file.

    ``read_rows`` with ``y0`` above the current stream position restarts the stream from the first
    IDAT chunk (correct but slow): callers should go top to bottom. ``finish`` (on leaving a ``with``
    block) checks the rest of the stream, so a PNG cut below the last row read is refused too.
    """

    streaming = True

    def __init__(self, uri: str, info: ImageInfo, budget_bytes: int, header: _PngHeader) -> None:
        super().__init__(info, budget_bytes)
        self._uri, self._h = uri, header
        self._fh = storage.open_input(uri)
        self._palette, self._idat_offset = self._prelude()
        self._mini_type = 0 if header.color_type == 3 else header.color_type
        self._scale = 255 // ((1 << header.depth) - 1) if header.depth < 8 else 1
        self._strip_rows = self._rows_per_strip(header, budget_bytes)
        self.restarts = 0
        self._restart()

    @staticmethod
    def _rows_per_strip(header: _PngHeader, budget_bytes: int) -> int:
        """Rows decoded at once: all their buffers within an eighth of the budget (64 MiB at most)."""
        out_row = header.width * 3
        unchanged_row = header.width * (4 if header.samples > 1 else 1) * (2 if header.depth == 16 else 1)
        per_row = 3 * (header.rowbytes + 1) + unchanged_row + out_row
        return max(1, min(header.height, min(budget_bytes // 8, 64 << 20) // per_row))

    def _fail(self, detail: str) -> SlideError:
        return corrupt(f"{self._uri}: {detail}")

    def _prelude(self) -> tuple[Optional[np.ndarray], int]:
        """BGR palette (256 x 3, for color type 3) and the offset of the first IDAT chunk."""
        reader = _SeqReader(self._fh, 8, 1 << 16)
        palette = None
        while True:
            offset = reader.position
            head = reader.read(8)
            if len(head) < 8:
                raise self._fail(f"PNG ends at offset {offset} before its image data (IDAT chunk)")
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                break
            try:
                body = _chunk_body(reader, offset, kind, length, keep=kind == b"PLTE")
            except SlideError as error:
                raise self._fail(error.detail) from None
            if kind == b"PLTE":
                rgb = np.frombuffer(body[: len(body) // 3 * 3], np.uint8).reshape(-1, 3)
                palette = np.zeros((256, 3), np.uint8)
                palette[: len(rgb)] = rgb[:256, ::-1]
        if kind != b"IDAT":
            raise self._fail("PNG has no image data (IDAT chunk) before its IEND chunk")
        if self._h.color_type == 3 and palette is None:
            raise self._fail("palette PNG without a PLTE chunk")
        return palette, offset

    def _restart(self) -> None:
        """Go back to the first row (counted in ``restarts`` unless nothing was read yet)."""
        if getattr(self, "_row", 0):
            self.restarts += 1
        self._pieces = self._idat_pieces()
        self._idat_end = 0  # set when the IDAT chunks are read to their end
        self._inflate = zlib.decompressobj()
        self._pending = b""
        self._row = 0
        self._prev = bytes(self._h.rowbytes)

    def _idat_pieces(self) -> Iterator[bytes]:
        """The concatenated IDAT payload in pieces of at most 1 MiB, CRCs checked.

        When the IDAT chunks end, ``_idat_end`` is the offset of the chunk after them.
        """
        reader = _SeqReader(self._fh, self._idat_offset, 4 << 20)
        while True:
            offset = reader.position
            head = reader.read(8)
            if len(head) < 8:
                raise self._fail(f"PNG ends at offset {offset} inside its image data (truncated)")
            length, kind = struct.unpack(">I4s", head)
            if kind != b"IDAT":
                self._idat_end = offset
                return
            crc, left = zlib.crc32(kind), length
            while left:
                piece = reader.read(min(left, 1 << 20))
                if not piece:
                    raise self._fail(f"PNG ends inside its IDAT chunk at offset {offset} (truncated)")
                crc, left = zlib.crc32(piece, crc), left - len(piece)
                yield piece
            stored = reader.read(4)
            if len(stored) < 4:
                raise self._fail(f"PNG ends inside its IDAT chunk at offset {offset} (truncated)")
            if struct.unpack(">I", stored)[0] != crc:
                raise self._fail(f"PNG IDAT chunk at offset {offset} fails its CRC check (damaged)")

    def _filtered(self, nbytes: int) -> bytes:
        """The next ``nbytes`` of filtered scanlines."""
        parts, have = [], 0
        while have < nbytes:
            if not self._pending:
                self._pending = next(self._pieces, b"")
                if not self._pending:
                    raise self._fail(f"PNG image data ends before row {self._row} of {self._h.height}")
            try:
                piece = self._inflate.decompress(self._pending, nbytes - have)
            except zlib.error as error:
                raise self._fail(f"PNG image data is corrupt near row {self._row} ({describe_error(error)})") \
                    from None
            self._pending = self._inflate.unconsumed_tail
            if piece:
                parts.append(piece)
                have += len(piece)
            elif self._inflate.eof:
                raise self._fail(f"PNG image data ends before row {self._row} of {self._h.height}")
        return b"".join(parts)

    def _decode_rows(self, n: int) -> np.ndarray:
        """The next ``n`` rows as OpenCV decodes them with ``IMREAD_UNCHANGED``."""
        h = self._h
        payload = zlib.compress(b"".join((b"\x00", self._prev, self._filtered(n * (h.rowbytes + 1)))), 0)
        ihdr = struct.pack(">IIBBBBB", h.width, n + 1, h.depth, self._mini_type, 0, 0, 0)
        png = b"".join((PNG_SIGNATURE, png_chunk(b"IHDR", ihdr), png_chunk(b"IDAT", payload), IEND_CHUNK))
        del payload
        rows = _imdecode(png, cv2.IMREAD_UNCHANGED)
        if rows is None or rows.shape[0] != n + 1:
            raise self._fail(f"PNG image data is corrupt in rows {self._row}..{self._row + n - 1}")
        rows = rows[1:]
        self._prev = self._raw_row(rows[-1])
        self._row += n
        return rows

    def _raw_row(self, row: np.ndarray) -> bytes:
        """Rebuild the unfiltered PNG bytes of one decoded row (the next strip's reference row)."""
        h = self._h
        if row.ndim == 2:
            order = {2: [2, 1, 0], 4: [0, 3], 6: [2, 1, 0, 3]}[h.color_type]
            row = row[:, order]
        if h.depth == 16:
            return np.ascontiguousarray(row, dtype=">u2").tobytes()
        if h.depth == 8:
            return np.ascontiguousarray(row).tobytes()
        per = 8 // h.depth
        values = (row // self._scale).astype(np.uint8)
        values = np.concatenate([values, np.zeros((-len(values)) % per, np.uint8)]).reshape(-1, per)
        shifts = (h.depth * np.arange(per - 1, -1, -1)).astype(np.uint8)
        return np.bitwise_or.reduce(values << shifts, axis=1).astype(np.uint8).tobytes()

    def _to_bgr(self, rows: np.ndarray) -> np.ndarray:
        """Rows as decoded with ``IMREAD_UNCHANGED`` -> BGR ``uint8`` (palette applied)."""
        if self._palette is not None:
            return self._palette[rows // self._scale if self._scale > 1 else rows]
        if rows.dtype == np.uint16:
            rows = (rows >> 8).astype(np.uint8)
        if rows.ndim == 2:
            return cv2.cvtColor(rows, cv2.COLOR_GRAY2BGR)
        if rows.shape[2] == 4:
            return cv2.cvtColor(rows, cv2.COLOR_BGRA2BGR)
        return rows

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)``: skips forward to ``y0``, or restarts the stream when ``y0`` was passed."""
        y0, y1, _, _ = self._clip(y0, y1, 0, 0)
        if y0 < self._row:
            self._restart()
        while self._row < y0:
            self._note(self._decode_rows(min(self._strip_rows, y0 - self._row)).nbytes)
        out = np.empty((y1 - y0, self.info.width, 3), np.uint8)
        pos = 0
        while pos < len(out):
            rows = self._decode_rows(min(self._strip_rows, len(out) - pos))
            bgr = self._to_bgr(rows)
            self._note(out.nbytes + rows.nbytes + bgr.nbytes)
            out[pos:pos + len(bgr)] = bgr
            pos += len(bgr)
        return out

    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        """Whole rows ``[y0, y1)`` streamed, then cut to columns ``[x0, x1)``."""
        _, _, x0, x1 = self._clip(y0, y1, x0, x1)
        return self.read_rows(y0, y1)[:, x0:x1]

    def finish(self) -> None:
        """Check what the reads did not reach: the rows below, the zlib stream's end, the chunks to IEND.

        The rows are only inflated (not decoded); rows past the header's height are ignored.
        """
        row_bytes = self._h.rowbytes + 1
        while self._row < self._h.height:
            rows = min(self._strip_rows, self._h.height - self._row)
            self._filtered(rows * row_bytes)
            self._row += rows
        while not self._inflate.eof:
            if not self._pending:
                self._pending = next(self._pieces, b"")
                if not self._pending:
                    raise self._fail("PNG image data ends before the end of its compressed stream (truncated)")
            try:
                self._inflate.decompress(self._pending, 1 << 20)
            except zlib.error as error:
                raise self._fail(f"PNG image data is corrupt after its last row ({describe_error(error)})") from None
            self._pending = self._inflate.unconsumed_tail
        for _ in self._pieces:  # the IDAT chunks left after the stream's end (their CRCs are checked)
            pass
        try:
            _check_chunks_to_iend(_SeqReader(self._fh, self._idat_end, 1 << 16), idat_seen=True)
        except SlideError as error:
            raise self._fail(error.detail) from None

    def close(self) -> None:
        """Close the file."""
        self._fh.close()
