"""TIFF: one pyramid level of the largest series (structure, segment decoding) and its random-access reader.

Striped, tiled, BigTIFF and pyramidal TIFFs are read region by region: ``read_region`` decodes only
the strips/tiles that intersect the region, reading their bytes directly (nearby segments coalesced
into one ranged read, which matters on S3). Uncompressed strips are read row by row, so even a
single-strip giant TIFF works. JPEG-compressed segments are decoded with OpenCV (``JPEGTables``
merged in), others with tifffile's codecs (none, zlib, packbits, lzma, zstd without ``imagecodecs``;
LZW or JPEG 2000 need ``imagecodecs`` installed). Palettes are applied, MinIsWhite is inverted.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

import cv2
import numpy as np

from stlake.ingestion.images.base import GIB, ImageInfo, RegionReader, _file_size, corrupt, describe_error
from stlake.ingestion.images.jpeg import decode_jpeg
from stlake.ingestion.records import SlideError

if TYPE_CHECKING:
    import tifffile

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0 = RGB
_PHOTOMETRIC = {0: "miniswhite", 1: "minisblack", 2: "rgb", 3: "palette", 6: "ycbcr"}


class _TiffLevel:
    """One pyramid level (default 0) of the largest series of a TIFF: geometry and segment decoding, no pixels held.

    ``sizes`` lists every level's (width, height), level 0 first: the reduced-resolution pages tifffile
    groups into the series (SubIFDs, or pages marked reduced-resolution as pyvips / HEST write them).
    ``microns_per_pixel`` is level 0's pixel size from the resolution tags (inch or cm), None without them.
    """

    def __init__(self, fh: BinaryIO, level: int = 0) -> None:
        import tifffile  # here, not at module level: only TIFF slides pay for importing it

        self._fh = fh
        try:
            fh.seek(0)  # tifffile treats the current position as the start of the TIFF
            self.tif = tifffile.TiffFile(fh)
            pages = self._pyramid()
            self.sizes = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
            self.microns_per_pixel = _tag_mpp(pages[0])
            if not 0 <= level < len(pages):
                raise SlideError("image_unreadable", f"TIFF has no pyramid level {level} (it has {len(pages)})")
            page = pages[level]
        except SlideError:
            raise
        except Exception as error:  # tifffile raises many kinds on malformed files
            raise SlideError("image_unreadable", f"TIFF structure is invalid ({describe_error(error)})") from None
        self.level = level
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
        self._check()
        channels = 3 if self.photometric in (2, 3, 6) else 1
        random_access = self.tiled or self.down > 1 or self.direct
        self.info = ImageInfo(self.width, self.height, channels, "tiff", bool(random_access))

    def _pyramid(self) -> list[tifffile.TiffPage]:
        """The keyframes of the levels of the series with the most pixels, largest first."""
        best, area = None, -1
        for series in self.tif.series:
            page = series.keyframe
            if page is not None and int(page.imagewidth) * int(page.imagelength) > area:
                best, area = series, int(page.imagewidth) * int(page.imagelength)
        if best is None:
            raise SlideError("image_unreadable", "TIFF contains no image")
        levels = [level.keyframe for level in best.levels if level.keyframe is not None] or [best.keyframe]
        first = levels[0]
        return [first] + [page for page in levels[1:] if page.imagewidth < first.imagewidth
                          and page.samplesperpixel == first.samplesperpixel]

    def _check(self) -> None:
        """Reject what cannot be decoded, before any pixel is read."""
        page = self.page
        if int(page.imagedepth) != 1 or self.width == 0 or self.height == 0:
            raise SlideError("image_unreadable", "TIFF image is empty or volumetric")
        if self.photometric not in _PHOTOMETRIC:
            raise SlideError("image_unreadable", f"TIFF photometric {page.photometric!r} is not supported")
        if self.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)):
            raise SlideError("image_unreadable", f"TIFF samples of type {self.dtype} are not supported")
        self._check_codec()
        if self.photometric == 6 and self.compression != 7:
            raise SlideError("image_unreadable", "YCbCr TIFF without JPEG compression is not supported")
        if len(self.offsets) < self.planes * self.across * self.down:
            raise corrupt(f"TIFF has {len(self.offsets)} strips/tiles where its image needs "
                          f"{self.planes * self.across * self.down}")
        end = int((self.offsets + self.counts).max()) if len(self.offsets) else 0
        if end > _file_size(self._fh):
            raise corrupt(f"TIFF is truncated (its image data runs to offset {end}, past the end of the "
                          f"{_file_size(self._fh)}-byte file)")

    def _check_codec(self) -> None:
        """The compression must have a decoder (OpenCV for 8-bit JPEG, else tifffile's codecs)."""
        import tifffile

        if self.compression == 1 or (self.compression == 7 and self.dtype == np.uint8):
            return
        try:
            tifffile.TIFF.DECOMPRESSORS[self.compression]
        except KeyError as error:
            raise SlideError("image_unreadable", f"TIFF compression {self.page.compression!r} is not supported "
                                                 f"here ({str(error).strip(chr(39))})") from error

    def segment_bytes(self) -> int:
        """Decoded bytes of one strip or tile."""
        return self.seg_h * self.seg_w * (self.samples // self.planes) * self.dtype.itemsize

    def decode(self, data: Union[bytes, memoryview], index: int) -> np.ndarray:
        """One segment as ``rows x cols x samples`` (RGB order for colour)."""
        if self.compression == 7 and self.dtype == np.uint8:
            return self._decode_jpeg(data)
        segment = self.page.decode(bytes(data), index, jpegtables=self.page.jpegtables)[0]
        assert segment is not None  # tifffile returns None only for an empty segment (no bytes)
        return segment.reshape(segment.shape[-3:])

    def _decode_jpeg(self, data: Union[bytes, memoryview]) -> np.ndarray:
        """One JPEG segment via OpenCV: shared tables merged in, RGB-coded data marked as such, stream checked."""
        tables = self.page.jpegtables
        if tables:
            data = bytes(tables[:-2]) + bytes(data[2:])
        if self.photometric == 2 and self.samples // self.planes == 3:
            data = bytes(data[:2]) + _ADOBE_RGB + bytes(data[2:])
        try:
            array = decode_jpeg(data, cv2.IMREAD_UNCHANGED)
        except SlideError as error:
            raise SlideError(error.reason, f"a JPEG tile/strip of the TIFF is damaged: {error.detail}") from None
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
        """Close the tifffile handle (not the file it reads)."""
        self.tif.close()

    def __enter__(self) -> _TiffLevel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tag_mpp(page: tifffile.TiffPage) -> Optional[float]:
    """µm per pixel from a page's XResolution / ResolutionUnit (inch or centimetre), None when not given."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    per_unit = numerator / denominator if denominator else 0.0
    microns = {2: 25_400.0, 3: 10_000.0}.get(unit)
    if not microns or not per_unit > 0:
        return None
    return microns / per_unit


def _check_segment_size(level: _TiffLevel, index: int, seg: np.ndarray, top: int, left: int) -> None:
    """A decoded strip/tile must cover its part of the image (``image_corrupt`` when its data is short)."""
    rows, cols = min(level.seg_h, level.height - top), min(level.seg_w, level.width - left)
    if seg.shape[0] < rows or seg.shape[1] < cols:
        kind = "tile" if level.tiled else "strip"
        raise corrupt(f"TIFF {kind} {index} decodes to {seg.shape[1]}x{seg.shape[0]} pixels where its place in the "
                      f"image needs {cols}x{rows}")


class _TiffReader(RegionReader):
    """Random-access reads of TIFF level 0, decoding only the intersecting strips or tiles."""

    def __init__(self, uri: str, fh: BinaryIO, level: _TiffLevel, budget_bytes: int) -> None:
        """Takes over ``fh`` and ``level`` (parsed once by ``open_region_reader``)."""
        super().__init__(level.info, budget_bytes)
        self._uri, self._fh, self._level = uri, fh, level
        if not level.direct and level.segment_bytes() > budget_bytes // 2:
            self.close()
            raise SlideError("image_too_large", f"{uri}: one {'tile' if level.tiled else 'strip'} of this "
                                                f"{level.width}x{level.height} TIFF decodes to "
                                                f"{level.segment_bytes() / GIB:.2f} GB, over half the "
                                                f"per-task budget {budget_bytes / GIB:.2f} GB; re-save it as a "
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
            raise corrupt(f"{self._uri}: TIFF data cannot be decoded ({describe_error(error)})") from None
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
            try:
                seg = level.decode(data, index)
            except (ValueError, OSError, RuntimeError) as error:  # a codec's error on damaged data
                raise corrupt(f"TIFF {'tile' if level.tiled else 'strip'} {index} (at offset "
                              f"{int(level.offsets[index])}) cannot be decoded ({describe_error(error)})") from None
            largest = max(largest, seg.nbytes)
            _check_segment_size(level, index, seg, top, left)
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
                    raise corrupt(f"TIFF is truncated inside its image data (at offset {start + len(blob)})")
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
                    raise corrupt(f"TIFF is truncated inside its image data (at offset {offset + len(buf)})")
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
