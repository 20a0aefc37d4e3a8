"""The st reader (legacy ST) on tiny inline fixtures (see readerdata.py)."""
from __future__ import annotations

import numpy as np
import pytest

from readerdata import make_st, write
from stlake.ingestion.readers import (
    read_slide,
    st,
)
from stlake.ingestion.records import SlideError, SlideRef


def test_st_matches_counts_and_detector(tmp_path):
    folder = make_st(tmp_path / "slide1")
    record = read_slide(SlideRef("slide1", "st", "ST", {"root": str(folder)}))
    spots = record.spots
    assert list(spots.spot_id) == ["10x12", "11x12", "10x13"]
    np.testing.assert_allclose(spots.x, [1603.0, 1750.0, 1600.0])
    np.testing.assert_allclose(spots.y, [1850.0, 1847.0, 2001.5])
    assert list(spots.array_col) == [10, 11, 10] and list(spots.array_row) == [12, 12, 13]
    assert spots.in_tissue.all()
    assert record.spot_diameter_px == pytest.approx(75.0, rel=0.01)  # pitch ~150 px per array unit
    assert record.microns_per_pixel == pytest.approx(200 / 150, rel=0.01)
    assert (record.expression.kind, record.expression.uri) == ("st_tsv", str(folder / "slide1_stdata.tsv.gz"))
    assert record.image_uri == str(folder / "slide1_HE.jpg")
    [(reason, detail)] = record.warnings
    assert reason == "unmatched_spots"
    assert "1 counts spot" in detail and "20x20" in detail and "13x13" in detail and "14x14" not in detail


def test_st_explicit_paths_plain_tsv_and_duplicates(tmp_path):
    folder = make_st(tmp_path / "slide2", name="s2")
    plain = write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n11x12\t2\n")
    paths = {"counts": str(plain), "spot_detector": str(folder / "s2_spot_detector.tsv"),
             "image": str(folder / "s2_HE.jpg")}
    record = st.read(SlideRef("s2", "st", "ST", paths))
    assert list(record.spots.spot_id) == ["10x12", "11x12"]
    assert "0 counts spot" in record.warnings[0][1]
    write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n10x12\t2\n")
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", paths))
    assert error.value.reason == "duplicate_spot_ids"
    write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n10.1x11.9\t2\n")  # both at array position 10x12
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", paths))
    assert error.value.reason == "duplicate_spot_ids" and "10.1x11.9" in error.value.detail
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", dict(paths, spot_detector=str(tmp_path / "none.tsv"))))
    assert error.value.reason == "coords_unreadable" and "none.tsv" in error.value.detail


def rewrite_detector(folder, name: str, change) -> None:
    """Rewrite the fixture's spot detector after ``change`` edits its rows (lists of fields)."""
    path = folder / f"{name}_spot_detector.tsv"
    header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    for row in rows:
        change(row)
    write(path, "\n".join("\t".join(row) for row in [header, *rows]) + "\n")


def test_st_spots_at_one_pixel_are_implausible(tmp_path):
    folder = make_st(tmp_path / "slide3", name="s3")

    def one_pixel(row: list[str]) -> None:
        row[4], row[5] = "1600.0", "1850.0"

    rewrite_detector(folder, "s3", one_pixel)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("s3", "st", "ST", {"root": str(folder)}))
    assert error.value.reason == "implausible_geometry" and "s3_spot_detector.tsv" in error.value.detail
    assert "0.00 px" in error.value.detail


def test_st_pixel_values_as_text_are_unreadable_and_not_quoted(tmp_path):
    folder = make_st(tmp_path / "slide4", name="s4")

    def text(row: list[str]) -> None:
        row[4] = "SECRET-4242" if row[0] == "11" else row[4]

    rewrite_detector(folder, "s4", text)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("s4", "st", "ST", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "column 'pixel_x'" in error.value.detail
    assert "data row 2" in error.value.detail and "SECRET" not in error.value.detail
