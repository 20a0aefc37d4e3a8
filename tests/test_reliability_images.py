"""Reliability corpus, images: damaged but decodable images are refused, and no reject quotes a file.

Issue 9, classes 4 and 6. Each case copies a good slide of the small synthetic dataset (STimage PNG and
JPEG-in-``.png``, the Visium tiled TIFF, the legacy ST JPEG) and damages its image. A damaged image ends
as ``image_corrupt``: a cut scan with its end marker put back, a header claiming far more pixels than
the file holds (refused at probe time, before any decode), chunk CRCs, missing IEND, cut IDAT, a cut or
damaged TIFF tile. What is not an image at all (a text file, an empty file, a symlink to text) is
``image_unreadable``, and its detail names the file without quoting it.

Decision, data after a JPEG's end-of-image marker: the image lands (decoders ignore it; cameras put
previews there). The probe asks that the marker be within the file's last 64 KiB, so a longer tail is
refused as ``image_corrupt`` (covered by a unit test).

The unit tests below run each damage through ``probe_image`` / ``open_region_reader`` directly, PNGs
both decoded whole and streamed over budget (where the stream's end is checked when the reader's
``with`` block ends, even when the reads stopped above it).
"""
from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import tifffile
from PIL import Image

import corpus
from imagedata import busy_image, chunk, cv_png
from stlake.ingestion import images
from stlake.ingestion.records import SlideError

PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
SECRET_BITS = ("root:x", "/bin/bash", "daemon", "nologin")

