"""The visiumhd reader (Space Ranger VisiumHD) on tiny inline fixtures (see readerdata.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from readerdata import make_visiumhd, write
from stlake.ingestion.readers import (
    ReaderOptions,
    read_slide,
)
from stlake.ingestion.records import SlideError, SlideRef


def test_visiumhd_default_8um_bins(tmp_path):
    folder = make_visiumhd(tmp_path / "HD1")
    record = read_slide(SlideRef("HD1", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert len(record.spots) == 4 and record.spots.spot_id[0] == "s_008um_00000_00000-1"
    np.testing.assert_allclose(record.spots.y, [100, 132, 164, 196])
    np.testing.assert_allclose(record.spots.x, [50] * 4)
    assert record.spot_diameter_px == 32.0 and record.microns_per_pixel == pytest.approx(0.25)
    assert record.image_uri == str(folder / "image.tif") and record.image_source == "fullres"
    assert record.expression.kind == "tenx_h5"
    assert record.expression.uri == str(folder / "binned_outputs" / "square_008um" / "filtered_feature_bc_matrix.h5")
    assert list(record.spots.array_row) == [0, 1, 2, 3]


def test_visiumhd_16um_bins_and_hires(tmp_path):
    folder = make_visiumhd(tmp_path / "HD2", fullres=False)
    record = read_slide(SlideRef("HD2", "visiumhd", "VisiumHD", {"root": str(folder)}),
                        ReaderOptions(bin_size_um=16))
    assert list(record.spots.spot_id) == ["s_016um_00000_00000-1", "s_016um_00001_00000-1"]
    assert record.image_source == "hires" and record.coord_scale == 0.1
    assert record.image_uri == str(folder / "spatial" / "tissue_hires_image.png")
    np.testing.assert_allclose(record.spots.y, [10.0, 16.4])
    assert record.spot_diameter_px == pytest.approx(6.4) and record.microns_per_pixel == pytest.approx(2.5)
    assert record.expression.uri.endswith("square_016um/filtered_feature_bc_matrix.h5")
    assert [w[0] for w in record.warnings] == ["hires_image"]


def test_visiumhd_missing_bin_size(tmp_path):
    folder = make_visiumhd(tmp_path / "HD3")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("HD3", "visiumhd", "VisiumHD", {"root": str(folder)}), ReaderOptions(bin_size_um=2))
    assert error.value.reason == "bin_size_unavailable" and "square_008um" in error.value.detail


def test_visiumhd_diameter_from_microns_per_pixel(tmp_path):
    folder = make_visiumhd(tmp_path / "HD4")
    path = folder / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    write(path, json.dumps({"bin_size_um": 8.0, "microns_per_pixel": 0.5, "tissue_hires_scalef": 0.1}))
    record = read_slide(SlideRef("HD4", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert record.spot_diameter_px == 16.0 and record.microns_per_pixel == 0.5
