"""JPEG: the header probe (the frame header's size, read without decoding) and the stream check.

Baseline JPEG has no random access: within budget it is decoded whole by ``region._CachedReader``;
over budget ``open_region_reader`` refuses it (``image_too_large``).

libjpeg decodes damaged data with only a warning on stderr (a cut scan comes back padded with grey), so
nothing here trusts a decode alone. The probe refuses a frame header that claims more 8x8 blocks than
the file has bits (one bit per block is the least any Huffman-coded scan needs), so a lying header
never reaches a decode. ``decode_jpeg`` (the cached reader's decode) first walks the whole marker
structure: every segment in place, each scan's data up to its end marker, restart markers in
sequence and as many as the scan's MCUs need, every component's coefficients complete by the last
scan, and the end-of-image marker.

A scan cut short and closed with a marker passes that walk, so the decoder is asked where each scan's
data ends: the image is decoded once as stored and once with filler bytes put just before every
marker that ends entropy-coded data. A complete scan never reads past its data, so both decodes are
equal; a cut one reads the filler in place of the missing data, so they differ. Sequential JPEGs
are compared at 1/8 scale (each block's DC term), and only when the full decode holds an 8x8 block
of exact mid-grey (128, what libjpeg fills missing blocks with; natural images almost never have
one), so an intact image costs one decode. Progressive JPEGs are always compared, at full size
(their last scans refine only high frequencies; the filled copy is decoded first and only its CRC
kept, so one image is held at a time). Unseen: a cut that damages only the last MCU (a bottom-right
corner of about 16 x 16 pixels, decoded from the zero bits libjpeg stuffs in, so not grey), bytes
lost inside a restart interval that leave no grey block, and bytes overwritten in place (JPEG has no
checksum).

Data after the end-of-image marker is ignored, as decoders do (cameras append previews there); the
probe only asks that the marker be within the file's last 64 KiB.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Optional, Union

import cv2
import numpy as np

from stlake.ingestion.images.base import (
    FileBytes,
    ImageInfo,
    _check_tail,
    _file_size,
    _imdecode,
    _quiet_stderr,
    _SeqReader,
    corrupt,
)
from stlake.ingestion.records import SlideError

#: Start-of-frame markers (every SOFn but DHT 0xC4, JPG 0xC8 and DAC 0xCC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HIERARCHICAL = {0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xCA}
_DCT = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # non-hierarchical DCT frames (8x8 blocks, 1/8-scale decoding)
_HUFFMAN_DCT = {0xC0, 0xC1, 0xC2}  # at least one bit per block
#: Marker segments with a length that may sit between the frame's segments (besides SOFn, DRI, SOS).
_SEGMENTS = {0xC4, 0xCC, 0xDB, 0xDC, 0xDE, 0xDF, 0xFE, *range(0xE0, 0xF0), *range(0xF0, 0xFE)}
_EOI, _SOS, _DRI, _TEM = 0xD9, 0xDA, 0xDD, 0x01
#: Put before each marker that ends entropy-coded data in the filled copy (no 0xFF byte: never a marker).
_FILLER = bytes((37 * i + 101) % 255 for i in range(32))


@dataclass(frozen=True)
class _Frame:
    """A start-of-frame header: its marker, size and components as ``(id, h, v)`` sampling factors."""

    marker: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]

    @property
    def info(self) -> ImageInfo:
        """The frame as an ``ImageInfo``."""
        return ImageInfo(self.width, self.height, len(self.components), "jpeg", False)

    def blocks(self, index: int) -> int:
        """8x8 blocks of component ``index`` (its own sampled size, not padded to whole MCUs)."""
        _, h, v = self.components[index]
        hmax = max(c[1] for c in self.components)
        vmax = max(c[2] for c in self.components)
        return math.ceil(math.ceil(self.width * h / hmax) / 8) * math.ceil(math.ceil(self.height * v / vmax) / 8)

    def mcus(self, indices: tuple[int, ...]) -> int:
        """MCUs of a DCT scan over the components ``indices`` (one component: its blocks)."""
        if len(indices) == 1:
            return self.blocks(indices[0])
        hmax = max(c[1] for c in self.components)
        vmax = max(c[2] for c in self.components)
        return math.ceil(self.width / (8 * hmax)) * math.ceil(self.height / (8 * vmax))

    def min_bytes(self) -> int:
        """The fewest bytes the scans can take: one bit per block when Huffman-coded (else no bound, 0)."""
        if self.marker not in _HUFFMAN_DCT:
            return 0
        return sum(self.blocks(i) for i in range(len(self.components))) // 8


def _next_marker(reader: _SeqReader) -> int:
    """The next marker code (fill bytes skipped); ``SlideError`` when the stream is not at a marker."""
    if reader.read(1) != b"\xff":
        raise corrupt(f"JPEG has stray data at offset {reader.position - 1} before its frame header")
    marker = 0xFF
    while marker == 0xFF:
        byte = reader.read(1)
        if not byte:
            raise corrupt("JPEG is truncated before its frame header")
        marker = byte[0]
    return marker


def _frame_info(body: bytes, marker: int) -> _Frame:
    """The frame of a start-of-frame segment's body; ``SlideError`` when it is invalid or unsupported."""
    if len(body) < 6:
        raise corrupt("JPEG frame header is truncated")
    _, height, width, count = struct.unpack(">BHHB", body[:6])
    if width == 0 or height == 0:
        raise SlideError("image_unreadable", f"JPEG frame header gives a {width}x{height} image")
    if marker in _HIERARCHICAL:
        raise SlideError("image_unreadable", "hierarchical JPEG is not supported")
    if count == 0 or len(body) < 6 + 3 * count:
        raise corrupt(f"JPEG frame header lists {count} components but has room for {max(0, len(body) - 6) // 3}")
    components = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count))
    if any(not (1 <= h <= 4 and 1 <= v <= 4) for _, h, v in components):
        raise SlideError("image_unreadable", "JPEG frame header has invalid sampling factors")
    return _Frame(marker, width, height, components)


