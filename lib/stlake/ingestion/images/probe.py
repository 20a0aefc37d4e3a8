"""Format sniffing (magic bytes, never the file extension) and header probes dispatched by format."""
from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Optional

from stlake.ingestion.images import hdf5
from stlake.ingestion.images.base import ImageFormat, ImageInfo, describe_error
from stlake.ingestion.images.jpeg import _probe_jpeg
from stlake.ingestion.images.png import PNG_SIGNATURE, _PngHeader, _probe_png
from stlake.ingestion.images.tiff import _TiffLevel
from stlake.ingestion.records import SlideError
from stlake.lake import storage

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff_format(head: bytes) -> ImageFormat:
    """``"png"``, ``"jpeg"`` or ``"tiff"`` from a file's first bytes; ``SlideError`` otherwise."""
    if head.startswith(PNG_SIGNATURE[: min(len(head), 8)]) and len(head) >= 4:
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if not head:
        raise SlideError("image_unreadable", "the image file is empty")
    raise SlideError("image_unreadable", "not a PNG, JPEG or TIFF file (its first bytes are none of their signatures)")


def probe_image(uri: str) -> ImageInfo:
    """Width, height, channels and format from the headers only (pixels are never decoded)."""
    if hdf5.split_uri(uri) is not None:
        return hdf5.probe_dataset(uri)
    fh, info, _, level = _open_probed(uri)
    if level is not None:
        level.close()
    fh.close()
    return info


@dataclass(frozen=True)
class Pyramid:
    """The levels an image can be read at: (width, height) of each, level 0 first, and level 0's µm/px if tagged."""

    sizes: list[tuple[int, int]]
    microns_per_pixel: Optional[float] = None


def probe_pyramid(uri: str) -> Pyramid:
    """Every level of a pyramidal TIFF (one level for other images) and the TIFF's resolution tags, from headers."""
    if hdf5.split_uri(uri) is not None:
        info = hdf5.probe_dataset(uri)
        return Pyramid([(info.width, info.height)])
    fh, info, _, level = _open_probed(uri)
    try:
        if level is None:
            return Pyramid([(info.width, info.height)])
        return Pyramid(list(level.sizes), level.microns_per_pixel)
    finally:
        if level is not None:
            level.close()
        fh.close()


@contextlib.contextmanager
def _header_errors(uri: str) -> Iterator[None]:
    """Header problems become ``SlideError`` naming ``uri``."""
    try:
        yield
    except SlideError as error:
        raise SlideError(error.reason, f"{uri}: {error.detail}") from None
    except (OSError, ValueError, struct.error, IndexError, KeyError) as error:
        raise SlideError("image_unreadable", f"{uri}: cannot read the image header ({describe_error(error)})") \
            from None


def _parse_header(fh: BinaryIO, level: int = 0) -> tuple[ImageInfo, Optional[_PngHeader], Optional[_TiffLevel]]:
    """Sniff and parse the header of an open file; a TIFF's level (``level`` of its pyramid) comes back open."""
    fmt = sniff_format(fh.read(16))
    if fmt != "tiff" and level:
        raise SlideError("image_unreadable", f"a {fmt.upper()} image has no pyramid level {level}")
    if fmt == "png":
        info, header = _probe_png(fh)
        return info, header, None
    if fmt == "jpeg":
        return _probe_jpeg(fh), None, None
    tiff = _TiffLevel(fh, level)
    return tiff.info, None, tiff


def _open_probed(uri: str, level: int = 0) -> tuple[BinaryIO, ImageInfo, Optional[_PngHeader], Optional[_TiffLevel]]:
    """``uri`` opened and its header parsed once; the caller closes the file (and a TIFF level)."""
    with _header_errors(uri):
        fh = storage.open_input(uri)
        try:
            return (fh, *_parse_header(fh, level))
        except BaseException:
            fh.close()
            raise
