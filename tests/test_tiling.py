"""tiling: exact tile positions, borders, resize, encoding, tissue fraction, bands within budget."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from imagedata import coord_image
from stlake.ingestion import images, tiling
from stlake.ingestion.records import SlideError
from stlake.ingestion.tiling import TileSpec


def expected_tile(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """The square at (x0, y0) with white outside the image."""
    padded = cv2.copyMakeBorder(image, size, size, size, size, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    return padded[y0 + size:y0 + 2 * size, x0 + size:x0 + 2 * size]


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def write(path, image: np.ndarray, kind: str) -> str:
    if kind == "png":
        cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        tifffile.imwrite(path, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(64, 64),
                         compression="zlib")
    return str(path)


def spots(h: int, w: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, w - 1e-6, n), rng.uniform(0, h - 1e-6, n)


@pytest.mark.parametrize("kind,budget", [("png", 1 << 30), ("png", 400_000), ("tiff", 1 << 30), ("tiff", 400_000)])
@pytest.mark.parametrize("size", [31, 40])
def test_tiles_at_exact_positions(tmp_path, kind, budget, size):
    h, w = 333, 517
    image = coord_image(h, w)
    path = write(tmp_path / f"slide.{kind}", image, kind)
    x, y = spots(h, w, 150)
    x[:3], y[:3] = [0.0, 516.9, 250.5], [0.2, 332.6, 100.49]  # corners, and .5 rounding up
    spec = TileSpec(size_px=size, encoding="png")
    with images.open_region_reader(path, budget) as reader:
        tiles, dropped = tiling.cut_tiles(reader, x, y, spec, budget)
        assert reader.peak_decoded_bytes <= budget
    assert len(dropped) == 0 and [t.index for t in tiles] == list(range(150))
    for tile in tiles:
        cx, cy = int(np.floor(x[tile.index] + 0.5)), int(np.floor(y[tile.index] + 0.5))
        assert (tile.x0, tile.y0) == (cx - size // 2, cy - size // 2)
        assert (tile.width, tile.height) == (size, size)
        pixels = decode(tile.data)
        assert np.array_equal(pixels, expected_tile(image, tile.x0, tile.y0, size))
        assert tile.padded == (not (0 <= tile.x0 and 0 <= tile.y0 and tile.x0 + size <= w and tile.y0 + size <= h))
        if not tile.padded:  # the centre pixel is the spot's pixel
            assert tuple(pixels[size // 2, size // 2]) == (cx % 251, cy % 251, (cx // 251 + 7 * (cy // 251)) % 251)
    assert tiles[2].x0 == 251 - size // 2 and tiles[2].y0 == 100 - size // 2


def test_padding_is_white_and_drop_reports(tmp_path):
    image = coord_image(120, 160)
    path = write(tmp_path / "s.png", image, "png")
    x, y = np.array([3.0, 80.0, 158.0, 80.0]), np.array([4.0, 60.0, 60.0, 118.0])
    with images.open_region_reader(path) as reader:
        tiles, dropped = tiling.cut_tiles(reader, x, y, TileSpec(20, encoding="png"), 1 << 30)
        assert [t.padded for t in tiles] == [True, False, True, True] and len(dropped) == 0
        corner = decode(tiles[0].data)
        assert (corner[:6] == 255).all() and (corner[:, :7] == 255).all()
        assert np.array_equal(corner[6:, 7:], image[:14, :13])
        kept, dropped = tiling.cut_tiles(reader, x, y, TileSpec(20, border="drop", encoding="png"), 1 << 30)
    assert dropped.tolist() == [0, 2, 3]
    assert [t.index for t in kept] == [1] and not kept[0].padded


def test_resize_and_jpeg_quality(tmp_path):
    image = cv2.GaussianBlur(coord_image(300, 300), (0, 0), 2)
    path = write(tmp_path / "s.png", image, "png")
    x, y = np.array([100.0, 150.0]), np.array([120.0, 200.0])
    with images.open_region_reader(path) as reader:
        for resize in (224, 32, 64):
            tiles, _ = tiling.cut_tiles(reader, x, y, TileSpec(64, resize_px=resize), 1 << 30)
            for tile in tiles:
                assert (tile.width, tile.height) == (resize, resize)
                assert decode(tile.data).shape == (resize, resize, 3)
                assert tile.data[:3] == b"\xff\xd8\xff"
        tiles, _ = tiling.cut_tiles(reader, x, y, TileSpec(64), 1 << 30)
    source = image[120 - 32:120 + 32, 100 - 32:100 + 32].astype(int)
    assert np.abs(decode(tiles[0].data).astype(int) - source).mean() < 2.0  # JPEG quality 90
    ok, low = cv2.imencode(".jpg", image[88:152, 68:132], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert tiles[0].data == low.tobytes()


def test_tissue_fraction():
    white = np.full((50, 50, 3), 255, np.uint8)
    pink = np.zeros((50, 50, 3), np.uint8)
    pink[:] = (200, 120, 230)  # BGR of eosin pink
    assert tiling.tissue_fraction(white) == 0.0
    assert tiling.tissue_fraction(np.full((50, 50, 3), 235, np.uint8)) == 0.0  # light gray glass
    assert tiling.tissue_fraction(np.full((50, 50, 3), (236, 226, 252), np.uint8)) == 0.0  # faint near-white
    assert tiling.tissue_fraction(pink) == 1.0
    half = white.copy()
    half[:, :20] = pink[:, :20]
    assert tiling.tissue_fraction(half) == pytest.approx(0.4)
    assert tiling.tissue_fraction(pink, saturation=250) == 0.0
    assert tiling.tissue_fraction(np.zeros((0, 0, 3), np.uint8)) == 0.0


def test_tissue_fraction_matches_hsv_rule():
    rng = np.random.default_rng(4)
    for k in range(12):
        tile = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
        if k % 2:
            tile = cv2.GaussianBlur(tile, (0, 0), 3)
        tile = np.clip(tile.astype(int) + rng.integers(-50, 200), 0, 255).astype(np.uint8)
        for threshold in (0, 20, 60):
            hsv = cv2.cvtColor(tile, cv2.COLOR_BGR2HSV)
            rule = (hsv[..., 1] > threshold) & (tile.min(axis=2) < tiling.NEAR_WHITE)
            assert tiling.tissue_fraction(tile, threshold) == rule.mean()


def test_tile_carries_tissue_fraction(tmp_path):
    image = np.full((200, 200, 3), 255, np.uint8)
    image[:, 100:] = (200, 120, 230)
    path = write(tmp_path / "s.png", image, "png")
    with images.open_region_reader(path) as reader:
        tiles, _ = tiling.cut_tiles(reader, np.array([50.0, 150.0, 100.0]), np.array([100.0] * 3),
                                    TileSpec(40), 1 << 30)
    assert [round(t.tissue_fraction, 3) for t in tiles] == [0.0, 1.0, 0.5]


def test_giant_png_within_budget_matches_unlimited(tmp_path):
    h, w = 4000, 6000
    image = coord_image(h, w)
    path = write(tmp_path / "giant.png", image, "png")
    del image
    gx, gy = np.meshgrid(np.arange(30, w, 173.3), np.arange(20, h, 151.7))
    x, y = gx.ravel(), gy.ravel()
    spec = TileSpec(size_px=96, encoding="png")
    budget = 16 << 20
    with images.open_region_reader(path, budget) as reader:
        assert reader.streaming
        small, _ = tiling.cut_tiles(reader, x, y, spec, budget)
        assert 0 < reader.peak_decoded_bytes <= budget
        assert reader.restarts == 0
    with images.open_region_reader(path, 1 << 30) as reader:
        full, _ = tiling.cut_tiles(reader, x, y, spec, 1 << 30)
        assert reader.peak_decoded_bytes == h * w * 3
    assert len(small) == len(x) and any(t.padded for t in small)
    assert [t.data for t in small] == [t.data for t in full]


def test_tiled_tiff_cut_within_budget(tmp_path):
    h, w = 1500, 2000
    image = coord_image(h, w)
    path = write(tmp_path / "big.tif", image, "tiff")
    x, y = spots(h, w, 300, seed=3)
    budget = 1_500_000
    with images.open_region_reader(path, budget) as reader:
        tiles, _ = tiling.cut_tiles(reader, x, y, TileSpec(50, encoding="png"), budget)
        assert reader.peak_decoded_bytes <= budget
    for tile in tiles[::7]:
        assert np.array_equal(decode(tile.data), expected_tile(image, tile.x0, tile.y0, 50))


def test_plan_bands_cover_every_spot_once():
    rng = np.random.default_rng(5)
    y = rng.uniform(0, 5000, 2000)
    bands = tiling.plan_bands(y, 100, 3000, 5000, 8 << 20)
    rows = tiling.band_rows(100, 3000, 8 << 20)
    assert sorted(np.concatenate([b[2] for b in bands]).tolist()) == list(range(2000))
    top = tiling.tile_origin(y, 100)
    for r0, r1, index in bands:
        assert 0 <= r0 < r1 <= 5000 and r1 - r0 <= rows
        assert (np.clip(top[index], 0, 5000) >= r0).all() and (np.clip(top[index] + 100, 0, 5000) <= r1).all()
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(bands, bands[1:]))
    assert tiling.plan_bands(np.zeros(0), 100, 3000, 5000, 8 << 20) == []


def test_split_spots_into_regions():
    rng = np.random.default_rng(6)
    x, y = rng.uniform(0, 4000, 5000), rng.uniform(0, 6000, 5000)
    groups = tiling.split_spots_into_regions(y, 80, 4000, 6000, 40 << 20, 700, x=x)
    assert sorted(np.concatenate(groups).tolist()) == list(range(5000))
    assert all(0 < len(g) <= 700 for g in groups)
    spans = [np.ptp(y[g]) for g in groups]
    assert max(spans) < 6000 / 2  # groups are horizontal bands, not scattered spots
    one = tiling.split_spots_into_regions(y, 80, 4000, 6000, 40 << 20, None)
    assert len(one) == 1 and len(one[0]) == 5000
    wide = tiling.split_spots_into_regions(np.full(50, 100.0), 80, 4000, 6000, 1 << 30, 20, x=np.arange(50.0))
    assert [g.tolist() for g in wide] == [list(range(0, 20)), list(range(20, 40)), list(range(40, 50))]


def test_tile_spec_validation():
    for bad in (dict(size_px=0), dict(size_px=10, border="reflect"), dict(size_px=10, encoding="webp"),
                dict(size_px=10, quality=0), dict(size_px=10, resize_px=0)):
        with pytest.raises(ValueError):
            TileSpec(**bad)


def test_tiles_carry_pixel_spread_of_their_image_part(tmp_path):
    """pixel_std is measured on the tile's in-image pixels: white padding does not make a tile varied."""
    image = np.full((200, 200, 3), 180, np.uint8)
    image[:, 100:] = (200, 120, 230)
    path = write(tmp_path / "s.png", image, "png")
    with images.open_region_reader(path) as reader:
        tiles, _ = tiling.cut_tiles(reader, np.array([50.0, 100.0, 2.0]), np.array([100.0, 100.0, 2.0]),
                                    TileSpec(40, encoding="png"), 1 << 30)
    flat, split, corner = tiles
    assert flat.pixel_std == 0.0 and flat.uniform
    assert split.pixel_std > 20 and not split.uniform
    assert corner.padded and corner.pixel_std == 0.0 and corner.uniform  # grey, padded with white