def _probe_jpeg(fh: BinaryIO) -> ImageInfo:
    """Info of an open JPEG from its first frame header.

    The file must end with EOI and be large enough for the blocks its frame header claims.
    """
    reader = _SeqReader(fh, 2, 64 * 1024)
    while True:
        marker = _next_marker(reader)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # TEM and RSTn stand alone
        if marker in (0xD9, 0xDA):
            raise corrupt("JPEG has no frame (SOF) header before its scan")
        seglen = reader.read(2)
        if len(seglen) < 2 or struct.unpack(">H", seglen)[0] < 2:
            raise corrupt(f"JPEG marker segment at offset {reader.position - 4} is corrupt")
        length = struct.unpack(">H", seglen)[0] - 2
        if marker in _SOF:
            frame = _frame_info(reader.read(length), marker)
            _check_tail(fh, b"\xff\xd9", reader.position, "JPEG")
            _check_plausible_size(frame, _file_size(fh))
            return frame.info
        reader.skip(length)


def _check_plausible_size(frame: _Frame, size: int) -> None:
    """A frame header claiming more blocks than the file has bits is a lie (``image_corrupt``)."""
    need = frame.min_bytes()
    if size < need:
        raise corrupt(f"JPEG frame header claims {frame.width}x{frame.height} pixels, but the file's {size} bytes "
                      f"cannot hold them (their 8x8 blocks need at least {need} bytes at one bit each)")


# ----------------------------------------------------------------------------- the whole stream

class _Markers:
    """Where the markers of a JPEG held in memory are (found once, vectorised)."""

    def __init__(self, buf: np.ndarray) -> None:
        ff = np.flatnonzero(buf[:-1] == 0xFF)
        after = buf[ff + 1]
        restart = (after >= 0xD0) & (after <= 0xD7)
        self.buf = buf
        self.ends = ff[(after != 0) & (after != 0xFF) & ~restart]  # markers that end entropy-coded data
        self.restarts, self.restart_codes = ff[restart], after[restart]

    def data_start(self, marker_at: int) -> int:
        """Where the entropy-coded data before the marker at ``marker_at`` ends (fill bytes excluded)."""
        while marker_at > 0 and self.buf[marker_at - 1] == 0xFF:
            marker_at -= 1
        return marker_at


class _Coverage:
    """Which coefficients of which component the scans so far have coded, and to which bit (``Al``)."""

    def __init__(self, frame: _Frame) -> None:
        self.progressive = frame.marker in _PROGRESSIVE
        self.low_bit = np.full((len(frame.components), 64), -1, np.int16)  # -1: not coded yet

    def add(self, number: int, comps: tuple[int, ...], band: tuple[int, int], ah: int, al: int) -> None:
        """Record scan ``number``; ``image_corrupt`` when it does not follow the scans before it."""
        if not self.progressive:
            if (self.low_bit[list(comps)] >= 0).any():
                raise corrupt(f"JPEG scan {number} codes a component a second time")
            self.low_bit[list(comps)] = 0
            return
        ss, se = band
        coded = self.low_bit[list(comps), ss:se + 1]
        first = ah == 0 and (coded == -1).all()
        refine = ah > 0 and al == ah - 1 and (coded == ah).all()
        valid_band = ss <= se <= 63 and (ss == 0) == (se == 0) and (ss == 0 or len(comps) == 1)
        dc_first = ss == 0 or (self.low_bit[list(comps), 0] >= 0).all()
        if not (valid_band and dc_first and (first or refine)):
            raise corrupt(f"JPEG progressive scan {number} does not follow the scans before it")
        self.low_bit[list(comps), ss:se + 1] = al

    def complete(self) -> bool:
        """Every coefficient of every component coded to its last bit."""
        return bool((self.low_bit == 0).all())


