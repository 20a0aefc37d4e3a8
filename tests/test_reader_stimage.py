"""The stimage reader (STimage-1K4M release) on tiny inline fixtures (see readerdata.py)."""
from __future__ import annotations

import numpy as np
import pytest

from readerdata import make_stimage, write
from stlake.ingestion.readers import (
    read_slide,
    stimage,
)
from stlake.ingestion.records import SlideError, SlideRef


def test_stimage_reads_coords_labels_and_meta(tmp_path):
    root = make_stimage(tmp_path / "release")
    record = read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    spots = record.spots
    assert list(spots.spot_id) == ["AAAC-1", "AAAG-1", "AAAT-1"]
    np.testing.assert_allclose(spots.x, [200.25, 220.25, 240.25])
    np.testing.assert_allclose(spots.y, [100.5, 110.5, 120.5])
    assert list(spots.label) == ["tumor", None, "stroma"]
    assert spots.in_tissue.all() and (spots.array_row == -1).all() and (spots.array_col == -1).all()
    assert spots.x.dtype == np.float64 and spots.array_row.dtype == np.int32
    assert record.spot_diameter_px == 22.0  # 2 * median(10, 11, 12)
    assert record.microns_per_pixel == pytest.approx(55 / 22)
    assert record.image_uri == str(root / "Visium" / "image" / "slideA.png")
    assert record.expression.kind == "dense_csv" and record.expression.options == {"sep": ","}
    assert record.expression.uri == str(root / "Visium" / "gene_exp" / "slideA_count.csv")
    assert (record.ref.species, record.ref.tissue) == ("human", "brain")
    assert record.ref.meta["abstract"] == "An abstract, with commas" and record.ref.meta["pmid"] == "123"
    assert "slide" not in record.ref.meta and "species" not in record.ref.meta
    assert [w[0] for w in record.warnings] == ["annotation_unmatched"]  # ZZZZ-1 is not a spot
    assert record.image_source == "fullres" and record.coord_scale == 1.0


def test_stimage_explicit_paths_without_annotation_or_meta(tmp_path):
    root = make_stimage(tmp_path / "release")
    paths = stimage.slide_paths(str(root), "ST", "slideS")
    del paths["root"], paths["meta"], paths["annotation"]
    ref = SlideRef("slideS", "stimage", "ST", paths, species="mouse")
    record = read_slide(ref)
    assert list(record.spots.spot_id) == ["10x11", "11x11"] and list(record.spots.label) == [None, None]
    assert record.spot_diameter_px == 80.0 and record.microns_per_pixel == pytest.approx(100 / 80)
    assert record.ref.species == "mouse" and record.ref.tissue is None and record.warnings == []


def test_stimage_duplicate_spot_ids(tmp_path):
    root = make_stimage(tmp_path / "release", duplicate=True)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == "duplicate_spot_ids" and "AAAC-1" in error.value.detail


def test_stimage_missing_and_garbled_coords(tmp_path):
    root = make_stimage(tmp_path / "release")
    paths = stimage.slide_paths(str(root), "Visium", "slideA")
    missing = dict(paths, coords=str(root / "Visium" / "coord" / "nope_coord.csv"))
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", missing))
    assert error.value.reason == "coords_unreadable" and "nope_coord.csv" in error.value.detail
    write(root / "Visium" / "coord" / "slideA_coord.csv", ",yaxis,xaxis,r\nAAAC-1,abc,1,2\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", paths))
    assert error.value.reason == "coords_unreadable" and "yaxis" in error.value.detail
    write(root / "Visium" / "coord" / "slideA_coord.csv", "no,such,columns\n1,2,3\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", paths))
    assert error.value.reason == "coords_unreadable"


def test_stimage_image_missing(tmp_path):
    root = make_stimage(tmp_path / "release")
    (root / "Visium" / "image" / "slideA.png").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == "image_missing" and "slideA.png" in error.value.detail


@pytest.mark.parametrize("radius,reason,phrase", [
    ("0", "implausible_geometry", "3 spot radius value(s) in column 'r'"),
    ("-10", "implausible_geometry", "zero or negative, the first in data row 1"),
    ("SECRET-4242", "coords_unreadable", "non-numeric or missing value(s) in column 'r'"),
])
def test_stimage_radius_must_be_a_positive_number(tmp_path, radius, reason, phrase):
    root = make_stimage(tmp_path / "release")
    rows = "".join(f"{s},{100 + 10 * i},{200 + 20 * i},{radius}\n" for i, s in enumerate(["A-1", "B-1", "C-1"]))
    write(root / "Visium" / "coord" / "slideA_coord.csv", ",yaxis,xaxis,r\n" + rows)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == reason and phrase in error.value.detail and "slideA_coord.csv" in error.value.detail
    assert "SECRET" not in error.value.detail


def test_stimage_missing_value_names_its_row(tmp_path):
    root = make_stimage(tmp_path / "release")
    write(root / "Visium" / "coord" / "slideA_coord.csv", ",yaxis,xaxis,r\nA-1,1,2,3\nB-1,1,,3\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert "column 'xaxis'" in error.value.detail and "data row 2" in error.value.detail


def test_stimage_unreadable_annotation_warning_quotes_nothing(tmp_path):
    root = make_stimage(tmp_path / "release")
    write(root / "annotation" / "slideA_anno.csv", b"\tV2\nAAAC-1\t\xffSECRET-4242\n")
    record = read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    [(reason, detail)] = [w for w in record.warnings if w[0] == "annotation_unreadable"]
    assert "slideA_anno.csv" in detail and "UnicodeDecodeError" in detail and "SECRET" not in detail


def test_an_unforeseen_value_error_in_a_reader_is_a_named_rejection(tmp_path, monkeypatch):
    """Readers name what is wrong; a value error they did not foresee is still no internal error."""
    root = make_stimage(tmp_path / "release")

    def broken(path):
        raise ValueError("could not convert string to float: 'SECRET-4242' at line 7")

    monkeypatch.setattr(stimage, "_coords", broken)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == "input_unreadable" and "ValueError at line 7" in error.value.detail
    assert "slideA" in error.value.detail and "SECRET" not in error.value.detail
