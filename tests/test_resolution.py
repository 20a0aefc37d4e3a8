"""Tiles at a physical resolution: scale sources, pyramid level choice, upsampling, and the HEST preset on the
synthetic HEST slide (0.25 µm/px, so 0.5 µm/px tiles come from pyramid level 1, pixel for pixel)."""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from stlake.ingestion import images, plan, units
from stlake.ingestion.discover import discover
from stlake.ingestion.images import Pyramid
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers.common import make_spots
from stlake.ingestion.records import ExpressionSource, RunError, SlideError, SlideRecord, SlideRef
from stlake.ingestion.resolution import choose_level, resolve, to_level
from stlake.lake import tables

SIZES = [(3400, 3625), (1700, 1812), (850, 906), (425, 453)]


def record(mpp=0.25, diameter=220.0, meta=None, coord_scale=1.0) -> SlideRecord:
    spots = make_spots(np.array(["a"], dtype=object), np.array([100.0]), np.array([100.0]))
    return SlideRecord(SlideRef("s", "hest", "Visium", {}, meta=meta or {}), "wsi.tif", spots, diameter,
                       ExpressionSource("h5ad", "s.h5ad"), microns_per_pixel=mpp, coord_scale=coord_scale)


def options(**kwargs) -> IngestOptions:
    return IngestOptions(**{"source": "", "lake": "", **kwargs})


def test_the_level_closest_above_the_target_is_chosen():
    assert [choose_level(SIZES, 0.25, t) for t in (0.2, 0.25, 0.4, 0.5, 0.6, 0.999, 1.0, 2.0, 50.0)] == \
        [0, 0, 0, 1, 1, 1, 2, 3, 3]
    assert choose_level(SIZES, 0.2634, 0.5) == 0  # level 1 would be 0.527 µm/px: coarser than asked
    np.testing.assert_allclose(to_level(np.array([0.0, 1.0, 2.5]), 2.0), [-0.25, 0.25, 1.0])


def test_preset_hest_reads_level_one_and_tile_px_or_um_set_the_tile():
    res, remarks = resolve(record(), Pyramid(SIZES), options(preset="hest"))
    assert (res.level, res.size_px, res.resize_px, res.tile_mpp, res.upsample, remarks) == (1, 224, 224, 0.5, 1.0, [])
    assert res.downsample == (2.0, 3625 / 1812) and res.scale_source == "reader" and res.level_size == SIZES[1]
    res, _ = resolve(record(), Pyramid(SIZES), options(target_mpp=0.75, tile_um=150.0))  # 200 px of 0.75 µm
    assert (res.level, res.size_px, res.resize_px) == (1, 300, 200)  # 300 px of level 1 (0.5 µm) -> area-shrunk
    res, _ = resolve(record(), Pyramid(SIZES), options(target_mpp=1.0))  # spot diameter 55 µm -> 55 px
    assert (res.level, res.size_px, res.resize_px) == (2, 55, 55)


def test_upsampling_is_warned_with_its_factor_or_refused():
    coarse = record(mpp=1.0, diameter=55.0)
    res, remarks = resolve(coarse, Pyramid([(2000, 2000)]), options(preset="hest"))
    assert (res.level, res.size_px, res.resize_px, res.upsample) == (0, 112, 224, 2.0)
    [(reason, detail)] = remarks
    assert reason == "upsampled" and "2.00x" in detail
    with pytest.raises(SlideError) as error:
        resolve(coarse, Pyramid([(2000, 2000)]), options(preset="hest", max_upsample=1.5))
    assert error.value.reason == "upsample_refused" and "--max-upsample 1.5" in error.value.detail
    res, remarks = resolve(coarse, Pyramid([(2000, 2000)]), options(tile_um=112.0, resize_px=224))  # the old way
    assert (res.size_px, res.upsample, remarks[0][0]) == (112, 2.0, "upsampled")
    assert resolve(record(mpp=0.47), Pyramid([(2000, 2000)]), options(preset="hest"))[1] == []  # 1.06x: quiet


def test_contradicting_options_stop_the_run():
    with pytest.raises(RunError, match="--resize cannot be combined"):
        options(preset="hest", resize_px=224)
    with pytest.raises(RunError, match="--max-upsample must be a positive number"):
        options(max_upsample=0.0)