@dataclass
class _Walk:
    """The state of one walk over a JPEG's segments."""

    frame: Union[_Frame, None] = None
    coverage: Union[_Coverage, None] = None
    restart_interval: int = 0
    scans: int = 0


def decode_jpeg(data: Union[FileBytes, memoryview], flags: int) -> np.ndarray:
    """A whole JPEG held in memory, checked (see the module docstring) and decoded with ``flags``.

    ``image_corrupt`` when its structure is damaged or a scan's data stops short of its end.
    """
    buf = np.frombuffer(data, np.uint8)
    frame, data_ends = _walk_segments(_Markers(buf))
    if frame.marker not in _DCT:
        return _decoded(_imdecode(buf, flags))
    if frame.marker in _PROGRESSIVE:
        with _quiet_stderr():  # libjpeg warns of the filler it skips after complete scans
            expected = _digest(_decoded(_imdecode(_with_filler(buf, data_ends), flags)))
        image = _decoded(_imdecode(buf, flags))
        if _digest(image) != expected:
            raise corrupt("JPEG scan data stops short of its end (a progressive scan is truncated or damaged)")
        return image
    image = _decoded(_imdecode(buf, flags))
    if _has_grey_block(image):
        _compare_reduced(buf, _with_filler(buf, data_ends), frame)
    return image


def _has_grey_block(image: np.ndarray) -> bool:
    """Whether some 8x8 block of the grid (its visible part at the edges) is all exactly 128."""
    corners = image[::8, ::8] == 128  # a block's first pixel, then the blocks where it is grey
    if corners.ndim == 3:
        corners = corners.all(axis=2)
    for by, bx in zip(*np.nonzero(corners)):
        if (image[8 * by:8 * by + 8, 8 * bx:8 * bx + 8] == 128).all():
            return True
    return False


def _decoded(image: Optional[np.ndarray]) -> np.ndarray:
    """A decode's result; ``image_corrupt`` when OpenCV could not decode the data."""
    if image is None:
        raise corrupt("the JPEG data cannot be decoded (OpenCV refuses it)")
    return image


def _digest(image: np.ndarray) -> tuple[tuple[int, ...], int]:
    """Shape and CRC-32 of an image: equal for equal decodes."""
    return image.shape, zlib.crc32(np.ascontiguousarray(image).data)


def _with_filler(buf: np.ndarray, data_ends: list[int]) -> np.ndarray:
    """A copy of the file with ``_FILLER`` before every marker that ends entropy-coded data."""
    at = np.repeat(np.asarray(data_ends, np.int64), len(_FILLER))
    return np.insert(buf, at, np.tile(np.frombuffer(_FILLER, np.uint8), len(data_ends)))


def _marker_at(buf: np.ndarray, pos: int) -> tuple[int, int]:
    """The marker at ``pos`` (fill bytes skipped) and the offset of its code byte."""
    if pos + 1 >= len(buf):
        raise corrupt(f"JPEG ends at offset {len(buf)} without its end-of-image marker (truncated)")
    if buf[pos] != 0xFF:
        raise corrupt(f"JPEG has stray data at offset {pos} where a marker belongs")
    while pos + 1 < len(buf) and buf[pos + 1] == 0xFF:
        pos += 1
    if pos + 1 >= len(buf):
        raise corrupt(f"JPEG ends at offset {len(buf)} without its end-of-image marker (truncated)")
    return int(buf[pos + 1]), pos + 1


def _walk_segments(markers: _Markers) -> tuple[_Frame, list[int]]:
    """Walk from SOI to EOI; the frame and the offsets where entropy-coded data segments end."""
    buf, walk, data_ends = markers.buf, _Walk(), list[int]()
    pos = 2
    while True:
        marker, code_at = _marker_at(buf, pos)
        pos = code_at + 1
        if marker == _EOI:
            break
        if marker == _TEM:
            continue
        if marker not in _SEGMENTS and marker not in _SOF and marker not in (_DRI, _SOS):
            raise corrupt(f"JPEG has an unexpected marker at offset {code_at - 1}")
        if pos + 2 > len(buf):
            raise corrupt(f"JPEG ends at offset {len(buf)} inside a marker segment (truncated)")
        length = int(buf[pos]) << 8 | int(buf[pos + 1])
        if length < 2 or pos + length > len(buf):
            raise corrupt(f"JPEG marker segment at offset {code_at - 1} runs past the end of the file")
        body = buf[pos + 2:pos + length].tobytes()
        pos += length
        if marker == _SOS:
            pos = _scan(markers, walk, body, pos, data_ends)
        else:
            _segment(walk, marker, body, code_at - 1)
    if walk.frame is None or walk.coverage is None or walk.scans == 0:
        raise corrupt("JPEG ends before its first scan")
    if not walk.coverage.complete():
        raise corrupt(f"JPEG ends after {walk.scans} scans, before every component is complete "
                      "(the file was cut between scans)")
    return walk.frame, data_ends


