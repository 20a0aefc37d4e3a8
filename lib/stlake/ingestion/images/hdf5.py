"""Images stored as arrays inside an HDF5 file: AnnData's ``uns['spatial'][library]['images'][...]``.

scanpy's ``read_visium`` keeps the hires / lowres PNGs as ``float32`` arrays in ``[0, 1]`` (matplotlib's
``imread``), HEST keeps ``downscaled_fullres`` as ``uint8``; either is ``H x W x 3`` (or 4: alpha is
dropped, or ``H x W``: grey) in RGB order. Such an image is named ``{file}::{dataset path}``
(``dataset_uri``); regions are read by slicing the dataset (h5py reads only the chunks it needs), so it
is random access. Float samples become ``round(v * 255)`` clipped to 0..255, which gives back the exact
bytes of an 8-bit PNG that was read as ``v = byte / 255``.
"""
from __future__ import annotations

from typing import Any, Optional

import cv2
import numpy as np

from stlake.ingestion.images.base import ImageInfo, RegionReader
from stlake.ingestion.records import SlideError

#: Separates the file from the dataset path in an image URI.
SEPARATOR = "::"


def dataset_uri(file_uri: str, dataset: str) -> str:
    """The image URI of HDF5 dataset ``dataset`` in ``file_uri``."""
    return f"{file_uri}{SEPARATOR}/{dataset.lstrip('/')}"


def split_uri(uri: str) -> Optional[tuple[str, str]]:
    """(file, dataset path) of an HDF5 image URI, None for any other URI."""
    if SEPARATOR + "/" not in uri:
        return None
    file_uri, dataset = uri.rsplit(SEPARATOR, 1)
    return file_uri, dataset


def _open(uri: str) -> tuple[Any, Any, Any]:
    """(context manager, file handle, dataset) of an HDF5 image URI; ``image_unreadable`` when it is not one."""
    from stlake.ingestion.matrices.tenx_h5 import _open_h5

    parts = split_uri(uri)
    assert parts is not None
    context = _open_h5(parts[0])
    try:
        handle = context.__enter__()
        dataset = handle[parts[1]] if parts[1] in handle else None
    except Exception as error:
        raise SlideError("image_unreadable", f"{parts[0]} cannot be opened as HDF5 ({type(error).__name__})") \
            from None
    if dataset is None or not hasattr(dataset, "shape") or len(dataset.shape) not in (2, 3):
        context.__exit__(None, None, None)
        raise SlideError("image_unreadable", f"{uri}: no image array (H x W or H x W x channels) at {parts[1]}")
    if dataset.dtype.kind not in "uf" or (len(dataset.shape) == 3 and dataset.shape[2] not in (1, 3, 4)):
        context.__exit__(None, None, None)
        raise SlideError("image_unreadable", f"{uri}: the array at {parts[1]} is not an 8-bit or float image "
                                             f"({dataset.dtype}, shape {tuple(dataset.shape)})")
    return context, handle, dataset


def probe_dataset(uri: str) -> ImageInfo:
    """Width and height of an HDF5 image array (nothing decoded)."""
    context, _, dataset = _open(uri)
    try:
        height, width = int(dataset.shape[0]), int(dataset.shape[1])
    finally:
        context.__exit__(None, None, None)
    if width == 0 or height == 0:
        raise SlideError("image_unreadable", f"{uri}: the image array is empty")
    return ImageInfo(width, height, 3, "hdf5", True)


def to_bgr(pixels: np.ndarray) -> np.ndarray:
    """An RGB(A) / grey array (uint8, uint16 or float in [0, 1]) as BGR ``uint8``."""
    if pixels.dtype.kind == "f":
        pixels = np.clip(np.rint(np.nan_to_num(pixels) * 255.0), 0, 255).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = (pixels >> (8 * (pixels.dtype.itemsize - 1))).astype(np.uint8)
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(pixels.reshape(pixels.shape[:2])), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(pixels[..., 2::-1])


class DatasetReader(RegionReader):
    """Regions of an HDF5 image array, sliced from the file."""

    def __init__(self, uri: str, budget_bytes: int) -> None:
        self._context, self._handle, self._dataset = _open(uri)
        height, width = int(self._dataset.shape[0]), int(self._dataset.shape[1])
        super().__init__(ImageInfo(width, height, 3, "hdf5", True), budget_bytes)

    def read_region(self, y0: int, y1: int, x0: int, x1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``[y0, y1)`` x columns ``[x0, x1)`` sliced from the dataset, as BGR."""
        y0, y1, x0, x1 = self._clip(y0, y1, x0, x1)
        pixels = to_bgr(np.asarray(self._dataset[y0:y1, x0:x1]))
        self._note(pixels.nbytes)
        return pixels

    def close(self) -> None:
        """Close the HDF5 file."""
        self._context.__exit__(None, None, None)
