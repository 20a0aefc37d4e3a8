"""The visium reader (Space Ranger Visium) on tiny inline fixtures (see readerdata.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from readerdata import POSITIONS, SCALEFACTORS, make_visium, write
from stlake.ingestion.readers import (
    ReaderOptions,
    read_slide,
)
from stlake.ingestion.records import SlideError, SlideRef


def test_visium_fullres_in_tissue_only(tmp_path):
    folder = make_visium(tmp_path / "V1" / "outs")
    record = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}))
    assert list(record.spots.spot_id) == ["AAAC-1", "AAAT-1", "AACC-1"]
    np.testing.assert_allclose(record.spots.x, [2000, 2100, 2000])
    np.testing.assert_allclose(record.spots.y, [1000, 1173, 1346])
    assert list(record.spots.array_row) == [0, 1, 2] and list(record.spots.array_col) == [0, 1, 0]
    assert record.spots.in_tissue.all() and list(record.spots.label) == [None] * 3
    assert record.image_uri == str(folder / "image.tif") and record.image_source == "fullres"
    assert record.spot_diameter_px == 110.0 and record.coord_scale == 1.0
    assert record.microns_per_pixel == pytest.approx(0.5)
    assert (record.expression.kind, record.expression.uri) == ("tenx_h5", str(folder / "filtered_feature_bc_matrix.h5"))
    assert record.warnings == []
    everything = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}),
                            ReaderOptions(in_tissue_only=False))
    assert len(everything.spots) == 4 and list(everything.spots.in_tissue) == [True, False, True, True]


def test_visium_hires_fallback_scales_coordinates(tmp_path):
    folder = make_visium(tmp_path / "V2", header=True, fullres=False, matrix="mtx")
    record = read_slide(SlideRef("V2", "visium", "Visium", {"root": str(folder)}))
    assert record.image_uri == str(folder / "spatial" / "tissue_hires_image.png")
    assert record.image_source == "hires" and record.coord_scale == 0.25
    np.testing.assert_allclose(record.spots.x, [500, 525, 500])
    np.testing.assert_allclose(record.spots.y, [250, 293.25, 336.5])
    assert record.spot_diameter_px == pytest.approx(27.5)
    assert record.microns_per_pixel == pytest.approx(2.0)
    assert record.warnings[0][0] == "hires_image" and "0.25" in record.warnings[0][1]
    assert (record.expression.kind, record.expression.uri) == ("tenx_mtx", str(folder / "filtered_feature_bc_matrix"))


def test_visium_image_override_and_explicit_image(tmp_path):
    folder = make_visium(tmp_path / "V3", fullres=False)
    other = write(tmp_path / "elsewhere" / "big.btf", b"II*\x00")
    record = read_slide(SlideRef("V3", "visium", "Visium", {"root": str(folder)}),
                        ReaderOptions(image_override=str(other)))
    assert record.image_uri == str(other) and record.coord_scale == 1.0 and record.spots.x[0] == 2000
    ref = SlideRef("V3", "visium", "Visium", {"root": str(folder), "image": str(tmp_path / "missing.tif")})
    with pytest.raises(SlideError) as error:
        read_slide(ref)
    assert error.value.reason == "image_missing" and "missing.tif" in error.value.detail


def test_visium_without_any_image(tmp_path):
    folder = make_visium(tmp_path / "V4", fullres=False)
    (folder / "spatial" / "tissue_hires_image.png").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V4", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "image_missing"


def test_visium_duplicate_barcodes_and_missing_positions(tmp_path):
    folder = make_visium(tmp_path / "V5", positions=POSITIONS + [POSITIONS[1]])
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "duplicate_spot_ids" and "AAAG-1" in error.value.detail
    (folder / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable"
    explicit = {"root": str(folder), "positions": str(folder / "spatial" / "gone.csv")}
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", explicit))
    assert error.value.reason == "coords_unreadable" and "gone.csv" in error.value.detail


def test_visium_garbled_scalefactors(tmp_path):
    folder = make_visium(tmp_path / "V6")
    write(folder / "spatial" / "scalefactors_json.json", "{not json")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V6", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "scalefactors_json.json" in error.value.detail


@pytest.mark.parametrize("key,value,reason,phrase", [
    ("spot_diameter_fullres", 0, "implausible_geometry", "is 0: it must be a positive number"),
    ("spot_diameter_fullres", -110.0, "implausible_geometry", "is -110"),
    ("spot_diameter_fullres", "SECRET-4242", "coords_unreadable", "is text, not a number"),
    ("spot_diameter_fullres", True, "coords_unreadable", "is true/false, not a number"),
    ("spot_diameter_fullres", None, "coords_unreadable", "has no 'spot_diameter_fullres'"),
    ("tissue_hires_scalef", 0, "implausible_geometry", "'tissue_hires_scalef'"),
    ("tissue_hires_scalef", [0.25], "coords_unreadable", "is a list, not a number"),
])
def test_visium_scale_factors_must_be_positive_numbers(tmp_path, key, value, reason, phrase):
    folder = make_visium(tmp_path / "V6", fullres=False)
    path = folder / "spatial" / "scalefactors_json.json"
    write(path, json.dumps({**SCALEFACTORS, key: value}))
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V6", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == reason and phrase in error.value.detail and str(path) in error.value.detail
    assert "SECRET" not in error.value.detail


def test_visium_positions_with_an_extra_column_say_so(tmp_path):
    """Columns that shifted are named as such, not as the duplicate ids they would otherwise produce."""
    extra = [(*row, "SECRET-4242") for row in POSITIONS]
    folder = make_visium(tmp_path / "V7", positions=extra)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V7", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable"
    assert "have 7 fields, expected the 6 columns barcode" in error.value.detail
    assert "tissue_positions_list.csv" in error.value.detail and "SECRET" not in error.value.detail


def test_visium_positions_header_and_rows_disagree(tmp_path):
    folder = make_visium(tmp_path / "V8", header=True)
    path = folder / "spatial" / "tissue_positions.csv"
    lines = path.read_text().splitlines()
    write(path, "\n".join(lines[:2] + [lines[2] + ",SECRET-4242"] + lines[3:]) + "\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V8", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "SECRET" not in error.value.detail
    assert "expected 6 fields, found 7 at line 3" in error.value.detail
    write(path, "\n".join([lines[0] + ",extra"] + [line + ",SECRET-4242" for line in lines[1:]]) + "\n")
    record = read_slide(SlideRef("V8", "visium", "Visium", {"root": str(folder)}))  # a named extra column is fine
    assert list(record.spots.spot_id) == ["AAAC-1", "AAAT-1", "AACC-1"]
    write(path, "\n".join([lines[0]] + [line + ",SECRET-4242" for line in lines[1:]]) + "\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V8", "visium", "Visium", {"root": str(folder)}))
    assert "have 7 fields, its header names 6" in error.value.detail


def test_visium_garbled_positions_are_described_not_quoted(tmp_path):
    folder = make_visium(tmp_path / "V9")
    path = folder / "spatial" / "tissue_positions_list.csv"
    write(path, b"AAAC-1,1,0,0,1000,2000\nSECRET-4242,\xff\xfe,0,0,1,2\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V9", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "UnicodeDecodeError: not utf-8 text" in error.value.detail
    assert "SECRET" not in error.value.detail and "\\x" not in error.value.detail