def test_tile_batches_stay_under_their_limit_and_add_up_to_cut_tiles(tmp_path):
    image = cv2.GaussianBlur(coord_image(400, 600), (0, 0), 1)
    path = write(tmp_path / "s.png", image, "png")
    x, y = spots(400, 600, 120, seed=9)
    spec = TileSpec(48, encoding="png")
    with images.open_region_reader(path) as reader:
        whole, _ = tiling.cut_tiles(reader, x, y, spec, 1 << 30)
        limit = 5 * max(len(tile.data) for tile in whole)
        memory = tiling.TileMemory()
        batches, dropped = tiling.tile_batches(reader, x, y, spec, 1 << 30, limit, memory)
        batches = list(batches)
    assert len(batches) > 5 and len(dropped) == 0
    assert all(sum(len(t.data) for t in batch) <= limit for batch in batches)
    assert all([t.index for t in batch] == sorted(t.index for t in batch) for batch in batches)
    joined = sorted((t for batch in batches for t in batch), key=lambda t: t.index)
    assert [t.data for t in joined] == [t.data for t in whole]
    assert memory.peak <= limit + tiling.tile_work_bytes(spec)


def test_memory_budget_halves():
    budget = (10 << 20) + 1
    assert tiling.decode_budget(budget) + tiling.tile_budget(budget) == budget
    spec = TileSpec(100, resize_px=224)
    assert tiling.encoded_bound(spec) >= 224 * 224 * 3
    assert tiling.tile_work_bytes(spec) >= 100 * 100 * 3 + 224 * 224 * 3
    assert tiling.batch_bytes(spec, budget) * tiling.HELD_COPIES + tiling.tile_work_bytes(spec) \
        <= tiling.tile_budget(budget)
    assert tiling.batch_bytes(TileSpec(4000), 64 << 20) == 0
    assert tiling.band_rows(10, 1000, 8 << 20) == (4 << 20) // 4 // 3000