# ---------------------------------------------------------------- damage (bytes -> bytes)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG."""
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_from(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these (type, data) chunks, CRCs computed."""
    return images.PNG_SIGNATURE + b"".join(chunk(kind, body) for kind, body in parts)


def png_resized_header(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming ``width`` x ``height`` (CRC fixed: only the size lies)."""
    parts = png_chunks(data)
    parts[0] = (b"IHDR", struct.pack(">II", width, height) + parts[0][1][8:])
    return png_from(parts)


def png_bad_crc(data: bytes) -> bytes:
    """A tEXt chunk with a wrong CRC before the image data (libpng only warns: the image decodes)."""
    at = data.index(b"IDAT") - 4
    bad = bytearray(chunk(b"tEXt", b"Comment\0scanned"))
    bad[-1] ^= 0xFF
    return data[:at] + bytes(bad) + data[at:]


def png_bad_trailing_crc(data: bytes) -> bytes:
    """A tEXt chunk with a wrong CRC after the image data, just before IEND."""
    bad = bytearray(chunk(b"tEXt", b"Comment\0scanned"))
    bad[-1] ^= 0xFF
    return data[:-12] + bytes(bad) + data[-12:]


def png_without_iend(data: bytes) -> bytes:
    """The PNG without its IEND chunk."""
    assert data.endswith(images.IEND_CHUNK)
    return data[:-12]


def png_idat_cut(data: bytes) -> bytes:
    """The first half of the compressed image data in one valid IDAT chunk, then IEND: rows are missing."""
    parts = png_chunks(data)
    idat = b"".join(body for kind, body in parts if kind == b"IDAT")
    head = [(kind, body) for kind, body in parts if kind not in (b"IDAT", b"IEND")]
    return png_from([*head, (b"IDAT", idat[: len(idat) // 2]), (b"IEND", b"")])


def png_split_idat(data: bytes) -> bytes:
    """The IDAT chunks split in two runs by a tEXt chunk (the stream must be one run)."""
    parts = png_chunks(data)
    first = next(i for i, (kind, _) in enumerate(parts) if kind == b"IDAT")
    idat = b"".join(body for kind, body in parts if kind == b"IDAT")
    return png_from([*parts[:first], (b"IDAT", idat[:100]), (b"tEXt", b"a\0b"), (b"IDAT", idat[100:]),
                     (b"IEND", b"")])


def jpeg_cut_scan(data: bytes, keep: float = 0.6) -> bytes:
    """The JPEG cut inside its scan data, its end-of-image marker put back (libjpeg pads with grey)."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def jpeg_resized_header(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its baseline frame header claiming ``width`` x ``height``."""
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    out[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def jpeg_with_tail(data: bytes, size: int = 4000) -> bytes:
    """The JPEG followed by ``size`` bytes of other data after its end-of-image marker."""
    return data + (b"trailing metadata " * (size // 18 + 1))[:size]


def cut(data: bytes, keep: float = 0.6) -> bytes:
    """The first ``keep`` of the bytes."""
    return data[: int(len(data) * keep)]


# ---------------------------------------------------------------- damage in place (files)

def damage_tiff_tiles(path: Path) -> None:
    """Zero the second half of every tile's compressed data (headers and tile table intact)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].keyframe
        segments = list(zip(page.dataoffsets, page.databytecounts))
    with open(path, "r+b") as handle:
        for offset, count in segments:
            handle.seek(offset + count // 2)
            handle.write(bytes(count - count // 2))


def rewrite(path: Path, damage: Callable[[bytes], bytes]) -> None:
    """Replace a file's bytes by ``damage`` of them."""
    path.write_bytes(damage(path.read_bytes()))


# ---------------------------------------------------------------- corpus cases

def stimage_case(slide: str, damage: Callable[[Path], None]) -> Callable[[Path, dict], list[corpus.Row]]:
    """A copy of an STimage slide whose image file ``damage`` changes (the slide id is the case id)."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        row = corpus.stimage_files(dataset, slide, folder)
        damage(Path(row["image"]))
        return [corpus.entry(folder.name, "stimage", species="human", **row)]  # genes pair within a species
    return build


def folder_case(slide: str, image: str, damage: Callable[[Path], None]) -> Callable[[Path, dict], list[corpus.Row]]:
    """A copy of a folder-layout slide (visium, st) whose ``image`` file ``damage`` changes."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        [good] = corpus.good_rows(dataset, [slide])
        corpus.copy_slide(dataset, slide, folder)
        damage(folder / image)
        return [{**good, "slide_id": folder.name, "path": str(folder)}]
    return build


def bytes_damage(damage: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A file damage from a bytes damage."""
    return lambda path: rewrite(path, damage)


def passwd_text(path: Path) -> None:
    path.write_text(PASSWD)


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def symlink_to_text(path: Path) -> None:
    target = path.with_name("accounts.txt")
    target.write_text(PASSWD)
    path.unlink()
    os.symlink(target, path)


CASES = [
    corpus.Case("img_jpeg_cut_scan", stimage_case("stimage_visium_1", bytes_damage(jpeg_cut_scan)), "image_corrupt"),
    corpus.Case("img_jpeg_sof_30000", stimage_case(
        "stimage_visium_1", bytes_damage(lambda d: jpeg_resized_header(d, 30000, 30000))), "image_corrupt"),
    corpus.Case("img_png_ihdr_200000", stimage_case(
        "stimage_st_1", bytes_damage(lambda d: png_resized_header(d, 200_000, 200_000))), "image_corrupt"),
    corpus.Case("img_png_ihdr_taller", stimage_case(
        "stimage_st_1", bytes_damage(lambda d: png_resized_header(d, 1200, 2040))), "image_corrupt"),
    corpus.Case("img_png_bad_crc", stimage_case("stimage_st_1", bytes_damage(png_bad_crc)), "image_corrupt"),
    corpus.Case("img_png_no_iend", stimage_case("stimage_hd_1", bytes_damage(png_without_iend)), "image_corrupt"),
    corpus.Case("img_png_idat_cut", stimage_case("stimage_st_1", bytes_damage(png_idat_cut)), "image_corrupt"),
    corpus.Case("img_tiff_tiles_damaged", folder_case("visium_1", "image.tif", damage_tiff_tiles), "image_corrupt"),
    corpus.Case("img_tiff_truncated", folder_case("visium_1", "image.tif", bytes_damage(cut)), "image_corrupt"),
    corpus.Case("img_st_jpeg_cut_scan", folder_case("st_1", "st_1_HE.jpg", bytes_damage(jpeg_cut_scan)),
                "image_corrupt"),
    corpus.Case("img_passwd_text", stimage_case("stimage_visium_1", passwd_text), "image_unreadable"),
    corpus.Case("img_empty_file", stimage_case("stimage_visium_1", empty_file), "image_unreadable"),
    corpus.Case("img_symlink_to_text", stimage_case("stimage_st_1", symlink_to_text), "image_unreadable"),
]
#: Cases whose image is damaged only in the eye of a strict reader: they land, byte-identical to their source.
LANDING = {"img_jpeg_tail_after_eoi": ("stimage_visium_1", stimage_case("stimage_visium_1",
                                                                        bytes_damage(jpeg_with_tail)))}
#: Cases refused by the header probe (stage ``read``): no pixel was decoded, so no memory was spent.
PROBE_TIME = {"img_jpeg_sof_30000", "img_png_ihdr_200000", "img_png_no_iend", "img_tiff_truncated",
              "img_passwd_text", "img_empty_file", "img_symlink_to_text"}


@pytest.fixture(scope="module")
def run(spark, synthetic_dataset, tmp_path_factory):
    landing = [corpus.Case(case_id, build, "") for case_id, (_, build) in LANDING.items()]
    return corpus.run_corpus(spark, tmp_path_factory.mktemp("reliability_images"), synthetic_dataset,
                             [*CASES, *landing])


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_case(run, case):
    corpus.assert_case(run, case)
    row = corpus.case_row(run, case)
    assert case.id in row["detail"], row["detail"]  # names the file (its path holds the case's folder)
    assert not any(secret in row["detail"] for secret in SECRET_BITS), row["detail"]
    assert "b'" not in row["detail"] and 'b"' not in row["detail"], row["detail"]
    if case.id in PROBE_TIME:
        assert row["stage"] == "read", row


@pytest.mark.parametrize("case_id", sorted(LANDING))
def test_landing_case_is_its_source(run, case_id):
    assert case_id in run.report.landed and run.rejects_of(case_id) == []
    source = LANDING[case_id][0]
    spots = corpus.landed(run.lake, "spots", [source, case_id])
    tiles = {slide: spots.filter(pa.compute.equal(spots["slide_id"], slide)).select(["spot_id", "tile"])
             for slide in (source, case_id)}
    assert tiles[case_id].num_rows > 0 and tiles[case_id].equals(tiles[source])


def test_good_slides_identical(run, corpus_baseline):
    corpus.assert_good_slides_identical(run, corpus_baseline)


def test_nothing_written_outside_lake(run):
    assert run.written_outside_lake == []


# ---------------------------------------------------------------- unit tests: probe and readers

def jpeg_bytes(progressive: bool = False, restart: int = 0) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive),
              cv2.IMWRITE_JPEG_RST_INTERVAL, restart]
    return cv2.imencode(".jpg", busy_image(240, 320), params)[1].tobytes()


def png_bytes() -> bytes:
    return cv_png(busy_image(240, 320), cv2.IMWRITE_PNG_COMPRESSION, 6)


def tiff_bytes() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, busy_image(240, 320), photometric="rgb", tile=(64, 64), compression="zlib")
    return buf.getvalue()


def read_all(path: Path, budget: int, rows: int = 240) -> None:
    """Read rows ``[0, rows)`` through a reader with ``budget`` and leave its ``with`` block."""
    with images.open_region_reader(str(path), budget) as reader:
        reader.read_rows(0, rows)


# name -> (damaged bytes, reason, refused by the probe)
DAMAGED = {
    "jpeg_cut_scan": (lambda: jpeg_cut_scan(jpeg_bytes()), "image_corrupt", False),
    "jpeg_cut_scan_late": (lambda: jpeg_cut_scan(jpeg_bytes(), 0.98), "image_corrupt", False),
    "jpeg_cut_no_eoi": (lambda: cut(jpeg_bytes()), "image_corrupt", True),
    "jpeg_progressive_cut_between_scans": (lambda: jpeg_cut_scan(jpeg_bytes(progressive=True), 0.5),
                                           "image_corrupt", False),
    "jpeg_progressive_cut_last_scan": (lambda: jpeg_cut_scan(jpeg_bytes(progressive=True), 0.97),
                                       "image_corrupt", False),
    "jpeg_restart_interval_cut": (lambda: jpeg_cut_scan(jpeg_bytes(restart=2), 0.7), "image_corrupt", False),
    "jpeg_sof_30000": (lambda: jpeg_resized_header(jpeg_bytes(), 30000, 30000), "image_corrupt", True),
    "jpeg_long_tail": (lambda: jpeg_with_tail(jpeg_bytes(), 70_000), "image_corrupt", True),
    "png_ihdr_200000": (lambda: png_resized_header(png_bytes(), 200_000, 200_000), "image_corrupt", True),
    "png_ihdr_taller": (lambda: png_resized_header(png_bytes(), 320, 480), "image_corrupt", False),
    "png_bad_crc": (lambda: png_bad_crc(png_bytes()), "image_corrupt", False),
    "png_bad_trailing_crc": (lambda: png_bad_trailing_crc(png_bytes()), "image_corrupt", False),
    "png_bad_ihdr_crc": (lambda: png_bytes()[:20] + b"\xff" + png_bytes()[21:], "image_corrupt", True),
    "png_no_iend": (lambda: png_without_iend(png_bytes()), "image_corrupt", True),
    "png_idat_cut": (lambda: png_idat_cut(png_bytes()), "image_corrupt", False),
    "png_idat_split": (lambda: png_split_idat(png_bytes()), "image_corrupt", False),
    "tiff_truncated": (lambda: cut(tiff_bytes(), 0.8), "image_corrupt", True),
    "passwd": (lambda: PASSWD.encode(), "image_unreadable", True),
    "empty": (lambda: b"", "image_unreadable", True),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_image_is_refused(tmp_path, name):
    make, reason, at_probe = DAMAGED[name]
    path = tmp_path / "slide.png"
    path.write_bytes(make())
    budgets = (1 << 30, 40_000) if name.startswith("png") else (1 << 30,)  # PNG: decoded whole, and streamed
    if not at_probe:
        images.probe_image(str(path))  # the header is fine: the damage is found when the data is read
    for budget in budgets:
        with pytest.raises(SlideError) as err:
            images.probe_image(str(path)) if at_probe else read_all(path, budget)
        assert err.value.reason == reason, (budget, err.value)
        assert str(path) in err.value.detail and not any(s in err.value.detail for s in SECRET_BITS)


@pytest.mark.parametrize("name", ["png_ihdr_taller", "png_idat_cut", "png_bad_trailing_crc"])
def test_streamed_png_checks_rows_below_the_last_read(tmp_path, name):
    """Reading only the top rows of a damaged PNG over budget succeeds; leaving the block refuses it."""
    path = tmp_path / "slide.png"
    path.write_bytes(DAMAGED[name][0]())
    with pytest.raises(SlideError) as err:
        with images.open_region_reader(str(path), 40_000) as reader:
            assert reader.streaming
            top = reader.read_rows(0, 20)
    assert err.value.reason == "image_corrupt"
    assert np.array_equal(top, busy_image(240, 320)[:20])
    assert reader.peak_decoded_bytes <= 40_000


def test_lying_headers_are_refused_before_any_decode(tmp_path, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("a lying header reached a decode")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    for name in ("jpeg_sof_30000", "png_ihdr_200000"):
        path = tmp_path / f"{name}.img"
        path.write_bytes(DAMAGED[name][0]())
        for call in (images.probe_image, images.open_region_reader):
            with pytest.raises(SlideError) as err:
                call(str(path))
            assert err.value.reason == "image_corrupt" and "cannot hold them" in err.value.detail


def test_symlink_to_text_is_not_quoted(tmp_path):
    target = tmp_path / "accounts"
    target.write_text(PASSWD)
    link = tmp_path / "slide.png"
    os.symlink(target, link)
    with pytest.raises(SlideError) as err:
        images.probe_image(str(link))
    assert err.value.reason == "image_unreadable" and str(link) in err.value.detail
    assert not any(s in err.value.detail for s in SECRET_BITS) and "b'" not in err.value.detail


def test_tiff_damaged_tile(tmp_path):
    path = tmp_path / "slide.tif"
    path.write_bytes(tiff_bytes())
    damage_tiff_tiles(path)
    images.probe_image(str(path))  # the structure is intact: only reading a tile finds the damage
    with pytest.raises(SlideError) as err:
        read_all(path, 1 << 30)
    assert err.value.reason == "image_corrupt" and str(path) in err.value.detail


@pytest.mark.parametrize("variant", ["baseline", "progressive", "restart", "gray", "pil_progressive", "tail"])
def test_intact_jpegs_decode_as_opencv_does(tmp_path, variant):
    image = busy_image(240, 320)
    if variant.startswith("pil"):
        buf = io.BytesIO()
        Image.fromarray(image[..., ::-1]).save(buf, "JPEG", progressive=True, optimize=True)
        data = buf.getvalue()
    elif variant == "gray":
        data = cv2.imencode(".jpg", image[..., 0])[1].tobytes()
    else:
        data = jpeg_bytes(progressive=variant == "progressive", restart=4 if variant == "restart" else 0)
    path = tmp_path / "slide.jpg"
    path.write_bytes(jpeg_with_tail(data) if variant == "tail" else data)
    with images.open_region_reader(str(path), 1 << 30) as reader:
        pixels = np.array(reader.read_rows(0, 240))
    assert np.array_equal(pixels, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def smooth_image(h: int = 300, w: int = 410) -> np.ndarray:
    """Blurred noise without a flat mid-grey block (unlike ``busy_image``), like a photograph."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    return cv2.normalize(image, None, 20, 250, cv2.NORM_MINMAX)


def test_intact_jpeg_costs_one_decode(tmp_path, monkeypatch):
    from stlake.ingestion.images import jpeg

    def no_second_look(*args, **kwargs):
        raise AssertionError("an intact image without grey blocks was decoded again")

    data = cv2.imencode(".jpg", smooth_image())[1].tobytes()
    path = tmp_path / "slide.jpg"
    path.write_bytes(data)
    monkeypatch.setattr(jpeg, "_compare_reduced", no_second_look)
    stderr = os.fstat(2)
    read_all(path, 1 << 30, 300)
    path.write_bytes(jpeg_cut_scan(data, 0.8))  # the grey tail of a cut scan calls for the second look
    with pytest.raises(AssertionError, match="decoded again"):
        read_all(path, 1 << 30, 300)
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (stderr.st_ino, stderr.st_dev)  # stderr is back


@pytest.mark.parametrize("keep", [0.3, 0.8, 0.99])
def test_cut_jpeg_without_grey_blocks(tmp_path, keep):
    path = tmp_path / "slide.jpg"
    path.write_bytes(jpeg_cut_scan(cv2.imencode(".jpg", smooth_image())[1].tobytes(), keep))
    with pytest.raises(SlideError) as err:
        read_all(path, 1 << 30, 300)
    assert err.value.reason == "image_corrupt" and "stops short" in err.value.detail


def test_details_never_quote_file_bytes():
    with pytest.raises(SlideError) as err:
        images.sniff_format(PASSWD.encode())
    assert err.value.reason == "image_unreadable" and "root" not in err.value.detail
    from stlake.ingestion.images.base import describe_error
    assert describe_error(ValueError("not a TIFF file b'root:x:0'")) == "ValueError: not a TIFF file <bytes>"
