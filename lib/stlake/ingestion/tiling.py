"""Cut one encoded tile per spot, reading the image band by band within a memory budget.

A tile is a square of ``size_px`` image pixels centred on the spot: its top-left corner is
``x0 = floor(x + 0.5) - size_px // 2`` (same for ``y0``), so with an even size the spot's pixel is
at ``x0 + size_px // 2``. Squares that reach past the image border are either padded with constant
white (255, i.e. background: no reflected tissue is invented; ``padded=True``) or dropped
(``border="drop"``; their indices are returned). The square may then be resized (``INTER_AREA`` when
shrinking, ``INTER_LINEAR`` when enlarging) and is encoded as an ordinary JPEG or PNG file.

Memory: a task's budget is split in two halves. Decoded pixels get one (``decode_budget``: the
region reader is opened with it). Spots are processed sorted by row, in horizontal bands whose
full-width BGR pixels stay within a quarter of that half (at least one and a half tiles high);
random-access (TIFF) readers decode only the band's column span. ``split_spots_into_regions`` uses
the same bands to split a giant random-access slide into several tasks. Tiles get the other half
(``tile_budget``): the buffers of the tiles being cut (``in_flight_bytes``: one tile's
``tile_work_bytes``, or with several threads each thread's and the encoded tiles queued) and the
encoded tiles kept until they are written, which ``tile_batches`` hands out in batches of at most
``batch_bytes``. ``check_tile_fits`` rejects a slide whose single tile cannot fit.

Threads: a unit that cuts on several threads (an image decoded whole is one task) hands a band's
spots to a thread pool in tasks of ``TILES_PER_TASK`` and takes the tiles back in order, so batches
and files are the same as on one thread; OpenCV's calls release the GIL.

Each tile also carries ``pixel_std``, the largest per-channel standard deviation of its in-image
pixels: a slide whose tiles are all below ``UNIFORM_STD`` is blank or one colour.
"""
from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Optional, get_args

import cv2
import numpy as np

from stlake.ingestion.images import ImageInfo, RegionReader, decoded_bytes
from stlake.ingestion.options import Border, TileEncoding
from stlake.ingestion.records import SlideError

BORDERS: tuple[Border, ...] = get_args(Border)
ENCODINGS: tuple[TileEncoding, ...] = get_args(TileEncoding)
PAD_VALUE = 255  # constant white padding
NEAR_WHITE = 220  # a pixel whose three channels are all >= this is background, whatever its saturation
PNG_COMPRESSION = 1  # fast; tiles are small
#: A tile whose in-image pixels vary less than this (largest per-channel standard deviation) is uniform.
UNIFORM_STD = 2.0
#: Encoded tiles are held up to this many times while written: the list, the Arrow column, the Parquet buffer.
HELD_COPIES = 3
MIB = 1 << 20