def test_check_tile_fits():
    tiff = images.ImageInfo(20000, 20000, 3, "tiff", True)
    png = images.ImageInfo(20000, 20000, 3, "png", False)
    small_png = images.ImageInfo(1000, 1000, 3, "png", False)
    tiling.check_tile_fits(TileSpec(200), tiff, 64 << 20)
    tiling.check_tile_fits(TileSpec(200), small_png, 64 << 20)  # decoded whole: bands are views
    with pytest.raises(SlideError) as error:  # a streamed band of 300 full-width rows is 18 MB
        tiling.check_tile_fits(TileSpec(200), png, 64 << 20)
    assert error.value.reason == "implausible_geometry" and "200 px tile" in error.value.detail
    with pytest.raises(SlideError) as error:  # the 12000 px tiles within 256M
        tiling.check_tile_fits(TileSpec(12000), tiff, 256 << 20)
    assert "256 MiB" in error.value.detail


def test_streamed_png_with_large_tiles_holds_the_budget(tmp_path):
    """Decoded band plus tile buffers and kept tiles within the budget (cf. test_giant_png_within_budget)."""
    h, w = 1500, 2000
    path = write(tmp_path / "big.png", coord_image(h, w), "png")
    x, y = spots(h, w, 200, seed=4)
    spec, budget = TileSpec(120, encoding="png"), 16 << 20
    info = images.ImageInfo(w, h, 3, "png", False)
    tiling.check_tile_fits(spec, info, budget)
    memory = tiling.TileMemory()
    with images.open_region_reader(path, tiling.decode_budget(budget)) as reader:
        assert reader.streaming
        batches, _ = tiling.tile_batches(reader, x, y, spec, budget, tiling.batch_bytes(spec, budget), memory)
        count = 0
        for batch in batches:
            memory.writing()
            count += len(batch)
        assert reader.peak_decoded_bytes <= tiling.decode_budget(budget)
    assert count == 200 and memory.peak <= tiling.tile_budget(budget)
    assert reader.peak_decoded_bytes + memory.peak <= budget


