"""Slide images read region by region within a memory budget (BGR ``uint8`` arrays, OpenCV order).

No task may hold the whole decoded image when the slide is larger than its budget (default
``options.DEFAULT_MEMORY_BUDGET``, 4 GiB). One module per concern:

* ``base``: ``ImageInfo``, the ``RegionReader`` base class, buffered reads, OpenCV's pixel limit.
* ``probe``: format sniffing from magic bytes (never the file extension) and header probes.
* ``png``: IHDR, chunks, and the streaming reader for non-interlaced PNGs over budget.
* ``jpeg``: the frame-header probe (no random access: over budget is ``image_too_large``).
* ``tiff``: level 0 of the largest series, read by strips/tiles (random access at any size;
  LZW or JPEG 2000 need ``imagecodecs`` installed).
* ``region``: ``open_region_reader`` picks the reader; PNG/JPEG within budget are decoded once, cached.

Conversions: gray is replicated to 3 channels, alpha is dropped (not composited), 16-bit samples
keep their high byte (as OpenCV does for PNG), TIFF palettes are applied, MinIsWhite is inverted.
EXIF orientation is ignored: pixels are addressed as stored, like the header's width and height.

Errors (``SlideError``): ``image_unreadable`` when the file is not a PNG/JPEG/TIFF at all (or its header
is invalid or unsupported), ``image_corrupt`` when it is one but damaged: a header claiming more pixels
than the file could hold (refused by the probe, before any decode), a stream that is cut, fails a
checksum or does not match its header (decoders only warn about such data and return an image; each
format module says what it checks), ``image_too_large`` when it cannot be read within the budget.
Details name the file and say what is wrong and where (offset, chunk, row); they never quote its bytes.
"""
# ``base`` comes first: it raises OpenCV's pixel limit, which must happen before cv2 is imported.
from stlake.ingestion.images.base import ImageFormat, ImageInfo, RegionReader, decoded_bytes
from stlake.ingestion.images.png import IEND_CHUNK, PNG_SIGNATURE, png_chunk
from stlake.ingestion.images.probe import Pyramid, probe_image, probe_pyramid, sniff_format
from stlake.ingestion.images.region import open_region_reader

__all__ = [
    "IEND_CHUNK",
    "PNG_SIGNATURE",
    "ImageFormat",
    "ImageInfo",
    "Pyramid",
    "RegionReader",
    "decoded_bytes",
    "open_region_reader",
    "png_chunk",
    "probe_image",
    "probe_pyramid",
    "sniff_format",
]
