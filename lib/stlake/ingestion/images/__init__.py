"""Slide images read region by region within a memory budget (BGR ``uint8`` arrays, OpenCV order).

No task may hold the whole decoded image when the slide is larger than its budget (default 4 GiB).
What each format can do:

* **TIFF** (striped, tiled, BigTIFF, pyramidal: level 0 of the largest series) is random access:
  ``read_region`` decodes only the strips/tiles that intersect the region, reading their bytes
  directly (nearby segments coalesced into one ranged read, which matters on S3). Uncompressed
  strips are read row by row, so even a single-strip giant TIFF works. JPEG-compressed segments
  are decoded with OpenCV (``JPEGTables`` merged in), others with tifffile's codecs (no, zlib,
  packbits, lzma, zstd without ``imagecodecs``; LZW or JPEG 2000 need ``imagecodecs`` installed).
* **PNG** within budget: one ``cv2.imdecode``, cached. Over budget it is streamed top to bottom:
  the IDAT data is inflated incrementally and each strip of rows is re-wrapped as a small PNG
  (previous reconstructed row + the original filtered scanlines) and decoded by OpenCV, so only a
  strip is ever held. Interlaced PNGs over budget cannot be streamed (``image_too_large``).
* **JPEG** within budget: one ``cv2.imdecode``, cached. Over budget: ``image_too_large``
  (baseline JPEG has no random access; convert such slides to tiled TIFF).

Conversions: gray is replicated to 3 channels, alpha is dropped (not composited), 16-bit samples
keep their high byte (as OpenCV does for PNG), TIFF palettes are applied, MinIsWhite is inverted.
EXIF orientation is ignored: pixels are addressed as stored, like the header's width and height.
Formats are recognised from magic bytes, never from the file extension.
"""
from __future__ import annotations

import abc
import contextlib
import os

# OpenCV refuses images over 2**30 pixels unless told otherwise (read on first decode).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))

import struct  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import BinaryIO, Optional

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from stlake.ingestion.records import SlideError  # noqa: E402
from stlake.lake import storage  # noqa: E402

DEFAULT_BUDGET = 4 * 1024 ** 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TAIL = 64 * 1024  # how far from the end a PNG IEND / JPEG EOI marker is looked for
_GIB = 1024 ** 3


# ----------------------------------------------------------------------------- formats and headers

def sniff_format(head: bytes) -> str:
    """``"png"``, ``"jpeg"`` or ``"tiff"`` from a file's first bytes; ``SlideError`` otherwise."""
    if head.startswith(PNG_SIGNATURE[: min(len(head), 8)]) and len(head) >= 4:
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if not head:
        raise SlideError("image_unreadable", "the image file is empty")
    raise SlideError("image_unreadable", f"not a PNG, JPEG or TIFF file (starts with {head[:8]!r})")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says; ``random_access`` = regions can be decoded without the rest."""

    width: int
    height: int
    channels: int
    format: str
    random_access: bool


def decoded_bytes(info: ImageInfo) -> int:
    """Bytes of the whole image decoded as 8-bit BGR."""
    return int(info.width) * int(info.height) * 3


@dataclass(frozen=True)
class _PngHeader:
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
        return (self.width * self.samples * self.depth + 7) // 8


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _parse_ihdr(head: bytes) -> _PngHeader:
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise SlideError("image_unreadable", "PNG without a valid IHDR chunk")
    width, height, depth, color_type, comp, filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if width == 0 or height == 0 or depth not in _PNG_DEPTHS.get(color_type, ()) \
            or comp != 0 or filt != 0 or interlace > 1:
        raise SlideError("image_unreadable", f"PNG IHDR is invalid ({width}x{height}, bit depth {depth}, "
                                             f"color type {color_type})")
    return _PngHeader(width, height, depth, color_type, interlace)


def _file_size(fh: BinaryIO) -> int:
    size = fh.seek(0, 2)
    return int(size if size is not None else fh.tell())


def _check_tail(fh: BinaryIO, marker: bytes, after: int, what: str) -> None:
    """The file's last bytes must contain ``marker`` (IEND / EOI), else it is truncated."""
    size = _file_size(fh)
    start = max(after, size - _TAIL)
    fh.seek(start)
    if marker not in fh.read(size - start):
        raise SlideError("image_unreadable", f"{what} is truncated (no {marker!r} end marker)")


