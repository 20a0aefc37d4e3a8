"""``open_region_reader``: the reader each format and budget calls for, and the cached whole-image reader.

* **HDF5 arrays** (``file::/dataset``, AnnData's images): random access (``hdf5.DatasetReader``).
* **TIFF**: random access (``tiff._TiffReader``), whatever the budget.
* **PNG / JPEG within budget**: one ``cv2.imdecode`` of the whole stream, checked, cached
  (``_CachedReader``; the checks are ``png.decode_png``'s and ``jpeg.decode_jpeg``'s).
* **PNG over budget**: streamed top to bottom (``png._PngStreamReader``); interlaced: ``image_too_large``.
* **JPEG over budget**: ``image_too_large`` (no random access; convert such slides to tiled TIFF).
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np

from stlake.ingestion.images import hdf5
from stlake.ingestion.images.base import GIB, ImageInfo, RegionReader, corrupt, decoded_bytes
from stlake.ingestion.images.jpeg import decode_jpeg
from stlake.ingestion.images.png import _PngHeader, _PngStreamReader, decode_png
from stlake.ingestion.images.probe import _open_probed
from stlake.ingestion.images.tiff import _TiffReader
from stlake.ingestion.options import DEFAULT_MEMORY_BUDGET
from stlake.ingestion.records import SlideError
from stlake.lake import storage

logger = logging.getLogger(__name__)


class _CachedReader(RegionReader):
    """A PNG or JPEG within budget: decoded once on first use (libspng or OpenCV), then sliced.

    The file is mapped, not read, when local (``storage.whole_file``): the decoder reads the page cache.
    """

    def __init__(self, uri: str, info: ImageInfo, budget_bytes: int, png: Optional[_PngHeader] = None) -> None:
        super().__init__(info, budget_bytes)
        self._uri, self._png = uri, png
        self._image: Optional[np.ndarray] = None

    def _decode(self) -> np.ndarray:
        """The whole image, read-only; ``image_corrupt`` when its stream is damaged or its size is not the header's."""
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        data = storage.whole_file(self._uri)
        try:
            image = decode_png(data, self._png, flags) if self._png is not None else decode_jpeg(data, flags)
        except SlideError as error:
            raise SlideError(error.reason, f"{self._uri}: {error.detail}") from None
        del data
        if image.shape[:2] != (self.info.height, self.info.width):
            raise corrupt(f"{self._uri}: the {self.info.format.upper()} decodes to {image.shape[1]}x{image.shape[0]}, "
                          f"not the {self.info.width}x{self.info.height} of its header")
        image.flags.writeable = False
        self._note(image.nbytes)
        return image

    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        """A read-only view of the decoded image (decoded on the first call)."""
        if self._image is None:
            self._image = self._decode()
        y0, y1, x0, x1 = self._clip(y0, y1, x0, x1)
        return self._image[y0:y1, x0:x1]

    def close(self) -> None:
        """Drop the decoded image."""
        self._image = None


def open_region_reader(uri: str, budget_bytes: int = DEFAULT_MEMORY_BUDGET, level: int = 0) -> RegionReader:
    """A reader for ``uri`` that keeps decoded pixels within ``budget_bytes`` where the format allows.

    Raises ``SlideError("image_too_large")`` for a JPEG (or interlaced PNG) over budget,
    ``SlideError("image_unreadable")`` for anything that is not a readable PNG/JPEG/TIFF, and
    ``SlideError("image_corrupt")`` for a damaged one (here, on a read, or when a ``with`` block ends).
    A TIFF is opened and its structure parsed once; the reader keeps that file and level (``level`` of its
    pyramid, see ``probe.probe_pyramid``; other formats have only level 0).
    """
    if hdf5.split_uri(uri) is not None:
        return hdf5.DatasetReader(uri, budget_bytes)
    fh, info, png, tiff = _open_probed(uri, level)
    if tiff is not None:
        return _TiffReader(uri, fh, tiff, budget_bytes)
    fh.close()
    if decoded_bytes(info) <= budget_bytes:
        return _CachedReader(uri, info, budget_bytes, png)
    return _over_budget_reader(uri, info, budget_bytes, png)


def _over_budget_reader(uri: str, info: ImageInfo, budget_bytes: int, png: Optional[_PngHeader]) -> RegionReader:
    """The streaming reader of a non-interlaced PNG over budget; ``image_too_large`` for anything else."""
    gb = f"{decoded_bytes(info) / GIB:.2f} GB"
    budget = f"{budget_bytes / GIB:.2f} GB"
    if info.format == "jpeg":
        raise SlideError("image_too_large", f"{uri}: JPEG of {info.width}x{info.height} needs {gb} decoded, over "
                                            f"the per-task budget {budget}; convert it to a tiled TIFF or raise "
                                            "--memory-budget")
    assert png is not None
    if png.interlace:
        raise SlideError("image_too_large", f"{uri}: interlaced PNG over the memory budget; {info.width}x"
                                            f"{info.height} needs {gb} decoded, budget {budget}: save it "
                                            "non-interlaced or as a tiled TIFF, or raise --memory-budget")
    logger.debug("%s: PNG of %dx%d needs %s decoded, over the budget %s: streamed strip by strip",
                 uri, info.width, info.height, gb, budget)
    return _PngStreamReader(uri, info, budget_bytes, png)
