"""imageio: format sniffing, header probes, budgeted region reads of PNG / JPEG / TIFF."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from imagedata import coord_image
from stlake.ingestion import images
from stlake.ingestion.records import SlideError


def busy_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Coordinate image with noisy and flat patches, so encoders pick varied PNG filters."""
    image = coord_image(h, w)
    rng = np.random.default_rng(seed)
    image[h // 3: h // 2, : w // 2] = rng.integers(0, 256, (h // 2 - h // 3, w // 2, 3), dtype=np.uint8)
    image[h // 2:, w // 2:] = 128
    return image


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_with_filters(raw: np.ndarray, width: int, depth: int, color_type: int, bpp: int,
                     plte: bytes | None = None, idat_size: int = 997) -> bytes:
    """A PNG from raw (unfiltered) scanlines, filter type = row % 5, IDAT split in small chunks."""
    rows, prev = [], np.zeros(raw.shape[1], np.int32)
    for r, row in enumerate(raw.astype(np.int32)):
        a = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        b, kind = prev, r % 5
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        rows.append(bytes([kind]) + ((row - pred) & 0xFF).astype(np.uint8).tobytes())
        prev = row
    data = zlib.compress(b"".join(rows), 6)
    ihdr = struct.pack(">IIBBBBB", width, raw.shape[0], depth, color_type, 0, 0, 0)
    parts = [images.PNG_SIGNATURE, chunk(b"IHDR", ihdr)]
    if plte:
        parts.append(chunk(b"PLTE", plte))
    parts += [chunk(b"IDAT", data[i:i + idat_size]) for i in range(0, len(data), idat_size)]
    return b"".join(parts + [chunk(b"IEND", b"")])


def pack_bits(values: np.ndarray, depth: int) -> np.ndarray:
    """Pack rows of small integers MSB first, as PNG does for bit depths < 8."""
    per = 8 // depth
    h, w = values.shape
    padded = np.zeros((h, -(-w // per) * per), np.uint8)
    padded[:, :w] = values
    groups = padded.reshape(h, -1, per)
    shifts = depth * np.arange(per - 1, -1, -1)
    return (groups.astype(np.int32) << shifts).sum(axis=2).astype(np.uint8)


def pil_png(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def cv_png(array: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".png", array, list(params))
    assert ok
    return buf.tobytes()


def stream_all(path: str, budget: int, step: int) -> tuple[np.ndarray, images.RegionReader]:
    """Read the whole image ``step`` rows at a time through a reader with ``budget``."""
    reader = images.open_region_reader(path, budget)
    h = reader.info.height
    with reader:
        parts = [np.array(reader.read_rows(y, y + step)) for y in range(0, h, step)]
    return np.concatenate(parts), reader


# ----------------------------------------------------------------------------- sniffing and probing

def test_sniff_format_magic_bytes():
    assert images.sniff_format(images.PNG_SIGNATURE + b"rest") == "png"
    assert images.sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    for magic in (b"II*\x00", b"MM\x00*", b"II+\x00"):
        assert images.sniff_format(magic + b"\x08\x00") == "tiff"
    for bad in (b"", b"GIF89a", b"hello world", b"\x89PNX\r\n"):
        with pytest.raises(SlideError) as err:
            images.sniff_format(bad)
        assert err.value.reason == "image_unreadable"


def test_mislabelled_files_are_sniffed(tmp_path):
    image = coord_image(40, 60)
    png, jpg, tif = tmp_path / "slide.jpg", tmp_path / "slide.tif", tmp_path / "slide.png"
    png.write_bytes(cv_png(image))
    jpg.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    tifffile.imwrite(tif, image[..., ::-1], photometric="rgb")
    assert images.probe_image(str(png)) == images.ImageInfo(60, 40, 3, "png", False)
    assert images.probe_image(str(jpg)) == images.ImageInfo(60, 40, 3, "jpeg", False)
    info = images.probe_image(str(tif))
    assert (info.width, info.height, info.format, info.random_access) == (60, 40, "tiff", True)
    with images.open_region_reader(str(png), 1 << 30) as reader:
        assert np.array_equal(reader.read_rows(0, 40), image)
    with images.open_region_reader(str(tif), 1 << 30) as reader:
        assert np.array_equal(reader.read_rows(0, 40), image)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (text, tmp_path / "missing.png"):
        with pytest.raises(SlideError) as err:
            images.probe_image(str(path))
        assert err.value.reason == "image_unreadable"


def test_probe_reads_headers_only(tmp_path, monkeypatch):
    huge_png = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 80_000, 8, 2, 0, 0, 0)
    huge_png.write_bytes(images.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                         + chunk(b"IEND", b""))
    jpeg = bytearray(cv2.imencode(".jpg", coord_image(16, 16))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 50_000, 60_000)  # height, width
    huge_jpg = tmp_path / "huge.bin"
    huge_jpg.write_bytes(bytes(jpeg))

    def no_decode(*args, **kwargs):
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    assert images.probe_image(str(huge_png)) == images.ImageInfo(100_000, 80_000, 3, "png", False)
    assert images.probe_image(str(huge_jpg)) == images.ImageInfo(60_000, 50_000, 3, "jpeg", False)
    assert images.decoded_bytes(images.probe_image(str(huge_png))) == 100_000 * 80_000 * 3


def test_truncated_and_corrupt_png(tmp_path):
    data = cv_png(busy_image(120, 90), cv2.IMWRITE_PNG_COMPRESSION, 9)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as err:
        images.probe_image(str(truncated))
    assert err.value.reason == "image_unreadable"
    corrupt = bytearray(data)  # damaged image data, intact header and IEND
    start = corrupt.index(b"IDAT") + 40
    corrupt[start:start + 200] = bytes(200)
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(corrupt))
    for budget in (1 << 30, 20_000):  # cached decode, then streaming
        with pytest.raises(SlideError) as err:
            with images.open_region_reader(str(path), budget) as reader:
                reader.read_rows(0, 120)
        assert err.value.reason == "image_unreadable"


# ----------------------------------------------------------------------------- PNG streaming

def png_variants() -> dict[str, bytes]:
    h, w = 201, 149
    bgr = busy_image(h, w)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    rng = np.random.default_rng(1)
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    wide = (bgr.astype(np.uint16) * 257 + rng.integers(0, 256, bgr.shape)).astype(np.uint16)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    palette = Image.fromarray((gray // 3).astype(np.uint8), "L").convert("P")
    palette.putpalette(list(rng.integers(0, 256, 768)))
    small = Image.fromarray((gray // 17).astype(np.uint8), "P")
    small.putpalette(list(rng.integers(0, 256, 48)))
    variants = {
        "rgb8": cv_png(bgr),
        "rgb8_filtered": cv_png(bgr, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_FILTERED),
        "rgb8_rle_fast": cv_png(bgr, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                                cv2.IMWRITE_PNG_COMPRESSION, 1),
        "rgb8_huffman": cv_png(bgr, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY),
        "rgb8_level0": cv_png(bgr, cv2.IMWRITE_PNG_COMPRESSION, 0),
        "rgba8": cv_png(np.concatenate([bgr, alpha], axis=2)),
        "gray8": cv_png(gray),
        "gray16": cv_png(wide[..., 0]),
        "rgb16": cv_png(wide),
        "rgba16": cv_png(np.concatenate([wide, wide[..., :1]], axis=2)),
        "pil_rgb": pil_png(Image.fromarray(rgb)),
        "pil_rgb_optimize": pil_png(Image.fromarray(rgb), optimize=True),
        "pil_rgb_level1": pil_png(Image.fromarray(rgb), compress_level=1),
        "pil_rgb_trns": pil_png(Image.fromarray(rgb), transparency=(1, 2, 3)),
        "pil_la": pil_png(Image.fromarray(np.dstack([gray, alpha[..., 0]]), "LA")),
        "pil_palette": pil_png(palette, transparency=5),
        "pil_palette_4bit": pil_png(small, bits=4),
        "pil_bilevel": pil_png(Image.fromarray(gray > 100)),
        "filters_rgb8": png_with_filters(rgb.reshape(h, -1), w, 8, 2, 3),
        "filters_rgba16": png_with_filters(
            np.ascontiguousarray(np.concatenate([wide, wide[..., :1]], axis=2)[..., [2, 1, 0, 3]], dtype=">u2")
            .view(np.uint8).reshape(h, -1), w, 16, 6, 8),
        "filters_gray2": png_with_filters(pack_bits((gray // 64).astype(np.uint8), 2), w, 2, 0, 1),
        "filters_palette4": png_with_filters(pack_bits((gray // 17).astype(np.uint8), 4), w, 4, 3, 1,
                                             plte=rng.integers(0, 256, 48, dtype=np.uint8).tobytes()),
    }
    return variants


@pytest.mark.parametrize("name", sorted(png_variants()))
def test_png_streaming_equals_full_decode(tmp_path, name):
    path = tmp_path / f"{name}.img"
    path.write_bytes(png_variants()[name])
    full = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert full is not None and full.shape == (201, 149, 3)
    budget = 60_000  # under the 90 kB decoded size: strips of a few rows, 13-row reads
    streamed, reader = stream_all(str(path), budget, 13)
    assert type(reader).__name__ == "_PngStreamReader"
    assert np.array_equal(streamed, full)
    assert 0 < reader.peak_decoded_bytes <= budget
    cached, reader = stream_all(str(path), 1 << 30, 201)
    assert np.array_equal(cached, full)


def test_png_writer_helper_is_valid():
    h, w = 30, 20
    bgr = busy_image(h, w)
    data = png_with_filters(np.ascontiguousarray(bgr[..., ::-1]).reshape(h, -1), w, 8, 2, 3)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), bgr)


def test_png_stream_skips_and_restarts(tmp_path):
    image = busy_image(300, 200)
    path = tmp_path / "a.png"
    path.write_bytes(cv_png(image))
    with images.open_region_reader(str(path), 100_000) as reader:
        assert reader.streaming
        assert np.array_equal(reader.read_rows(100, 130), image[100:130])
        assert np.array_equal(reader.read_region(250, 400, 10, 50), image[250:300, 10:50])
        assert np.array_equal(reader.read_rows(5, 9), image[5:9])  # goes back: restarts the stream
        assert reader.restarts == 1
        assert reader.read_rows(300, 310).shape == (0, 200, 3)


def test_interlaced_png_over_budget(tmp_path):
    data = bytearray(cv_png(coord_image(50, 40)))
    data[28] = 1  # IHDR interlace method (probe never decodes, only open checks it)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path = tmp_path / "interlaced.png"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path), 1000)
    assert err.value.reason == "image_too_large" and "interlaced" in err.value.detail


# ----------------------------------------------------------------------------- JPEG

def test_jpeg_within_and_over_budget(tmp_path):
    image = coord_image(80, 120)
    path = tmp_path / "slide.dat"
    path.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    with images.open_region_reader(str(path), 1 << 20) as reader:
        assert np.array_equal(reader.read_region(10, 30, 5, 50), cv2.imread(str(path))[10:30, 5:50])
        assert reader.peak_decoded_bytes == 80 * 120 * 3
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path), 10_000)
    assert err.value.reason == "image_too_large"
    assert "120x80" in err.value.detail and "tiled TIFF" in err.value.detail


def test_truncated_jpeg(tmp_path):
    data = cv2.imencode(".jpg", busy_image(100, 100))[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path))
    assert err.value.reason == "image_unreadable"


# ----------------------------------------------------------------------------- TIFF

REGIONS = [(0, 1, 0, 1), (0, 300, 0, 517), (37, 201, 63, 130), (250, 400, 480, 600), (-5, 20, -9, 40),
           (64, 128, 128, 192)]


@pytest.mark.parametrize("kwargs", [
    dict(tile=(64, 64), compression="zlib"),
    dict(tile=(48, 80)),
    dict(rowsperstrip=7),
    dict(rowsperstrip=16, compression="zlib", predictor=True),
    dict(tile=(64, 64), bigtiff=True, compression="lzma"),
    dict(tile=(32, 64), planarconfig="separate", compression="zlib"),
    dict(rowsperstrip=9, planarconfig="separate"),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_tiff_region_reads_equal_slicing(tmp_path, kwargs):
    image = busy_image(300, 517)
    path = tmp_path / "slide.tiff"
    rgb = image[..., ::-1]
    if kwargs.get("planarconfig") == "separate":
        rgb = np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(path, np.ascontiguousarray(rgb), photometric="rgb", **kwargs)
    with images.open_region_reader(str(path), 1 << 30) as reader:
        assert reader.info.random_access and not reader.streaming
        for y0, y1, x0, x1 in REGIONS:
            region = reader.read_region(y0, y1, x0, x1)
            assert np.array_equal(region, image[max(y0, 0):y1, max(x0, 0):x1]), (y0, y1, x0, x1)


def test_tiff_is_opened_and_parsed_once_per_reader(tmp_path, monkeypatch):
    image = busy_image(120, 90)
    path = tmp_path / "once.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(32, 32))
    opened, parsed = [], []
    original_open, original_level = images.storage.open_input, images._TiffLevel

    class CountingLevel(original_level):
        def __init__(self, fh):
            parsed.append(fh)
            super().__init__(fh)

    monkeypatch.setattr(images.storage, "open_input", lambda uri: opened.append(uri) or original_open(uri))
    monkeypatch.setattr(images, "_TiffLevel", CountingLevel)
    with images.open_region_reader(str(path), 1 << 30) as reader:
        assert reader.info == images.ImageInfo(90, 120, 3, "tiff", True)
        assert np.array_equal(reader.read_region(10, 70, 5, 80), image[10:70, 5:80])
    assert len(opened) == 1 and len(parsed) == 1


def test_tiff_sample_types(tmp_path):
    image = busy_image(90, 70)
    wide = image.astype(np.uint16) * 256 + 77
    cases = {
        "gray8": (image[..., 1], dict(photometric="minisblack"), cv2.cvtColor(image[..., 1], cv2.COLOR_GRAY2BGR)),
        "rgb16": (np.ascontiguousarray(wide[..., ::-1]), dict(photometric="rgb"), image),
        "rgba8": (np.dstack([image[..., ::-1], image[..., :1]]), dict(photometric="rgb", extrasamples=[2]), image),
        "float": ((image[..., ::-1] / 255.0).astype(np.float32), dict(photometric="rgb"), image),
    }
    for name, (data, kwargs, expected) in cases.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, data, tile=(32, 32), **kwargs)
        with images.open_region_reader(str(path), 1 << 30) as reader:
            assert np.array_equal(reader.read_rows(0, 90), expected), name
    colormap = np.random.default_rng(2).integers(0, 65536, (3, 256), dtype=np.uint16)
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, image[..., 0], photometric="palette", colormap=colormap, rowsperstrip=10)
    expected = (colormap >> 8).astype(np.uint8).T[:, ::-1][image[..., 0]]
    with images.open_region_reader(str(path), 1 << 30) as reader:
        assert np.array_equal(reader.read_region(5, 60, 3, 66), expected[5:60, 3:66])


def test_pyramidal_tiff_uses_level0_of_largest_series(tmp_path):
    image = busy_image(256, 384)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((20, 30, 3), np.uint8), photometric="rgb")  # a thumbnail series first
        tif.write(np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(64, 64), subifds=2)
        tif.write(np.ascontiguousarray(image[::2, ::2, ::-1]), photometric="rgb", tile=(64, 64), subfiletype=1)
        tif.write(np.ascontiguousarray(image[::4, ::4, ::-1]), photometric="rgb", tile=(64, 64), subfiletype=1)
    info = images.probe_image(str(path))
    assert (info.width, info.height, info.format) == (384, 256, "tiff")
    with images.open_region_reader(str(path), 1 << 30) as reader:
        assert np.array_equal(reader.read_region(100, 200, 50, 350), image[100:200, 50:350])


def test_tiff_region_of_image_over_budget(tmp_path):
    image = busy_image(1500, 2000)  # 9 MB decoded
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(128, 128),
                     compression="zlib")
    budget = 2_000_000
    with images.open_region_reader(str(path), budget) as reader:
        assert np.array_equal(reader.read_region(700, 1000, 1200, 1700), image[700:1000, 1200:1700])
        assert np.array_equal(reader.read_region(1400, 1600, 0, 300), image[1400:1500, :300])
        assert 0 < reader.peak_decoded_bytes <= budget
    strips = tmp_path / "strips.tif"  # one uncompressed strip for the whole image: rows read directly
    tifffile.imwrite(strips, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", rowsperstrip=1500)
    with images.open_region_reader(str(strips), budget) as reader:
        assert reader.info.random_access
        assert np.array_equal(reader.read_region(900, 1100, 10, 990), image[900:1100, 10:990])
        assert reader.peak_decoded_bytes <= budget
    zipped = tmp_path / "zipped.tif"  # one compressed strip cannot be decoded in part
    tifffile.imwrite(zipped, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", rowsperstrip=1500,
                     compression="zlib")
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(zipped), budget)
    assert err.value.reason == "image_too_large"


def test_tiff_region_decodes_only_the_tiles_under_needed_squares(tmp_path):
    image = busy_image(512, 512)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(128, 128),
                     compression="zlib")
    needed = np.array([[10, 40, 20, 60], [300, 330, 400, 440]])  # rows y0, y1, x0, x1: two tiles
    with images.open_region_reader(str(path), 8 << 20) as reader:
        region = reader.read_region(0, 512, 0, 512, needed)
    for y0, y1, x0, x1 in needed:
        assert np.array_equal(region[y0:y1, x0:x1], image[y0:y1, x0:x1])
    assert np.array_equal(region[:128, :128], image[:128, :128])  # the whole tile under a square
    assert not region[128:256].any() and not region[:128, 128:].any()  # tiles under no square: skipped


def split_jpeg_tables(jpeg: bytes, renumber: bool = False) -> tuple[bytes, bytes]:
    """(JPEGTables = SOI + DQT/DHT + EOI, abbreviated stream without tables or APP markers).

    ``renumber`` sets component ids 1, 2, 3 so only the TIFF photometric tells RGB from YCbCr.
    """
    data, tables, body, pos = bytearray(jpeg), [], [], 2
    while True:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if renumber and marker in (0xC0, 0xDA):
            first, step = (pos + 10, 3) if marker == 0xC0 else (pos + 5, 2)
            for k in range(data[first - 1]):
                data[first + k * step] = k + 1
        segment = bytes(data[pos:pos + 2 + length])
        if marker == 0xDA:
            body.append(bytes(data[pos:]))
            break
        if marker in (0xDB, 0xC4):
            tables.append(segment)
        elif not 0xE0 <= marker <= 0xEF:
            body.append(segment)
        pos += 2 + length
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"\xff\xd8" + b"".join(body)


def encode_tile_jpeg(block: np.ndarray, photometric: int) -> bytes:
    """YCbCr JPEG via OpenCV, or RGB-coded JPEG (no colour transform) via Pillow."""
    if photometric == 6:
        return cv2.imencode(".jpg", block, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(block[..., ::-1])).save(buf, "JPEG", quality=85, keep_rgb=True)
    return buf.getvalue()


def write_jpeg_tiff(path, image: np.ndarray, tile: int, photometric: int = 6) -> np.ndarray:
    """A tiled JPEG TIFF with shared JPEGTables (what slide scanners write); expected pixels."""
    h, w = image.shape[:2]
    segments, tables, expected = [], None, np.zeros_like(image)
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = image[ty:ty + tile, tx:tx + tile]
            block[:part.shape[0], :part.shape[1]] = part
            full = encode_tile_jpeg(block, photometric)
            decoded = cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR)
            expected[ty:ty + tile, tx:tx + tile] = decoded[:part.shape[0], :part.shape[1]]
            tables, body = split_jpeg_tables(full, renumber=photometric == 2)
            segments.append(body)
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [7]), (262, 3, [photometric]),
               (277, 3, [3]), (284, 3, [1]), (322, 3, [tile]), (323, 3, [tile]), (324, 4, [0] * len(segments)),
               (325, 4, [len(s) for s in segments]), (347, 7, list(tables))]
    if photometric == 6:
        entries.append((530, 3, [2, 2]))
    write_tiff(path, entries, segments)
    return expected


def write_tiff(path, entries: list[tuple[int, int, list[int]]], segments: list[bytes]) -> None:
    """A minimal little-endian TIFF: one IFD (tag 324 = segment offsets, filled in), then the data."""
    formats = {3: "H", 4: "I", 7: "B"}
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    values = [struct.pack(f"<{len(v)}{formats[kind]}", *v) for _, kind, v in entries]
    extra = sum(len(v) + (len(v) & 1) for v in values if len(v) > 4)
    offsets = np.cumsum([ifd_end + extra] + [len(s) for s in segments])[:-1].tolist()
    values[[tag for tag, _, _ in entries].index(324)] = struct.pack(f"<{len(offsets)}I", *offsets)
    head, blobs, at = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries))), bytearray(), ifd_end
    for (tag, kind, v), raw in zip(entries, values):
        field = raw.ljust(4, b"\0") if len(raw) <= 4 else struct.pack("<I", at + len(blobs))
        head += struct.pack("<HHI", tag, kind, len(v)) + field
        if len(raw) > 4:
            blobs += raw + b"\0" * (len(raw) & 1)
    head += struct.pack("<I", 0)
    path.write_bytes(bytes(head + blobs) + b"".join(segments))