def _probe_png(fh: BinaryIO) -> tuple[ImageInfo, _PngHeader]:
    fh.seek(0)
    header = _parse_ihdr(fh.read(33))
    _check_tail(fh, b"IEND", 33, "PNG")
    channels = 3 if header.color_type == 3 else header.samples
    return ImageInfo(header.width, header.height, channels, "png", False), header


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _probe_jpeg(fh: BinaryIO) -> ImageInfo:
    reader = _SeqReader(fh, 2, 64 * 1024)
    while True:
        byte = reader.read(1)
        if byte != b"\xff":
            raise SlideError("image_unreadable", "JPEG header is corrupt or truncated before the frame header")
        marker = 0xFF
        while marker == 0xFF:
            b = reader.read(1)
            if not b:
                raise SlideError("image_unreadable", "JPEG is truncated before the frame header")
            marker = b[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise SlideError("image_unreadable", "JPEG has no frame (SOF) header before its scan")
        seglen = reader.read(2)
        if len(seglen) < 2 or struct.unpack(">H", seglen)[0] < 2:
            raise SlideError("image_unreadable", "JPEG marker segment is corrupt")
        length = struct.unpack(">H", seglen)[0] - 2
        if marker in _SOF:
            body = reader.read(length)
            if len(body) < 6:
                raise SlideError("image_unreadable", "JPEG frame header is truncated")
            _, height, width, components = struct.unpack(">BHHB", body[:6])
            if width == 0 or height == 0:
                raise SlideError("image_unreadable", f"JPEG frame header gives a {width}x{height} image")
            _check_tail(fh, b"\xff\xd9", reader.position, "JPEG")
            return ImageInfo(width, height, components, "jpeg", False)
        reader.skip(length)


def probe_image(uri: str) -> ImageInfo:
    """Width, height, channels and format from the headers only (pixels are never decoded)."""
    return _probe(uri)[0]


@contextlib.contextmanager
def _header_errors(uri: str) -> Iterator[None]:
    """Header problems become ``SlideError`` naming ``uri``."""
    try:
        yield
    except SlideError as error:
        raise SlideError(error.reason, f"{uri}: {error.detail}") from None
    except (OSError, ValueError, struct.error, IndexError, KeyError) as error:
        raise SlideError("image_unreadable", f"{uri}: cannot read the image header ({error})") from None


def _parse_header(fh: BinaryIO) -> tuple[ImageInfo, Optional[_PngHeader], Optional[_TiffLevel]]:
    """Sniff and parse the header of an open file; a TIFF's level comes back open."""
    fmt = sniff_format(fh.read(16))
    if fmt == "png":
        info, header = _probe_png(fh)
        return info, header, None
    if fmt == "jpeg":
        return _probe_jpeg(fh), None, None
    level = _TiffLevel(fh)
    return level.info, None, level


def _open_probed(uri: str) -> tuple[BinaryIO, ImageInfo, Optional[_PngHeader], Optional[_TiffLevel]]:
    """``uri`` opened and its header parsed once; the caller closes the file (and a TIFF level)."""
    with _header_errors(uri):
        fh = storage.open_input(uri)
        try:
            return (fh, *_parse_header(fh))
        except BaseException:
            fh.close()
            raise


def _probe(uri: str) -> tuple[ImageInfo, Optional[_PngHeader]]:
    fh, info, png, level = _open_probed(uri)
    if level is not None:
        level.close()
    fh.close()
    return info, png


class _SeqReader:
    """Buffered sequential reads from a seekable file (few large reads: cheap on S3)."""

    def __init__(self, fh: BinaryIO, start: int, bufsize: int):
        self._fh, self._bufsize = fh, bufsize
        self._buf, self._pos, self._base = b"", 0, start  # _base = file offset of _buf[0]

    @property
    def position(self) -> int:
        return self._base + self._pos

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the file)."""
        if self._pos + n > len(self._buf):
            rest = self._buf[self._pos:]
            self._fh.seek(self._base + len(self._buf))
            more = self._fh.read(max(self._bufsize, n - len(rest)))
            self._base, self._buf, self._pos = self._base + self._pos, rest + more, 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def skip(self, n: int) -> None:
        if self._pos + n <= len(self._buf):
            self._pos += n
        else:
            self._base, self._buf, self._pos = self.position + n, b"", 0


# ----------------------------------------------------------------------------- readers

class RegionReader(abc.ABC):
    """Rows or regions of one image as ``H x W x 3`` BGR ``uint8``; a context manager.

    ``peak_decoded_bytes`` is the largest amount of decoded pixel data the reader held at once
    (the returned array included), so callers and tests can check the budget was respected.
    Returned arrays may be read-only views of a cache: copy before modifying.
    """

    streaming = False  # True: rows are produced top to bottom, going back means restarting

    def __init__(self, info: ImageInfo, budget_bytes: int):
        self.info = info
        self.budget_bytes = int(budget_bytes)
        self.peak_decoded_bytes = 0

    def _note(self, nbytes: int) -> None:
        self.peak_decoded_bytes = max(self.peak_decoded_bytes, int(nbytes))

    def _clip(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
        h, w = self.info.height, self.info.width
        y0, x0 = min(max(int(y0), 0), h), min(max(int(x0), 0), w)
        return y0, max(y0, min(int(y1), h)), x0, max(x0, min(int(x1), w))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` (clipped to the image), full width."""
        return self.read_region(y0, y1, 0, self.info.width)

    @abc.abstractmethod
    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``[y0, y1)`` x columns ``[x0, x1)``, clipped to the image.

        ``needed`` (optional, ``N x 4`` rows of ``y0, y1, x0, x1``) lists the only parts the caller will
        look at: a reader may leave pixels outside them undecoded (zero), e.g. TIFF tiles under no spot.
        """

    def close(self) -> None:
        """Release file handles and caches."""

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _imdecode(data: bytes, flags: int) -> Optional[np.ndarray]:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


class _CachedReader(RegionReader):
    """A PNG or JPEG within budget: decoded once with OpenCV on first use, then sliced."""

    def __init__(self, uri: str, info: ImageInfo, budget_bytes: int):
        super().__init__(info, budget_bytes)
        self._uri = uri
        self._image: Optional[np.ndarray] = None

    def _decode(self) -> np.ndarray:
        with storage.open_input(self._uri) as fh:
            data = fh.read()
        image = _imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        del data
        if image is None or image.shape[:2] != (self.info.height, self.info.width):
            raise SlideError("image_unreadable", f"{self._uri}: the {self.info.format.upper()} data is "
                                                 "corrupt or truncated (OpenCV could not decode it)")
        image.flags.writeable = False
        self._note(image.nbytes)
        return image

    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        if self._image is None:
            self._image = self._decode()
        y0, y1, x0, x1 = self._clip(y0, y1, x0, x1)
        return self._image[y0:y1, x0:x1]

    def close(self) -> None:
        self._image = None


def open_region_reader(uri: str, budget_bytes: int = DEFAULT_BUDGET) -> RegionReader:
    """A reader for ``uri`` that keeps decoded pixels within ``budget_bytes`` where the format allows.

    Raises ``SlideError("image_too_large")`` for a JPEG (or interlaced PNG) over budget, and
    ``SlideError("image_unreadable")`` for anything that is not a readable PNG/JPEG/TIFF.
    A TIFF is opened and its structure parsed once; the reader keeps that file and level.
    """
    fh, info, png, level = _open_probed(uri)
    if level is not None:
        return _TiffReader(uri, fh, level, budget_bytes)
    fh.close()
    need = decoded_bytes(info)
    if need <= budget_bytes:
        return _CachedReader(uri, info, budget_bytes)
    gb = f"{need / _GIB:.2f} GB"
    budget = f"{budget_bytes / _GIB:.2f} GB"
    if info.format == "jpeg":
        raise SlideError("image_too_large", f"{uri}: JPEG of {info.width}x{info.height} needs {gb} decoded, over "
                                            f"the per-task budget {budget}; convert it to a tiled TIFF or raise "
                                            "--memory-budget")
    assert png is not None
    if png.interlace:
        raise SlideError("image_too_large", f"{uri}: interlaced PNG over the memory budget; {info.width}x"
                                            f"{info.height} needs {gb} decoded, budget {budget}: save it "
                                            "non-interlaced or as a tiled TIFF, or raise --memory-budget")
    return _PngStreamReader(uri, info, budget_bytes, png)


# ----------------------------------------------------------------------------- PNG streaming

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))))


IEND_CHUNK = png_chunk(b"IEND", b"")


class _PngStreamReader(RegionReader):
    """A non-interlaced PNG over budget, decoded strip by strip from top to bottom.

    Each strip of rows ``[a, b)`` becomes a small PNG whose first row is the reconstructed row
    ``a - 1`` (filter 0) followed by the original filtered scanlines of rows ``a..b-1`` (copied
    verbatim; they reference the previous row), stored uncompressed and decoded by OpenCV with
    ``IMREAD_UNCHANGED``. Palette images are decoded as gray (the indices) and mapped through the
    palette here, so the raw bytes of the last row can be rebuilt for the next strip. Results are
    bit-identical to one ``cv2.imdecode(IMREAD_COLOR)`` of the whole file.

    ``read_rows`` with ``y0`` above the current stream position restarts the stream from the first
    IDAT chunk (correct but slow): callers should go top to bottom.
    """

    streaming = True

    def __init__(self, uri: str, info: ImageInfo, budget_bytes: int, header: _PngHeader):
        super().__init__(info, budget_bytes)
        self._uri, self._h = uri, header
        self._fh = storage.open_input(uri)
        self._palette, self._idat_offset = self._prelude()
        self._mini_type = 0 if header.color_type == 3 else header.color_type
        self._scale = 255 // ((1 << header.depth) - 1) if header.depth < 8 else 1
        out_row = header.width * 3
        unchanged_row = header.width * (4 if header.samples > 1 else 1) * (2 if header.depth == 16 else 1)
        per_row = 3 * (header.rowbytes + 1) + unchanged_row + out_row
        self._strip_rows = max(1, min(header.height, min(budget_bytes // 8, 64 << 20) // per_row))
        self.restarts = 0
        self._restart()

    def _fail(self, detail: str) -> SlideError:
        return SlideError("image_unreadable", f"{self._uri}: {detail}")

    def _prelude(self) -> tuple[Optional[np.ndarray], int]:
        """BGR palette (256 x 3, for color type 3) and the offset of the first IDAT chunk."""
        reader = _SeqReader(self._fh, 8, 1 << 16)
        palette = None
        while True:
            offset = reader.position
            head = reader.read(8)
            if len(head) < 8:
                raise self._fail("PNG has no image data (IDAT)")
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT":
                break
            if kind == b"PLTE":
                rgb = np.frombuffer(reader.read(length), np.uint8).reshape(-1, 3)
                palette = np.zeros((256, 3), np.uint8)
                palette[: len(rgb)] = rgb[:256, ::-1]
                reader.skip(4)
            else:
                reader.skip(length + 4)
        if self._h.color_type == 3 and palette is None:
            raise self._fail("palette PNG without a PLTE chunk")
        return palette, offset

    def _restart(self) -> None:
        if getattr(self, "_row", 0):
            self.restarts += 1
        self._pieces = self._idat_pieces()
        self._inflate = zlib.decompressobj()
        self._pending = b""
        self._row = 0
        self._prev = bytes(self._h.rowbytes)

    def _idat_pieces(self) -> Iterator[bytes]:
        """The concatenated IDAT payload in pieces of at most 1 MiB, CRCs checked."""
        reader = _SeqReader(self._fh, self._idat_offset, 4 << 20)
        while True:
            head = reader.read(8)
            if len(head) < 8:
                raise self._fail("PNG is truncated inside its image data")
            length, kind = struct.unpack(">I4s", head)
            if kind != b"IDAT":
                return
            crc, left = zlib.crc32(kind), length
            while left:
                piece = reader.read(min(left, 1 << 20))
                if not piece:
                    raise self._fail("PNG is truncated inside its image data")
                crc, left = zlib.crc32(piece, crc), left - len(piece)
                yield piece
            stored = reader.read(4)
            if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
                raise self._fail("PNG image data is corrupt (IDAT CRC mismatch) or truncated")

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
                raise self._fail(f"PNG image data is corrupt near row {self._row} ({error})") from None
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
        _, _, x0, x1 = self._clip(y0, y1, x0, x1)
        return self.read_rows(y0, y1)[:, x0:x1]

    def close(self) -> None:
        self._fh.close()


# ----------------------------------------------------------------------------- TIFF

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0 = RGB
_PHOTOMETRIC = {0: "miniswhite", 1: "minisblack", 2: "rgb", 3: "palette", 6: "ycbcr"}


class _TiffLevel:
    """Level 0 of the largest series of a TIFF: geometry and segment decoding, no pixels held."""

    def __init__(self, fh: BinaryIO):
        import tifffile

        self._fh = fh
        try:
            fh.seek(0)  # tifffile treats the current position as the start of the TIFF
            self.tif = tifffile.TiffFile(fh)
            page = self._largest_page()
        except SlideError:
            raise
        except Exception as error:  # tifffile raises many kinds on malformed files
            raise SlideError("image_unreadable", f"TIFF structure is invalid ({type(error).__name__}: {error})")
        self.page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.samples = int(page.samplesperpixel)
        self.compression = int(page.compression)
        self.photometric = int(page.photometric)
        self.tiled = bool(page.is_tiled)
        self.seg_h = int(page.tilelength) if self.tiled else min(int(page.rowsperstrip) or self.height, self.height)
        self.seg_w = int(page.tilewidth) if self.tiled else self.width
        self.planes = self.samples if int(page.planarconfig) == 2 else 1
        self.across = -(-self.width // self.seg_w)
        self.down = -(-self.height // self.seg_h)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.dtype = np.dtype(page.dtype)
        self.file_dtype = self.dtype.newbyteorder(self.tif.byteorder)
        self.direct = (self.compression == 1 and not self.tiled and int(page.predictor) == 1
                       and int(page.fillorder) == 1 and int(page.bitspersample) in (8, 16, 32))
        self._check(tifffile)
        channels = 3 if self.photometric in (2, 3, 6) else 1
        random_access = self.tiled or self.down > 1 or self.direct
        self.info = ImageInfo(self.width, self.height, channels, "tiff", bool(random_access))

    def _largest_page(self):
        best, area = None, -1
        for series in self.tif.series:
            page = series.keyframe
            if page is not None and int(page.imagewidth) * int(page.imagelength) > area:
                best, area = page, int(page.imagewidth) * int(page.imagelength)
        if best is None:
            raise SlideError("image_unreadable", "TIFF contains no image")
        return best

    def _check(self, tifffile) -> None:
        """Reject what cannot be decoded, before any pixel is read."""
        page = self.page
        if int(page.imagedepth) != 1 or self.width == 0 or self.height == 0:
            raise SlideError("image_unreadable", "TIFF image is empty or volumetric")
        if self.photometric not in _PHOTOMETRIC:
            raise SlideError("image_unreadable", f"TIFF photometric {page.photometric!r} is not supported")
        if self.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)):
            raise SlideError("image_unreadable", f"TIFF samples of type {self.dtype} are not supported")
        if self.compression != 1 and not (self.compression == 7 and self.dtype == np.uint8):
            try:
                tifffile.TIFF.DECOMPRESSORS[self.compression]
            except KeyError as error:
                raise SlideError("image_unreadable", f"TIFF compression {page.compression!r} is not supported "
                                                     f"here ({str(error).strip(chr(39))})")
        if self.photometric == 6 and self.compression != 7:
            raise SlideError("image_unreadable", "YCbCr TIFF without JPEG compression is not supported")
        if len(self.offsets) < self.planes * self.across * self.down:
            raise SlideError("image_unreadable", "TIFF has fewer strips/tiles than its image needs")
        end = int((self.offsets + self.counts).max()) if len(self.offsets) else 0
        if end > _file_size(self._fh):
            raise SlideError("image_unreadable", "TIFF is truncated (image data past the end of the file)")

    def segment_bytes(self) -> int:
        """Decoded bytes of one strip or tile."""
        return self.seg_h * self.seg_w * (self.samples // self.planes) * self.dtype.itemsize

    def decode(self, data: bytes, index: int) -> np.ndarray:
        """One segment as ``rows x cols x samples`` (RGB order for colour)."""
        if self.compression == 7 and self.dtype == np.uint8:
            return self._decode_jpeg(data)
        segment = self.page.decode(bytes(data), index, jpegtables=self.page.jpegtables)[0]
        return segment.reshape(segment.shape[-3:])

    def _decode_jpeg(self, data: bytes) -> np.ndarray:
        tables = self.page.jpegtables
        if tables:
            data = bytes(tables[:-2]) + bytes(data[2:])
        if self.photometric == 2 and self.samples // self.planes == 3:
            data = bytes(data[:2]) + _ADOBE_RGB + bytes(data[2:])
        array = _imdecode(data, cv2.IMREAD_UNCHANGED)
        if array is None:
            raise SlideError("image_unreadable", "a JPEG tile/strip of the TIFF is corrupt")
        return array[..., ::-1] if array.ndim == 3 else array[..., None]

    def to_bgr(self, raw: np.ndarray) -> np.ndarray:
        """Samples as stored (rows x cols x samples) -> BGR uint8."""
        if self.photometric == 3:
            colormap = np.asarray(self.page.colormap)
            lut = (colormap >> 8 if colormap.max() > 255 else colormap).astype(np.uint8).T[:, ::-1]
            size = 1 << (8 * raw.dtype.itemsize)
            lut = np.concatenate([lut[:size], np.zeros((max(0, size - len(lut)), 3), np.uint8)])
            return lut[raw[..., 0]]
        if raw.dtype == np.uint16:
            raw = (raw >> 8).astype(np.uint8)
        elif raw.dtype != np.uint8:
            raw = (np.clip(raw, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if self.photometric in (2, 6) and raw.shape[2] in (3, 4) and raw.flags.c_contiguous:
            code = cv2.COLOR_RGB2BGR if raw.shape[2] == 3 else cv2.COLOR_RGBA2BGR
            return cv2.cvtColor(raw, code, dst=raw) if raw.shape[2] == 3 else cv2.cvtColor(raw, code)
        if self.photometric in (2, 6) and raw.shape[2] >= 3:
            return np.ascontiguousarray(raw[..., 2::-1])
        gray = raw[..., 0]
        if self.photometric == 0:
            gray = 255 - gray
        return cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2BGR)

    def close(self) -> None:
        self.tif.close()

    def __enter__(self) -> _TiffLevel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TiffReader(RegionReader):
    """Random-access reads of TIFF level 0, decoding only the intersecting strips or tiles."""

    def __init__(self, uri: str, fh: BinaryIO, level: _TiffLevel, budget_bytes: int):
        """Takes over ``fh`` and ``level`` (parsed once by ``open_region_reader``)."""
        super().__init__(level.info, budget_bytes)
        self._uri, self._fh, self._level = uri, fh, level
        if not level.direct and level.segment_bytes() > budget_bytes // 2:
            self.close()
            raise SlideError("image_too_large", f"{uri}: one {'tile' if level.tiled else 'strip'} of this "
                                                f"{level.width}x{level.height} TIFF decodes to "
                                                f"{level.segment_bytes() / _GIB:.2f} GB, over half the "
                                                f"per-task budget {budget_bytes / _GIB:.2f} GB; re-save it as a "
                                                "tiled TIFF or raise --memory-budget")

    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        y0, y1, x0, x1 = self._clip(y0, y1, x0, x1)
        level = self._level
        raw = np.zeros((y1 - y0, x1 - x0, level.samples), level.dtype)
        try:
            if y1 > y0 and x1 > x0:
                largest = (self._read_direct(raw, y0, y1, x0, x1) if level.direct
                           else self._read_segments(raw, y0, y1, x0, x1, needed))
            else:
                largest = 0
            out = level.to_bgr(raw)
        except SlideError as error:
            raise SlideError(error.reason, f"{self._uri}: {error.detail}") from None
        except (ValueError, OSError, RuntimeError) as error:  # incl. unsupported codecs (a RuntimeError)
            raise SlideError("image_unreadable", f"{self._uri}: TIFF data cannot be decoded "
                                                 f"({type(error).__name__}: {error})") from None
        self._note(raw.nbytes + (0 if out is raw else out.nbytes) + largest)
        return out

    def _segments(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
        """(index, plane, top, left) of every segment intersecting the region."""
        level = self._level
        rows = range(y0 // level.seg_h, (y1 - 1) // level.seg_h + 1)
        cols = range(x0 // level.seg_w, (x1 - 1) // level.seg_w + 1)
        per_plane = level.across * level.down
        return [(plane * per_plane + r * level.across + c, plane, r * level.seg_h, c * level.seg_w)
                for plane in range(level.planes) for r in rows for c in cols]

    def _segment_mask(self, needed: np.ndarray) -> np.ndarray:
        """``down x across`` booleans: segments that intersect one of the ``needed`` rectangles."""
        level = self._level
        mask = np.zeros((level.down, level.across), bool)
        rects = np.asarray(needed, dtype=np.int64).reshape(-1, 4)
        r0 = np.clip(rects[:, 0], 0, self.info.height - 1) // level.seg_h
        r1 = np.clip(rects[:, 1] - 1, 0, self.info.height - 1) // level.seg_h
        c0 = np.clip(rects[:, 2], 0, self.info.width - 1) // level.seg_w
        c1 = np.clip(rects[:, 3] - 1, 0, self.info.width - 1) // level.seg_w
        for a, b, c, d in zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist()):
            mask[a:b + 1, c:d + 1] = True
        return mask

    def _read_segments(self, raw: np.ndarray, y0: int, y1: int, x0: int, x1: int,
                       needed: Optional[np.ndarray] = None) -> int:
        level, largest = self._level, 0
        chosen = self._segments(y0, y1, x0, x1)
        if needed is not None and len(needed):
            mask = self._segment_mask(needed)
            chosen = [seg for seg in chosen if mask[seg[2] // level.seg_h, seg[3] // level.seg_w]]
        segments = {index: (plane, top, left) for index, plane, top, left in chosen}
        for index, data in self._fetch(sorted(segments)):
            if data is None:
                continue  # an empty segment stays 0
            plane, top, left = segments[index]
            seg = level.decode(data, index)
            largest = max(largest, seg.nbytes)
            ya, yb = max(y0, top), min(y1, top + seg.shape[0])
            xa, xb = max(x0, left), min(x1, left + seg.shape[1])
            if yb <= ya or xb <= xa:
                continue
            part = seg[ya - top:yb - top, xa - left:xb - left]
            if level.planes > 1:
                raw[ya - y0:yb - y0, xa - x0:xb - x0, plane] = part[..., 0]
            else:
                raw[ya - y0:yb - y0, xa - x0:xb - x0] = part[..., : raw.shape[2]]
        return largest

    def _fetch(self, indices: list[int]) -> Iterator[tuple[int, Optional[memoryview]]]:
        """Segment bytes, nearby segments coalesced into one read (few ranged GETs on S3)."""
        level = self._level
        max_span = max(1 << 20, min(32 << 20, self.budget_bytes // 8))
        order = sorted(indices, key=lambda i: int(level.offsets[i]))
        group: list[int] = []
        for index in order + [None]:
            if index is not None and (level.counts[index] == 0 or level.offsets[index] == 0):
                yield index, None
                continue
            if group and (index is None or
                          level.offsets[index] - (level.offsets[group[-1]] + level.counts[group[-1]]) > (256 << 10)
                          or level.offsets[index] + level.counts[index] - level.offsets[group[0]] > max_span):
                start = int(level.offsets[group[0]])
                end = int(max(level.offsets[i] + level.counts[i] for i in group))
                self._fh.seek(start)
                blob = memoryview(self._fh.read(end - start))
                if len(blob) < end - start:
                    raise SlideError("image_unreadable", "TIFF is truncated inside its image data")
                for i in group:
                    yield i, blob[int(level.offsets[i]) - start:int(level.offsets[i] + level.counts[i]) - start]
                group = []
            if index is not None:
                group.append(index)

    def _read_direct(self, raw: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> int:
        """Uncompressed strips: read the needed rows straight from the file."""
        level = self._level
        spp = level.samples // level.planes
        row_bytes = level.width * spp * level.dtype.itemsize
        max_rows = max(1, min(16 << 20, self.budget_bytes // 8) // row_bytes)
        largest = 0
        for plane in range(level.planes):
            y = y0
            while y < y1:
                strip = y // level.seg_h
                end = min(y1, (strip + 1) * level.seg_h, y + max_rows)
                offset = int(level.offsets[plane * level.down + strip]) + (y - strip * level.seg_h) * row_bytes
                self._fh.seek(offset)
                buf = self._fh.read((end - y) * row_bytes)
                if len(buf) < (end - y) * row_bytes:
                    raise SlideError("image_unreadable", "TIFF is truncated inside its image data")
                rows = np.frombuffer(buf, level.file_dtype).reshape(end - y, level.width, spp)[:, x0:x1]
                largest = max(largest, len(buf))
                if level.planes > 1:
                    raw[y - y0:end - y0, :, plane] = rows[..., 0]
                else:
                    raw[y - y0:end - y0] = rows[..., : raw.shape[2]]
                y = end
        return largest

    def close(self) -> None:
        self._level.close()
        self._fh.close()
