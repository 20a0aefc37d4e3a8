"""Stage-2 expression units: what a unit writes and reports about its slide."""
from __future__ import annotations

import numpy as np

from stlake.ingestion import matrices, plan, tiling, units
from stlake.ingestion.images import ImageInfo
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers.common import make_spots
from stlake.ingestion.records import ExpressionSource, SlideRecord, SlideRef
from stlake.lake import genes


def test_rows_of_spots_not_on_the_slide_do_not_count(tmp_path):
    """A row whose spot is not the slide's is dropped: its genes are not detected, its counts not summed."""
    matrix = tmp_path / "counts.csv"
    matrix.write_text(",A,B,C,D\ns1,2,0,0,1\nghost,0,7,9,0\ns2,3,0,0,0\n")
    source = ExpressionSource("dense_csv", str(matrix), {"sep": ","})
    expr_plan = matrices.plan_expression(source)
    gene_map = genes.harmonise(expr_plan.genes, expr_plan.ensembl_ids, expr_plan.symbols, "human")
    unit = plan.ExprUnit("slide", "Visium", source, expr_plan, expr_plan.chunks[0], gene_map.gene_ids,
                         np.array(["s1", "s2"], dtype=object), 0)
    result = units.run_expression_unit(unit, str(tmp_path / "lake"), "run")
    a, b, c, d = gene_map.gene_ids
    assert result.rows == 2 and result.unknown_rows == 1 and sorted(result.spot_ids) == ["s1", "s2"]
    assert sorted(result.detected_gene_ids.tolist()) == sorted([a, d])  # B and C only in the ghost row
    assert b not in result.detected_gene_ids and c not in result.detected_gene_ids
    assert result.total_counts == 6


def one_band_plan(n: int, max_spots: int) -> tuple[plan.SlidePlan, IngestOptions]:
    """A random-access slide whose ``n`` spots share one row band; x runs opposite to the spot order."""
    x = np.arange(n, 0, -1) * 10.0
    spots = make_spots(np.array([f"s{i}" for i in range(n)], dtype=object), x, np.full(n, 100.0))
    ref = SlideRef("slide", "stimage", "Visium", {})
    record = SlideRecord(ref, "image.tif", spots, 20.0, ExpressionSource("dense_csv", "counts.csv"))
    image = ImageInfo(int(x.max()) + 50, 400, 3, "tiff", True)
    options = IngestOptions(source="", lake="", max_spots_per_task=max_spots, memory_budget=1 << 30)
    expr_unit = plan.ExprUnit("slide", "Visium", record.expression, None, None, None, spots.spot_id, 0)
    slide = plan.SlidePlan(ref, record, image, 20, units=[*plan.tile_units(record, image, 20, options), expr_unit])
    return slide, options


def test_a_crowded_band_is_split_into_column_runs():
    slide, _ = one_band_plan(50, 20)
    groups = [unit.spots.x for unit in slide.units if isinstance(unit, plan.TileUnit)]
    assert [len(g) for g in groups] == [20, 20, 10]
    assert all(a.max() < b.min() for a, b in zip(groups, groups[1:]))  # left to right, not interleaved


def test_fill_cores_splits_into_column_runs_and_renumbers_once():
    slide, _ = one_band_plan(1200, 20_000)
    plan.fill_cores([slide], 4)  # 1,200 -> 600 + 600; 600 spots are too few to split again
    tiles = [unit for unit in slide.units if isinstance(unit, plan.TileUnit)]
    assert [unit.index for unit in tiles] == [0, 1] and [len(unit.spots) for unit in tiles] == [600, 600]
    assert tiles[0].spots.x.max() < tiles[1].spots.x.min()
    assert isinstance(slide.units[-1], plan.ExprUnit) and slide.units[-1].index == 0


def lake_files(lake) -> list[str]:
    """Every Parquet file under the lake folder."""
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet"))


def labelled_tile_unit(tmp_path) -> plan.TileUnit:
    """A tile unit of three labelled spots on a small white PNG."""
    import cv2

    image = tmp_path / "slide.png"
    cv2.imwrite(str(image), np.full((100, 120, 3), 255, np.uint8))
    spots = make_spots(np.array(["a", "b", "c"], dtype=object), np.array([20.0, 50.0, 80.0]), np.full(3, 40.0),
                       label=np.array(["tumor", None, "stroma"], dtype=object))
    spec = tiling.TileSpec(size_px=16, resize_px=None, border="pad", encoding="jpeg", quality=90)
    return plan.TileUnit("slide", "Visium", str(image), spots, spec, 1 << 30, "anno.csv", 0)


def test_a_unit_that_fails_partway_leaves_no_files(tmp_path, monkeypatch):
    """The spots file is written before the annotations; when the latter fails, the former is deleted too."""
    unit, lake = labelled_tile_unit(tmp_path), tmp_path / "lake"
    assert units.run_unit(unit, str(lake), "ok").error is None
    assert [f.split("/")[0] for f in lake_files(lake)] == ["annotations", "spots"]
    for path in lake.rglob("*.parquet"):
        path.unlink()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(units, "annotation_rows", broken)
    result = units.run_unit(unit, str(lake), "broken")
    assert result.error is not None and result.error.reason == "internal_error" and result.error.stage == "tiles"
    assert "disk full" in result.error.detail and result.files == []
    assert lake_files(lake) == []


def test_a_multi_file_write_that_fails_partway_leaves_no_files(tmp_path, monkeypatch):
    """A table split into several files: when a later file fails, the earlier ones are deleted."""
    from stlake.lake import schemas, tables

    unit, lake = labelled_tile_unit(tmp_path), tmp_path / "lake"
    monkeypatch.setattr(schemas, "FILE_BYTES", 1)  # one row per file
    original, calls = tables.write_data_file, []

    def fail_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("connection reset")
        return original(*args, **kwargs)

    monkeypatch.setattr(tables, "write_data_file", fail_on_second)
    result = units.run_unit(unit, str(lake), "broken")
    assert result.error is not None and "connection reset" in result.error.detail
    assert len(calls) == 2 and lake_files(lake) == []
