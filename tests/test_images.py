"""images: format sniffing, header probes, and what every format's reader shares."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile

from imagedata import busy_image, chunk, coord_image, cv_png
from stlake.ingestion import images
from stlake.ingestion.records import SlideError
from stlake.lake import storage

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


def write_with_gap(path, head: bytes, gap: int, tail: bytes) -> None:
    """``head``, ``gap`` zero bytes (a sparse hole where the file system allows) and ``tail``."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.seek(gap, 1)
        handle.write(tail)


def test_probe_reads_headers_only(tmp_path, monkeypatch):
    # Headers of huge images over files just large enough to hold them (the probe reads head and tail only).
    huge_png, lying_png = tmp_path / "huge.png", tmp_path / "lying.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 80_000, 8, 2, 0, 0, 0)
    head = images.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
    write_with_gap(huge_png, head, 80_000 * 300_001 // 1032, chunk(b"IEND", b""))
    lying_png.write_bytes(head + chunk(b"IEND", b""))
    jpeg = bytearray(cv2.imencode(".jpg", coord_image(16, 16))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 50_000, 60_000)  # height, width
    huge_jpg, lying_jpg = tmp_path / "huge.bin", tmp_path / "lying.bin"
    write_with_gap(huge_jpg, bytes(jpeg[:-2]), 9_000_000, b"\xff\xd9")  # 4:2:0 blocks at one bit: 8.8 MB
    lying_jpg.write_bytes(bytes(jpeg))

    def no_decode(*args, **kwargs):
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    assert images.probe_image(str(huge_png)) == images.ImageInfo(100_000, 80_000, 3, "png", False)
    assert images.probe_image(str(huge_jpg)) == images.ImageInfo(60_000, 50_000, 3, "jpeg", False)
    assert images.decoded_bytes(images.probe_image(str(huge_png))) == 100_000 * 80_000 * 3
    for lying in (lying_png, lying_jpg):  # the same headers over a few bytes: refused, still without decoding
        with pytest.raises(SlideError) as err:
            images.probe_image(str(lying))
        assert err.value.reason == "image_corrupt" and "cannot hold them" in err.value.detail


# ----------------------------------------------------------------------------- all formats

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
    monkeypatch.setattr(storage, "open_input", lambda uri: local.open_input_file(uri))
    assert images.probe_image(str(path)).format == kind
    with images.open_region_reader(str(path), budget) as reader:
        assert np.array_equal(reader.read_region(20, 60, 10, 100), expected[20:60, 10:100])
        assert np.array_equal(reader.read_region(100, 150, 0, 120), expected[100:150])
