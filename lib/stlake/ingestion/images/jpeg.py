"""JPEG: the header probe (the frame header's size, read without decoding).

Baseline JPEG has no random access: within budget it is decoded whole by ``region._CachedReader``;
over budget ``open_region_reader`` refuses it (``image_too_large``).
"""
from __future__ import annotations

import struct
from typing import BinaryIO

from stlake.ingestion.images.base import ImageInfo, _check_tail, _SeqReader
from stlake.ingestion.records import SlideError

#: Start-of-frame markers (every SOFn but DHT 0xC4, JPG 0xC8 and DAC 0xCC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _next_marker(reader: _SeqReader) -> int:
    """The next marker code (fill bytes skipped); ``SlideError`` when the stream is not at a marker."""
    if reader.read(1) != b"\xff":
        raise SlideError("image_unreadable", "JPEG header is corrupt or truncated before the frame header")
    marker = 0xFF
    while marker == 0xFF:
        byte = reader.read(1)
        if not byte:
            raise SlideError("image_unreadable", "JPEG is truncated before the frame header")
        marker = byte[0]
    return marker


def _frame_info(body: bytes) -> ImageInfo:
    """Info from the body of a start-of-frame segment."""
    if len(body) < 6:
        raise SlideError("image_unreadable", "JPEG frame header is truncated")
    _, height, width, components = struct.unpack(">BHHB", body[:6])
    if width == 0 or height == 0:
        raise SlideError("image_unreadable", f"JPEG frame header gives a {width}x{height} image")
    return ImageInfo(width, height, components, "jpeg", False)


def _probe_jpeg(fh: BinaryIO) -> ImageInfo:
    """Info of an open JPEG from its first frame header; the file must end with EOI."""
    reader = _SeqReader(fh, 2, 64 * 1024)
    while True:
        marker = _next_marker(reader)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # TEM and RSTn stand alone
        if marker in (0xD9, 0xDA):
            raise SlideError("image_unreadable", "JPEG has no frame (SOF) header before its scan")
        seglen = reader.read(2)
        if len(seglen) < 2 or struct.unpack(">H", seglen)[0] < 2:
            raise SlideError("image_unreadable", "JPEG marker segment is corrupt")
        length = struct.unpack(">H", seglen)[0] - 2
        if marker in _SOF:
            info = _frame_info(reader.read(length))
            _check_tail(fh, b"\xff\xd9", reader.position, "JPEG")
            return info
        reader.skip(length)