def _segment(walk: _Walk, marker: int, body: bytes, offset: int) -> None:
    """Take in one marker segment other than a scan header."""
    if marker in _SOF:
        if walk.frame is not None:
            raise corrupt(f"JPEG has a second frame header at offset {offset}")
        walk.frame = _frame_info(body, marker)
        walk.coverage = _Coverage(walk.frame)
    elif marker == _DRI:
        if len(body) != 2:
            raise corrupt(f"JPEG restart interval segment at offset {offset} is corrupt")
        walk.restart_interval = struct.unpack(">H", body)[0]


def _scan(markers: _Markers, walk: _Walk, body: bytes, start: int, data_ends: list[int]) -> int:
    """Check one scan (header, restart markers); the offset of the marker that ends its data."""
    frame, coverage = walk.frame, walk.coverage
    walk.scans += 1
    if frame is None or coverage is None:
        raise corrupt("JPEG has a scan before its frame header")
    count = body[0] if body else 0
    if count == 0 or len(body) != 4 + 2 * count:
        raise corrupt(f"JPEG scan header {walk.scans} is corrupt")
    ids = [c[0] for c in frame.components]
    selectors = [body[1 + 2 * i] for i in range(count)]
    if any(s not in ids for s in selectors) or len(set(selectors)) != count:
        raise corrupt(f"JPEG scan {walk.scans} names components its frame does not have")
    comps = tuple(ids.index(s) for s in selectors)
    ss, se, approx = body[1 + 2 * count:4 + 2 * count]
    coverage.add(walk.scans, comps, (ss, se), approx >> 4, approx & 15)
    index = int(np.searchsorted(markers.ends, start))
    if index == len(markers.ends):
        raise corrupt(f"JPEG ends inside scan {walk.scans} (no marker after its data, which starts at "
                      f"offset {start}): truncated")
    end = int(markers.ends[index])
    first, last = np.searchsorted(markers.restarts, [start, end])
    _check_restarts(walk, markers.restart_codes[first:last], comps)
    data_ends.extend(markers.data_start(int(p)) for p in markers.restarts[first:last])
    data_ends.append(markers.data_start(end))
    return end


def _check_restarts(walk: _Walk, codes: np.ndarray, comps: tuple[int, ...]) -> None:
    """Restart markers RST0..RST7 in turn, as many as the scan's MCUs need (DCT frames)."""
    frame = walk.frame
    assert frame is not None
    if len(codes) and walk.restart_interval == 0:
        raise corrupt(f"JPEG scan {walk.scans} has restart markers but no restart interval")
    if len(codes) and not np.array_equal(codes, 0xD0 + np.arange(len(codes)) % 8):
        raise corrupt(f"JPEG scan {walk.scans} has its restart markers out of sequence (data lost or inserted)")
    if walk.restart_interval and frame.marker in _DCT:
        mcus = frame.mcus(comps)
        need = math.ceil(mcus / walk.restart_interval) - 1
        if len(codes) != need:
            raise corrupt(f"JPEG scan {walk.scans} has {len(codes)} restart markers where its {mcus} MCUs need "
                          f"{need} (data lost or inserted)")


def _compare_reduced(buf: np.ndarray, filled: np.ndarray, frame: _Frame) -> None:
    """The file and its filled copy decode alike at 1/8 scale (every block's DC), else ``image_corrupt``."""
    flags = cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION
    stored = _decoded(_imdecode(buf, flags))
    with _quiet_stderr():  # libjpeg warns of the filler it skips after complete scans
        reread = _imdecode(filled, flags)
    if reread is not None and reread.shape == stored.shape and np.array_equal(reread, stored):
        return
    rows = np.flatnonzero((reread != stored).reshape(len(stored), -1).any(axis=1)) \
        if reread is not None and reread.shape == stored.shape else np.zeros(1, np.int64)
    row = min(frame.height - 1, 8 * int(rows[0]))
    raise corrupt(f"JPEG scan data stops short of the image's end (truncated or damaged: the decoder runs out "
                  f"of data near row {row} of {frame.height})")