@pytest.mark.parametrize("budget", [1 << 30, 2 << 20])  # decoded whole; streamed in bands
def test_tiles_cut_on_threads_are_the_same_batches(tmp_path, budget):
    """Threads cut ahead but hand back the same tiles in the same batches, within the tile budget."""
    h, w = 700, 900
    path = write(tmp_path / "s.png", cv2.GaussianBlur(coord_image(h, w), (0, 0), 1), "png")
    x, y = spots(h, w, 300, seed=5)
    spec = TileSpec(40, encoding="jpeg")
    runs = {}
    for threads in (1, 3):
        memory = tiling.TileMemory()
        limit = 50_000  # many batches
        with images.open_region_reader(path, tiling.decode_budget(budget)) as reader:
            assert reader.streaming == (budget < 1 << 30)
            batches, _ = tiling.tile_batches(reader, x, y, spec, budget, limit, memory, threads)
            runs[threads] = []
            for batch in batches:
                memory.writing()
                runs[threads].append([(t.index, t.data, t.tissue_fraction, t.pixel_std, t.padded) for t in batch])
            assert getattr(reader, "restarts", 0) == 0
        assert memory.peak <= tiling.HELD_COPIES * limit + tiling.in_flight_bytes(spec, threads), threads
    assert len(runs[1]) > 3 and runs[3] == runs[1]


def test_threads_fit_the_tile_budget():
    spec = TileSpec(200, resize_px=224)
    assert tiling.in_flight_bytes(spec, 1) == tiling.tile_work_bytes(spec)
    assert tiling.in_flight_bytes(spec, 2) > 2 * tiling.tile_work_bytes(spec)
    assert tiling.fitting_threads(spec, 1 << 30, 4) == 4
    small = 2 * (3 * tiling.tile_work_bytes(spec) + tiling.HELD_COPIES * tiling.encoded_bound(spec))
    assert tiling.fitting_threads(spec, small, 4) == 1  # four threads' buffers would not fit: one
    assert tiling.batch_bytes(spec, small, 1) >= tiling.encoded_bound(spec)


def test_tissue_fractions_of_stacked_squares_are_each_squares():
    rng = np.random.default_rng(7)
    squares = [rng.integers(0, 256, (23, 23, 3), dtype=np.uint8) for _ in range(5)]
    squares += [np.full((23, 23, 3), 255, np.uint8), cv2.GaussianBlur(coord_image(23, 23), (0, 0), 1)]
    expected = [tiling.tissue_fraction(square, 30) for square in squares]
    assert tiling.tissue_fractions(squares, 30) == expected and 0 in expected
    assert tiling.tissue_fractions(squares[:1], 30) == expected[:1]