@dataclass(frozen=True)
class TileSpec:
    """How tiles are cut and encoded. ``size_px`` is in image pixels (callers convert µm)."""

    size_px: int
    resize_px: Optional[int] = None
    border: Border = "pad"
    encoding: TileEncoding = "jpeg"
    quality: int = 90
    tissue_saturation: int = 20

    def __post_init__(self) -> None:
        if int(self.size_px) < 1:
            raise ValueError(f"tile size must be at least 1 px, not {self.size_px}")
        if self.resize_px is not None and int(self.resize_px) < 1:
            raise ValueError(f"resize must be at least 1 px, not {self.resize_px}")
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, not {self.border!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {self.encoding!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality must be within 1..100, not {self.quality}")


@dataclass
class Tile:
    """One encoded tile; ``index`` is the spot's position in the arrays given to ``cut_tiles``."""

    index: int
    data: bytes
    width: int
    height: int
    x0: int  # top-left corner of the cut square in image pixels (negative when padded)
    y0: int
    padded: bool
    tissue_fraction: float
    pixel_std: float = 0.0  # largest per-channel standard deviation of the in-image pixels

    @property
    def uniform(self) -> bool:
        """The tile's image pixels are (near) one colour."""
        return self.pixel_std < UNIFORM_STD


# ---------------------------------------------------------------- memory budget of a tile task

def decode_budget(budget_bytes: int) -> int:
    """Bytes of decoded pixels a tile task may hold: half its budget (the region reader's budget)."""
    return int(budget_bytes) // 2


def tile_budget(budget_bytes: int) -> int:
    """Bytes a tile task may hold in tile buffers and encoded tiles: the other half of its budget."""
    return int(budget_bytes) - decode_budget(budget_bytes)


def output_side(spec: TileSpec) -> int:
    """Side of the encoded tile in pixels."""
    return int(spec.resize_px or spec.size_px)


def encoded_bound(spec: TileSpec) -> int:
    """Most bytes one encoded tile takes (PNG or JPEG of noise: raw size plus a little)."""
    return output_side(spec) ** 2 * 3 * 9 // 8 + 2048


def tile_work_bytes(spec: TileSpec) -> int:
    """Buffers alive while one tile is cut: its square, the tissue masks, the resized copy, the encoder's output."""
    square = int(spec.size_px) ** 2 * 3
    resized = output_side(spec) ** 2 * 3 if spec.resize_px else 0
    return 4 * square + resized + 2 * encoded_bound(spec)


#: Tiles a thread cuts per task when a unit cuts on several threads.
TILES_PER_TASK = 16


def _queued_tasks(threads: int) -> int:
    """Tasks handed to the pool ahead of the tile taken back: two per thread keep every thread busy."""
    return 2 * threads


def in_flight_bytes(spec: TileSpec, threads: int = 1) -> int:
    """Tile buffers alive while tiles are cut: one tile's, or each thread's task plus the encoded tiles of queued ones.

    A task cuts its ``TILES_PER_TASK`` squares at once (their tissue masks in one pass, the squares
    stacked once more for it).
    """
    if threads <= 1:
        return tile_work_bytes(spec)
    task = TILES_PER_TASK * (tile_work_bytes(spec) + int(spec.size_px) ** 2 * 3)
    return threads * task + _queued_tasks(threads) * TILES_PER_TASK * encoded_bound(spec)


def batch_bytes(spec: TileSpec, budget_bytes: int, threads: int = 1) -> int:
    """Encoded bytes a task keeps before writing them, so that cutting and writing stay within the tile budget."""
    return max(0, (tile_budget(budget_bytes) - in_flight_bytes(spec, threads)) // HELD_COPIES)


def fitting_threads(spec: TileSpec, budget_bytes: int, threads: int) -> int:
    """``threads``, or fewer where their buffers would leave no room in the tile budget for one kept tile."""
    while threads > 1 and batch_bytes(spec, budget_bytes, threads) < encoded_bound(spec):
        threads -= 1
    return max(1, threads)


def min_band_bytes(spec: TileSpec, image: ImageInfo, budget_bytes: int) -> int:
    """Decoded bytes of the smallest band a task reads: 1.5 tiles high, one tile (TIFF) or the image wide.

    Zero for a PNG/JPEG decoded whole within the decode budget (bands are views of it).
    """
    if not image.random_access and decoded_bytes(image) <= decode_budget(budget_bytes):
        return 0
    width = min(int(spec.size_px), image.width) if image.random_access else image.width
    return (int(spec.size_px) + int(spec.size_px) // 2) * width * 3


def check_tile_fits(spec: TileSpec, image: ImageInfo, budget_bytes: int) -> None:
    """Raise ``implausible_geometry`` when one tile alone does not fit the task's memory budget."""
    band, work, kept = min_band_bytes(spec, image, budget_bytes), tile_work_bytes(spec), encoded_bound(spec)
    if band > decode_budget(budget_bytes) // 4 or kept > batch_bytes(spec, budget_bytes):
        raise SlideError("implausible_geometry",
                         f"one {spec.size_px} px tile needs {(work + HELD_COPIES * kept) / MIB:.0f} MiB of tile "
                         f"buffers and a {band / MIB:.0f} MiB image band, over the per-task memory budget of "
                         f"{int(budget_bytes) / MIB:.0f} MiB (half for the image, half for tiles): the spot "
                         "diameter or tile size is implausible for this budget")


@dataclass
class TileMemory:
    """What a task holds in tile buffers: encoded tiles not yet written (``held``) and the most at once (``peak``).

    ``in_flight``: buffers of tiles that threads go on cutting while a batch is written (0 on one thread).
    """

    held: int = 0
    peak: int = 0
    in_flight: int = 0

    def cutting(self, work: int) -> None:
        """Tiles are being cut with ``work`` bytes of buffers on top of the held tiles."""
        self.peak = max(self.peak, self.held + int(work))

    def writing(self) -> None:
        """The held tiles (a batch) are being written: copied into Arrow and Parquet buffers, then released."""
        self.peak = max(self.peak, HELD_COPIES * self.held + self.in_flight)
        self.held = 0


def tile_origin(c: np.ndarray, size_px: int) -> np.ndarray:
    """Top-left coordinate of the square of side ``size_px`` centred on ``c`` (int64)."""
    return np.floor(np.asarray(c, dtype=np.float64) + 0.5).astype(np.int64) - int(size_px) // 2


@lru_cache(maxsize=16)
def _saturation_limits(saturation: int) -> np.ndarray:
    """For each max channel value v, the largest (max - min) whose HSV saturation is <= ``saturation``.

    Taken from ``cv2.cvtColor(BGR2HSV)`` itself, so the rule below matches it exactly while skipping
    the hue computation (twice as fast per tile).
    """
    v, d = np.arange(256)[:, None], np.arange(256)[None, :]
    low = (v - np.minimum(d, v)).astype(np.uint8)
    pixels = np.dstack([np.broadcast_to(v, (256, 256)).astype(np.uint8), low, low])
    s = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[..., 1]
    return (((s <= saturation) & (d <= v)).sum(axis=1) - 1).astype(np.uint8)


def tissue_fraction(tile_bgr: np.ndarray, saturation: int = 20, near_white: int = NEAR_WHITE) -> float:
    """Fraction of pixels with HSV saturation > ``saturation`` (of 255) that are not near-white.

    Near-white = all three channels >= ``near_white`` (bright glass with a faint tint).
    """
    n = tile_bgr.shape[0] * tile_bgr.shape[1]
    if n == 0:
        return 0.0
    return cv2.countNonZero(_tissue_mask(tile_bgr, saturation, near_white)) / n


#: Pixels of small squares stacked for one pass of ``tissue_fractions`` (their masks stay in the CPU's cache).
STACKED_PIXELS = 32 << 10


def tissue_fractions(squares: list[np.ndarray], saturation: int = 20, near_white: int = NEAR_WHITE) -> list[float]:
    """``tissue_fraction`` of each of equal-sized squares; small ones stacked, one pass per stack (fewer calls).

    A 41 px square costs a third of its own pass; squares of ``STACKED_PIXELS`` or more get their own.
    """
    per_square = squares[0].shape[0] * squares[0].shape[1] if squares else 0
    group = max(1, STACKED_PIXELS // max(1, per_square))
    if group == 1 or per_square == 0:
        return [tissue_fraction(square, saturation, near_white) for square in squares]
    fractions: list[float] = []
    for k in range(0, len(squares), group):
        part = squares[k:k + group]
        mask = _tissue_mask(np.concatenate(part), saturation, near_white)
        fractions += (np.count_nonzero(mask.reshape(len(part), per_square), axis=1) / per_square).tolist()
    return fractions


def _tissue_mask(pixels: np.ndarray, saturation: int, near_white: int) -> np.ndarray:
    """255 where a BGR pixel counts as tissue (see ``tissue_fraction``), else 0."""
    b, g, r = cv2.split(pixels)
    high, low = cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r)
    coloured = cv2.threshold(low, int(near_white) - 1, 255, cv2.THRESH_BINARY_INV)[1]
    spread = cv2.bitwise_and(cv2.subtract(high, low), coloured)
    limits = cv2.LUT(high, _saturation_limits(int(saturation)))
    return cv2.compare(spread, limits, cv2.CMP_GT)


def band_rows(size_px: int, width: int, budget_bytes: int) -> int:
    """Rows per band: a quarter of the decode budget of full-width BGR rows, at least 1.5 tiles."""
    return max(decode_budget(budget_bytes) // 4 // max(1, int(width) * 3), int(size_px) + int(size_px) // 2)


def plan_bands(y: np.ndarray, size_px: int, width: int, height: int,
               budget_bytes: int) -> list[tuple[int, int, np.ndarray]]:
    """Top-to-bottom bands ``(row0, row1, spot indices)`` covering every spot's square.

    Rows are clipped to the image; each band is at most ``band_rows`` high and holds the spots
    (indices into ``y``, sorted by row) whose clipped squares lie within it. Consecutive bands may
    overlap by less than a tile; ``row0`` and ``row1`` never decrease from one band to the next.
    """
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return []
    top = tile_origin(y, size_px)
    order = np.argsort(top, kind="stable")
    tops = np.clip(top[order], 0, height)
    bottoms = np.clip(top[order] + size_px, 0, height)  # sorted too: a monotone map of sorted tops
    rows = band_rows(size_px, width, budget_bytes)
    bands, i = [], 0
    while i < len(order):
        j = max(int(np.searchsorted(bottoms, tops[i] + rows, side="right")), i + 1)
        bands.append((int(tops[i]), int(bottoms[j - 1]), order[i:j]))
        i = j
    return bands


def split_spots_into_regions(y: np.ndarray, size_px: int, width: int, height: int, budget_bytes: int,
                             max_spots_per_region: Optional[int], x: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Spot index groups (one per task) made of consecutive bands of ``plan_bands``.

    Bands are packed into a group while it has at most ``max_spots_per_region`` spots (``None`` or
    ``<= 0``: no limit). A band with more spots than that is split into column runs (by ``x`` when
    given), so a random-access reader decodes only part of its width. Indices are sorted.
    """
    limit = int(max_spots_per_region) if max_spots_per_region and max_spots_per_region > 0 else None
    pieces: list[np.ndarray] = []
    for _, _, index in plan_bands(y, size_px, width, height, budget_bytes):
        if limit is None or len(index) <= limit:
            pieces.append(index)
            continue
        if x is not None:
            index = index[np.argsort(np.asarray(x, dtype=np.float64)[index], kind="stable")]
        pieces.extend(index[k:k + limit] for k in range(0, len(index), limit))
    groups: list[list[np.ndarray]] = []
    count = 0
    for piece in pieces:
        if groups and (limit is None or count + len(piece) <= limit):
            groups[-1].append(piece)
            count += len(piece)
        else:
            groups.append([piece])
            count = len(piece)
    return [np.sort(np.concatenate(group)) for group in groups]


class _BandSource:
    """Band pixels from a reader; for streaming readers it keeps the overlap with the last band."""

    def __init__(self, reader: RegionReader) -> None:
        self._reader = reader
        self._top = 0
        self._rows = np.zeros((0, reader.info.width, 3), np.uint8)

    def get(self, r0: int, r1: int, c0: int, c1: int, needed: Optional[np.ndarray] = None) -> np.ndarray:
        """Pixels of rows ``[r0, r1)``; columns ``[c0, c1)`` for random-access readers, else all.

        ``needed``: the squares that will be cut (``N x 4``: y0, y1, x0, x1); a random-access reader
        may skip decoding what lies outside them.
        """
        reader = self._reader
        if reader.info.random_access:
            return reader.read_region(r0, r1, c0, c1, needed)
        if not reader.streaming:
            return reader.read_rows(r0, r1)
        end = self._top + len(self._rows)
        if self._top <= r0 < end:
            kept = self._rows[r0 - self._top:]
            new = reader.read_rows(end, r1) if r1 > end else self._rows[:0]
            self._rows = np.concatenate([kept, new]) if len(new) else kept
        else:
            self._rows = reader.read_rows(r0, r1)
        self._top = r0
        return self._rows


def _compact(pixels: np.ndarray) -> np.ndarray:
    """A contiguous copy of BGR pixels; of a BGR view of RGB data (libspng's, channels reversed) by OpenCV's swap.

    numpy copies a reversed channel axis element by element: 8x (41 px squares) to 40x (224 px) slower.
    """
    if pixels.strides[2] < 0:
        return cv2.cvtColor(pixels[:, :, ::-1], cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(pixels)


def _cut(band: np.ndarray, r0: int, c0: int, x0: int, y0: int, size: int,
         width: int, height: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The square at ``(x0, y0)`` from a band whose top-left pixel is ``(c0, r0)``, its in-image part, padded flag.

    Always a compact copy: fetching the scattered rows once makes the later passes cheaper.
    """
    ya, yb = max(y0, 0), min(y0 + size, height)
    xa, xb = max(x0, 0), min(x0 + size, width)
    if (ya, yb, xa, xb) == (y0, y0 + size, x0, x0 + size):
        square = _compact(band[y0 - r0:y0 - r0 + size, x0 - c0:x0 - c0 + size])
        return square, square, False
    tile = np.full((size, size, 3), PAD_VALUE, np.uint8)
    if yb > ya and xb > xa:
        tile[ya - y0:yb - y0, xa - x0:xb - x0] = band[ya - r0:yb - r0, xa - c0:xb - c0]
    return tile, tile[ya - y0:max(yb - y0, 0), xa - x0:max(xb - x0, 0)], True


def pixel_std(pixels: np.ndarray) -> float:
    """Largest per-channel standard deviation of BGR ``pixels`` (0 when there are none)."""
    if pixels.size == 0:
        return 0.0
    _, std = cv2.meanStdDev(pixels)
    return float(std.max())


def _encoder(spec: TileSpec) -> tuple[str, list[int]]:
    """File extension and OpenCV ``imencode`` parameters for the spec's encoding."""
    if spec.encoding == "jpeg":
        return ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(spec.quality)]
    return ".png", [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]


def encode_tile(square: np.ndarray, spec: TileSpec) -> tuple[bytes, int, int]:
    """Resize (if asked) and encode one BGR square; returns (bytes, width, height)."""
    if spec.resize_px and spec.resize_px != square.shape[1]:
        shrink = spec.resize_px < square.shape[1]
        square = cv2.resize(square, (spec.resize_px, spec.resize_px),
                            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    ext, params = _encoder(spec)
    ok, buf = cv2.imencode(ext, square, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {square.shape} tile as {spec.encoding}")
    return buf.tobytes(), square.shape[1], square.shape[0]


def _kept_spots(xs: np.ndarray, ys: np.ndarray, spec: TileSpec, width: int,
                height: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the spots to cut and of those dropped (``border="drop"``: squares reaching past the image)."""
    size = int(spec.size_px)
    inside = (xs >= 0) & (ys >= 0) & (xs + size <= width) & (ys + size <= height)
    if spec.border == "drop":
        return np.flatnonzero(inside), np.flatnonzero(~inside).astype(np.int64)
    return np.arange(len(xs)), np.zeros(0, np.int64)


def tile_batches(reader: RegionReader, x: np.ndarray, y: np.ndarray, spec: TileSpec, budget_bytes: int,
                 limit_bytes: Optional[int] = None, memory: Optional[TileMemory] = None,
                 threads: int = 1) -> tuple[Generator[list[Tile], None, None], np.ndarray]:
    """Tiles of the spots ``(x[i], y[i])`` in batches of at most ``limit_bytes`` encoded bytes; dropped indices.

    Each batch is sorted by index; without a limit there is one batch. ``memory`` (if given) counts
    the encoded tiles of the current batch and the buffers of the tiles being cut. ``threads`` > 1 cut
    on a thread pool (``limit_bytes`` should then be ``batch_bytes(..., threads)``); the batches are the same.
    """
    width, height = reader.info.width, reader.info.height
    xs, ys = tile_origin(x, int(spec.size_px)), tile_origin(y, int(spec.size_px))
    keep, dropped = _kept_spots(xs, ys, spec, width, height)
    bands = [(r0, r1, keep[local]) for r0, r1, local in
             plan_bands(np.asarray(y, dtype=np.float64)[keep], int(spec.size_px), width, height, budget_bytes)]
    return _batches(reader, xs, ys, bands, spec, limit_bytes, memory or TileMemory(), threads), dropped


def _cut_tiles(band: np.ndarray, r0: int, c0: int, spec: TileSpec, width: int, height: int,
               spots: list[tuple[int, int, int]]) -> list[Tile]:
    """The tiles of ``spots`` (index, x0, y0) from a band whose top-left pixel is ``(c0, r0)``."""
    cuts = [_cut(band, r0, c0, x0, y0, int(spec.size_px), width, height) for _, x0, y0 in spots]
    fractions = tissue_fractions([square for square, _, _ in cuts], spec.tissue_saturation)
    tiles = []
    for (i, x0, y0), (square, pixels, padded), fraction in zip(spots, cuts, fractions):
        data, w, h = encode_tile(square, spec)
        tiles.append(Tile(i, data, w, h, x0, y0, padded, fraction, pixel_std(pixels)))
    return tiles


@contextlib.contextmanager
def _thread_pool(workers: int) -> Iterator[Optional[ThreadPoolExecutor]]:
    """A pool of ``workers`` threads (None for none); tasks not started are dropped when the block ends early."""
    if workers < 1:
        yield None
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="stlake-tiles")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(cut: Callable[[list[tuple[int, int, int]]], list[Tile]], spots: list[tuple[int, int, int]],
              pool: Optional[ThreadPoolExecutor], threads: int) -> Iterator[Tile]:
    """The tiles of ``spots`` in their order: one by one here, or cut ahead on the pool, a bounded number of tasks."""
    if pool is None:
        for spot in spots:
            yield from cut([spot])
        return
    queued: deque[Future[list[Tile]]] = deque()
    for k in range(0, len(spots), TILES_PER_TASK):
        queued.append(pool.submit(cut, spots[k:k + TILES_PER_TASK]))
        if len(queued) >= _queued_tasks(threads):
            yield from queued.popleft().result()
    while queued:
        yield from queued.popleft().result()


def _batches(reader: RegionReader, xs: np.ndarray, ys: np.ndarray, bands: list[tuple[int, int, np.ndarray]],
             spec: TileSpec, limit_bytes: Optional[int], memory: TileMemory,
             threads: int) -> Generator[list[Tile], None, None]:
    """Cut band by band (rows ``r0..r1``, spot indices), yielding a batch when the next tile would overfill it."""
    width, height, size = reader.info.width, reader.info.height, int(spec.size_px)
    work = in_flight_bytes(spec, threads)
    batch: list[Tile] = []
    held = 0
    source = _BandSource(reader)
    with _thread_pool(threads if threads > 1 else 0) as pool:
        memory.in_flight = work if pool is not None else 0
        for r0, r1, index in bands:
            c0 = int(np.clip(xs[index].min(), 0, width))
            c1 = int(np.clip((xs[index] + size).max(), c0, width))
            squares = np.stack([ys[index], ys[index] + size, xs[index], xs[index] + size], axis=1)
            band = source.get(r0, r1, c0, c1, squares)
            if not reader.info.random_access:
                c0 = 0
            cut = partial(_cut_tiles, band, r0, c0, spec, width, height)
            spots = list(zip(index.tolist(), xs[index].tolist(), ys[index].tolist()))
            for tile in _in_order(cut, spots, pool, threads):
                memory.cutting(work)
                if limit_bytes is not None and batch and held + len(tile.data) > limit_bytes:
                    yield sorted(batch, key=lambda tile: tile.index)
                    batch, held = [], 0
                batch.append(tile)
                held += len(tile.data)
                memory.held = held
    if batch:
        yield sorted(batch, key=lambda tile: tile.index)


def cut_tiles(reader: RegionReader, x: np.ndarray, y: np.ndarray, spec: TileSpec,
              budget_bytes: int) -> tuple[list[Tile], np.ndarray]:
    """One tile per spot centre ``(x[i], y[i])`` (image pixels); returns (tiles by index, dropped indices).

    With ``border="drop"`` spots whose square reaches past the image are not cut and are returned
    as dropped; with ``"pad"`` nothing is dropped. All tiles are kept in memory (see ``tile_batches``).
    """
    batches, dropped = tile_batches(reader, x, y, spec, budget_bytes)
    tiles = [tile for batch in batches for tile in batch]
    tiles.sort(key=lambda tile: tile.index)
    return tiles, dropped
