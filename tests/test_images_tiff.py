"""images.tiff: region reads of striped, tiled, pyramidal and JPEG-compressed TIFFs within budget."""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from imagedata import busy_image, coord_image
from stlake.ingestion import images
from stlake.ingestion.images import probe
from stlake.ingestion.records import SlideError
from stlake.lake import storage

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
    original_open, original_level = storage.open_input, probe._TiffLevel

    class CountingLevel(original_level):
        def __init__(self, fh, level=0):
            parsed.append(fh)
            super().__init__(fh, level)

    monkeypatch.setattr(storage, "open_input", lambda uri: opened.append(uri) or original_open(uri))
    monkeypatch.setattr(probe, "_TiffLevel", CountingLevel)
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
    assert err.value.reason == "image_corrupt"
