"""What every image format shares: ``ImageInfo``, the ``RegionReader`` base class, buffered reads.

Also the one OpenCV set-up the package needs: its pixel limit is raised before ``cv2`` is imported
(see below). The package ``__init__`` imports this module first, so every format module that uses
``cv2`` gets it with that limit in place.
"""
from __future__ import annotations

import abc
import contextlib
import mmap
import os
import re

# OpenCV refuses to decode images of more than 2**30 pixels unless OPENCV_IO_MAX_IMAGE_PIXELS says
# otherwise, and it reads that variable once, when its library loads (``import cv2``), not at the
# first decode: set later, it is ignored. Whole slides exceed the default, so the limit is raised
# here, before this module imports cv2 (the first import of cv2 when ingesting; ``setdefault`` keeps
# a value the user chose).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import BinaryIO, Literal, Optional, Union  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from stlake.ingestion.records import SlideError  # noqa: E402

#: The formats recognised from magic bytes (what ``sniff_format`` returns).
ImageFormat = Literal["png", "jpeg", "tiff", "hdf5"]

#: A whole file in memory: read, or mapped (``storage.whole_file``).
FileBytes = Union[bytes, mmap.mmap]

GIB = 1024 ** 3
_TAIL = 64 * 1024  # how far from the end a PNG IEND / JPEG EOI marker is looked for
_BYTES_LITERAL = re.compile(r"""(?<!\w)b(['"]).*?(?<!\\)\1""")  # b'...' in a message: file bytes, never shown


@dataclass(frozen=True)
class ImageInfo:
    """What the header says; ``random_access`` = regions can be decoded without the rest."""

    width: int
    height: int
    channels: int
    format: ImageFormat
    random_access: bool


def decoded_bytes(info: ImageInfo) -> int:
    """Bytes of the whole image decoded as 8-bit BGR."""
    return int(info.width) * int(info.height) * 3


# ----------------------------------------------------------------------------- file access

def _file_size(fh: BinaryIO) -> int:
    """Size of an open seekable file (leaves the position at its end)."""
    size = fh.seek(0, 2)
    return int(size if size is not None else fh.tell())


def _check_tail(fh: BinaryIO, marker: bytes, after: int, what: str) -> None:
    """The file's last 64 KiB must contain ``marker`` (IEND / EOI), else it is truncated.

    A cheap first check at probe time; the readers verify the whole stream structure later. A file
    with more than 64 KiB of other data after its end marker is refused here too.
    """
    size = _file_size(fh)
    start = max(after, size - _TAIL)
    fh.seek(start)
    if marker not in fh.read(size - start):
        raise corrupt(f"{what} has no end marker in its last {_TAIL // 1024} KiB (the file of {size} bytes "
                      "is truncated, or other data follows the image)")


def corrupt(detail: str) -> SlideError:
    """An ``image_corrupt`` error: the file is a recognised image, but its data is damaged or inconsistent.

    ``image_unreadable`` is for what cannot be read as an image at all (not an image, empty, invalid or
    unsupported header). Details say what is wrong and where (offset, row, chunk), never file bytes.
    """
    return SlideError("image_corrupt", detail)


def describe_error(error: BaseException) -> str:
    """A codec's or parser's exception as ``Type: message`` for a detail, without quoted bytes, short."""
    lines = str(error).strip().splitlines()
    text = _BYTES_LITERAL.sub("<bytes>", lines[0]) if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _SeqReader:
    """Buffered sequential reads from a seekable file (few large reads: cheap on S3)."""

    def __init__(self, fh: BinaryIO, start: int, bufsize: int) -> None:
        self._fh, self._bufsize = fh, bufsize
        self._buf, self._pos, self._base = b"", 0, start  # _base = file offset of _buf[0]

    @property
    def position(self) -> int:
        """File offset of the next byte ``read`` returns."""
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
        """Move ``n`` bytes forward without returning them."""
        if self._pos + n <= len(self._buf):
            self._pos += n
        else:
            self._base, self._buf, self._pos = self.position + n, b"", 0

    def peek(self, ahead: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``ahead`` bytes past the position, which does not move."""
        self._fh.seek(self.position + ahead)
        return self._fh.read(n)


class _MemReader(_SeqReader):
    """``_SeqReader``'s reads over bytes already in memory: zero-copy ``memoryview`` slices."""

    def __init__(self, data: FileBytes, start: int) -> None:
        self._view, self._at = memoryview(data), start

    @property
    def position(self) -> int:
        """Offset of the next byte ``read`` returns."""
        return self._at

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end), as a view."""
        out = self._view[self._at:self._at + n]
        self._at += len(out)
        return out  # type: ignore[return-value]  # a memoryview serves every caller of read

    def skip(self, n: int) -> None:
        """Move ``n`` bytes forward."""
        self._at += n

    def peek(self, ahead: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``ahead`` bytes past the position (a view), which does not move."""
        return self._view[self._at + ahead:self._at + ahead + n]  # type: ignore[return-value]  # as in read


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The process's stderr (file descriptor 2) goes to /dev/null meanwhile.

    For a decode whose C library warnings are expected (libjpeg reporting the filler bytes the JPEG
    check adds on purpose). Output of other threads to stderr in that moment is lost too.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no /dev/null: the warnings stay visible
        null = -1
    try:
        saved = os.dup(2) if null >= 0 else -1
    except OSError:  # no stderr: nothing to silence
        saved = -1
    if saved < 0:
        if null >= 0:
            os.close(null)
        yield
        return
    try:
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _imdecode(data: Union[FileBytes, memoryview, np.ndarray], flags: int) -> Optional[np.ndarray]:
    """``cv2.imdecode`` of ``data``; ``None`` when OpenCV cannot decode it."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


# ----------------------------------------------------------------------------- readers

class RegionReader(abc.ABC):
    """Rows or regions of one image as ``H x W x 3`` BGR ``uint8``; a context manager.

    ``peak_decoded_bytes`` is the largest amount of decoded pixel data the reader held at once
    (the returned array included), so callers and tests can check the budget was respected.
    Returned arrays may be read-only views of a cache: copy before modifying.
    """

    streaming = False  # True: rows are produced top to bottom, going back means restarting

    def __init__(self, info: ImageInfo, budget_bytes: int) -> None:
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

    def finish(self) -> None:  # noqa: B027 - optional hook: a reader that checks everything up front has none
        """Check the parts of the file the reads did not reach (e.g. the rest of a streamed PNG).

        Called when a ``with`` block is left without an error; raises ``SlideError`` when they are damaged.
        """

    def close(self) -> None:  # noqa: B027 - optional hook: a reader holding nothing need not override it
        """Release file handles and caches."""

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], *rest: object) -> None:
        """``finish`` (unless the block raised), then ``close``."""
        try:
            if exc_type is None:
                self.finish()
        finally:
            self.close()
