"""images.png: PNG probes, streaming reads over budget equal to one full decode."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from imagedata import busy_image, chunk, coord_image, cv_png
from stlake.ingestion import images
from stlake.ingestion.records import SlideError


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


def stream_all(path: str, budget: int, step: int) -> tuple[np.ndarray, images.RegionReader]:
    """Read the whole image ``step`` rows at a time through a reader with ``budget``."""
    reader = images.open_region_reader(path, budget)
    h = reader.info.height
    with reader:
        parts = [np.array(reader.read_rows(y, y + step)) for y in range(0, h, step)]
    return np.concatenate(parts), reader


def test_truncated_and_corrupt_png(tmp_path):
    data = cv_png(busy_image(120, 90), cv2.IMWRITE_PNG_COMPRESSION, 9)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as err:
        images.probe_image(str(truncated))
    assert err.value.reason == "image_corrupt"
    corrupt = bytearray(data)  # damaged image data, intact header and IEND
    start = corrupt.index(b"IDAT") + 40
    corrupt[start:start + 200] = bytes(200)
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(corrupt))
    for budget in (1 << 30, 20_000):  # cached decode, then streaming
        with pytest.raises(SlideError) as err:
            with images.open_region_reader(str(path), budget) as reader:
                reader.read_rows(0, 120)
        assert err.value.reason == "image_corrupt"


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


@pytest.mark.parametrize("mode,interlace", [("RGB", False), ("RGBA", False), ("RGB", True)])
def test_fast_png_decode_equals_opencv(tmp_path, mode, interlace):
    """8-bit RGB(A) PNGs go through libspng; the pixels are OpenCV's IMREAD_COLOR ones, bit for bit."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (97, 131, len(mode)), dtype=np.uint8)
    path = tmp_path / f"x_{mode}_{interlace}.png"
    Image.fromarray(pixels, mode).save(path, interlace=int(interlace))
    data = path.read_bytes()
    header = images.png._parse_ihdr(data[:33])
    fast = images.png._spng_bgr(data, header)
    assert fast is not None
    np.testing.assert_array_equal(fast, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    with images.open_region_reader(str(path)) as reader:
        np.testing.assert_array_equal(reader.read_region(0, 97, 0, 131), fast)


def idat_offsets(data: bytes) -> list[int]:
    """Offsets of a PNG's IDAT chunks."""
    offsets, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            offsets.append(pos)
        pos += 12 + length
    return offsets


@pytest.mark.parametrize("which", [0, 1, -1])
def test_idat_crc_damage_is_named(tmp_path, which):
    """A wrong CRC of any IDAT chunk is refused, naming the chunk: libspng's check or stlake's (the last one's)."""
    bgr = busy_image(120, 90)
    data = bytearray(png_with_filters(np.ascontiguousarray(bgr[..., ::-1]).reshape(120, -1), 90, 8, 2, 3))
    offsets = idat_offsets(bytes(data))
    assert len(offsets) > 2
    at = offsets[which]
    crc_end = at + 12 + struct.unpack(">I", data[at:at + 4])[0]
    data[crc_end - 1] ^= 0xFF
    path = tmp_path / "slide.png"
    path.write_bytes(bytes(data))
    for budget in (1 << 30, 20_000):  # decoded whole (libspng), and streamed
        with pytest.raises(SlideError) as err:
            with images.open_region_reader(str(path), budget) as reader:
                reader.read_rows(0, 120)
        assert err.value.reason == "image_corrupt"
        assert f"IDAT chunk at offset {at} fails its CRC check" in err.value.detail, (budget, err.value.detail)


def test_whole_png_is_mapped_and_decoded_once(tmp_path, monkeypatch):
    """A local PNG within budget is mapped, not read, and libspng decodes it from the mapping."""
    import mmap

    from stlake.ingestion.images import png

    image = busy_image(120, 90)
    path = tmp_path / "slide.png"
    path.write_bytes(cv_png(image))
    seen = []
    spng = png._spng_bgr
    monkeypatch.setattr(png, "_spng_bgr", lambda data, header: seen.append(type(data)) or spng(data, header))
    with images.open_region_reader(str(path)) as reader:
        assert np.array_equal(reader.read_rows(0, 120), image)
    assert seen == [mmap.mmap]