def test_scale_sources_and_unknown_scale():
    no_scale = record(mpp=None)
    with pytest.raises(SlideError) as error:
        resolve(no_scale, Pyramid([(2000, 2000)]), options(target_mpp=0.5))
    assert error.value.reason == "unknown_scale"
    with pytest.raises(SlideError) as error:
        resolve(no_scale, Pyramid([(2000, 2000)]), options(tile_um=100.0))
    assert error.value.reason == "unknown_scale"
    res, _ = resolve(no_scale, Pyramid([(2000, 2000)]), options())  # no scale needed: the spot diameter
    assert (res.size_px, res.source_mpp, res.tile_mpp) == (220, None, None)
    res, _ = resolve(no_scale, Pyramid(SIZES, 0.25), options(target_mpp=0.5))
    assert (res.scale_source, res.level) == ("tiff_resolution", 1)
    res, _ = resolve(record(meta={"microns_per_pixel": "1.0"}, coord_scale=0.5), Pyramid(SIZES, 0.25),
                     options(target_mpp=4.0))  # the manifest wins; it is of full resolution, the image is half
    assert (res.scale_source, res.source_mpp, res.level) == ("manifest", 2.0, 1)
    with pytest.raises(SlideError) as error:
        resolve(record(meta={"microns_per_pixel": "-3"}), Pyramid(SIZES), options())
    assert error.value.reason == "implausible_geometry"


@pytest.fixture(scope="module")
def hest_ref(synthetic_dataset) -> SlideRef:
    [ref] = [r for r in discover(synthetic_dataset["root"]) if r.slide_id == "hest_1"]
    return ref


def test_hest_preset_cuts_level_one_pixel_exact(hest_ref, tmp_path):
    slide = plan.plan_slide(hest_ref, options(preset="hest", encoding="png"))
    assert slide.error is None and slide.resolution is not None
    assert (slide.resolution.level, slide.resolution.size_px, slide.resolution.tile_mpp) == (1, 224, 0.5)
    record, _ = slide.ready()
    with tifffile.TiffFile(record.image_uri) as tif:
        level1 = tif.series[0].levels[1].asarray()[:, :, ::-1]  # BGR
    tiles = [u for u in slide.units if isinstance(u, plan.TileUnit)]
    assert tiles and all(u.level == 1 for u in tiles)
    result = units.run_unit(tiles[0], str(tmp_path), "r1")
    assert result.error is None
    rows = [row for f in result.files if f.table == "spots"
            for row in pq.read_table(os.path.join(tmp_path, "spots", f.path)).to_pylist()]
    assert len(rows) == len(tiles[0].spots)
    for row in rows:
        assert (row["tile_width"], row["tile_height"], row["tile_size_px"]) == (224, 224, 224)
        tile = cv2.imdecode(np.frombuffer(row["tile"], np.uint8), cv2.IMREAD_COLOR)
        x0, y0 = row["tile_x0"], row["tile_y0"]
        expected = np.full((224, 224, 3), 255, np.uint8)
        ya, xa = max(y0, 0), max(x0, 0)
        part = level1[ya:y0 + 224, xa:x0 + 224]
        expected[ya - y0:ya - y0 + part.shape[0], xa - x0:xa - x0 + part.shape[1]] = part
        np.testing.assert_array_equal(tile, expected)
        i = list(record.spots.spot_id).index(row["spot_id"])
        assert x0 == int(np.floor((record.spots.x[i] + 0.5) / 2 - 0.5 + 0.5)) - 112  # level-1 centre
        assert row["x"] == record.spots.x[i]  # spots keep level-0 pixels


def test_ingest_records_the_scale_in_slides(spark, synthetic_dataset, tmp_path):
    from stlake.ingestion.driver import ingest

    manifest = tmp_path / "m.csv"
    root = os.path.join(synthetic_dataset["root"], "hest")
    manifest.write_text(f"slide_id,layout,path\nhest_1,hest,{root}\n")
    report = ingest(spark, options(source=str(manifest), lake=str(tmp_path / "lake"), preset="hest"))
    assert report.landed == ["hest_1"]
    [row] = tables.read_table(str(tmp_path / "lake"), "slides").to_pylist()
    assert (row["microns_per_pixel"], row["tile_microns_per_pixel"], row["pyramid_level"], row["scale_source"]) == \
        (0.25, 0.5, 1, "reader")
    assert (row["tile_size_px"], row["tile_resize_px"], row["technology"], row["tissue"]) == (224, 224, "Visium",
                                                                                              "Breast")
    assert row["species"] == "human" and '"oncotree_code": "IDC"' in row["meta_json"]
    sizes = tables.read_table(str(tmp_path / "lake"), "spots", columns=["tile_width", "tile_height"]).to_pylist()
    assert {(r["tile_width"], r["tile_height"]) for r in sizes} == {(224, 224)}


def test_pyramid_levels_of_subifd_tiffs(tmp_path):
    from stlake.synth.imagefiles import pyramid_levels, write_pyramid_tiff

    rgb = np.random.default_rng(0).integers(0, 255, (600, 520, 3), dtype=np.uint8)
    path = str(tmp_path / "p.tif")
    write_pyramid_tiff(path, pyramid_levels(rgb, 128), 0.5, subifds=True)
    assert images.probe_pyramid(path) == Pyramid([(520, 600), (260, 300), (130, 150)], 0.5)
    with images.open_region_reader(path, level=2) as reader:
        np.testing.assert_array_equal(reader.read_region(0, 150, 0, 130),
                                      pyramid_levels(rgb, 128)[2][:, :, ::-1])
    assert dataclasses.replace(images.probe_image(path)).width == 520