@pytest.mark.parametrize("photometric", [6, 2], ids=["ycbcr", "rgb"])
def test_jpeg_compressed_tiled_tiff(tmp_path, photometric):
    image = coord_image(200, 300)
    path = tmp_path / "scanner.svs"
    expected = write_jpeg_tiff(path, image, 64, photometric)
    info = images.probe_image(str(path))
    assert (info.width, info.height, info.random_access) == (300, 200, True)
    with images.open_region_reader(str(path), 200_000) as reader:
        assert np.array_equal(reader.read_region(30, 170, 100, 290), expected[30:170, 100:290])
        assert reader.peak_decoded_bytes <= 200_000
    assert np.abs(expected.astype(int) - image).mean() < 3  # and the tiles are the image


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, busy_image(200, 200), photometric="rgb", tile=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path))
    assert err.value.reason == "image_unreadable"


@pytest.mark.parametrize("kind,budget", [("png", 60_000), ("png", 1 << 30), ("jpeg", 1 << 30), ("tiff", 60_000)])
def test_reads_through_pyarrow_files(tmp_path, monkeypatch, kind, budget):
    """``storage.open_input`` returns pyarrow files for s3:// URIs; every reader works with them."""
    pafs = pytest.importorskip("pyarrow.fs")
    image = busy_image(150, 120)
    path = tmp_path / "slide.bin"
    if kind == "tiff":
        tifffile.imwrite(path, np.ascontiguousarray(image[..., ::-1]), photometric="rgb", tile=(32, 32),
                         compression="zlib")
    else:
        path.write_bytes(cv2.imencode(".png" if kind == "png" else ".jpg", image)[1].tobytes())
    expected = cv2.imread(str(path)) if kind == "jpeg" else image
    local = pafs.LocalFileSystem()
    monkeypatch.setattr(images.storage, "open_input", lambda uri: local.open_input_file(uri))
    assert images.probe_image(str(path)).format == kind
    with images.open_region_reader(str(path), budget) as reader:
        assert np.array_equal(reader.read_region(20, 60, 10, 100), expected[20:60, 10:100])
        assert np.array_equal(reader.read_region(100, 150, 0, 120), expected[100:150])
