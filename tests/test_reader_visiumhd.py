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


def write_factors(folder, **factors) -> str:
    """The 8 µm scalefactors JSON with ``factors`` set (None removes a key); its path."""
    path = folder / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    current = {k: v for k, v in {**json.loads(path.read_text()), **factors}.items() if v is not None}
    write(path, json.dumps(current))
    return str(path)


@pytest.mark.parametrize("factors,reason,phrase", [
    ({"bin_size_um": "SECRET-4242"}, "coords_unreadable", "'bin_size_um' in"),
    ({"bin_size_um": 0}, "implausible_geometry", "'bin_size_um' in"),
    ({"bin_size_um": -8}, "implausible_geometry", "is -8: it must be a positive number"),
    ({"microns_per_pixel": 0}, "implausible_geometry", "'microns_per_pixel' in"),
    ({"microns_per_pixel": "SECRET-4242"}, "coords_unreadable", "is text, not a number"),
    ({"spot_diameter_fullres": 0}, "implausible_geometry", "'spot_diameter_fullres' in"),
    ({"spot_diameter_fullres": None, "microns_per_pixel": None}, "coords_unreadable",
     "neither 'spot_diameter_fullres' nor 'microns_per_pixel'"),
])
def test_visiumhd_scale_factors_must_be_positive_numbers(tmp_path, factors, reason, phrase):
    """A bin size given as text used to end as internal_error: every value now has a named reason."""
    folder = make_visiumhd(tmp_path / "HD5")
    path = write_factors(folder, **factors)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("HD5", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert error.value.reason == reason and phrase in error.value.detail and path in error.value.detail
    assert "SECRET" not in error.value.detail


def test_visiumhd_bin_size_from_scalefactors_or_the_option(tmp_path):
    folder = make_visiumhd(tmp_path / "HD6")
    write_factors(folder, spot_diameter_fullres=None, bin_size_um=None, microns_per_pixel=0.5)
    record = read_slide(SlideRef("HD6", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert record.spot_diameter_px == 16.0  # 8 µm (the option) / 0.5 µm per px
    write_factors(folder, bin_size_um=10.0)
    record = read_slide(SlideRef("HD6", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert record.spot_diameter_px == 20.0


def test_visiumhd_unusable_parquet_column_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = make_visiumhd(tmp_path / "HD7")
    path = folder / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.parquet"
    table = pq.read_table(path)
    nested = pa.array([[1.0, 2.0]] * table.num_rows, pa.list_(pa.float64()))
    pq.write_table(table.set_column(table.schema.get_field_index("pxl_row_in_fullres"), "pxl_row_in_fullres",
                                    nested), path)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("HD7", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "pxl_row_in_fullres" in error.value.detail
