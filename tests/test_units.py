"""Stage-2 expression units: what a unit writes and reports about its slide."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from stlake.ingestion import matrices, plan, tiling, units
from stlake.ingestion.images import ImageInfo
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers.common import make_spots
from stlake.ingestion.records import ExpressionSource, LabelSet, SlideError, SlideRecord, SlideRef
from stlake.ingestion.resolution import Resolution
from stlake.lake import genes


def test_rows_of_spots_not_on_the_slide_do_not_count(tmp_path):
    """A row whose spot is not the slide's is dropped: its genes are not detected, its counts not summed."""
    matrix = tmp_path / "counts.csv"
    matrix.write_text(",A,B,C,D\ns1,2,0,0,1\nghost,0,7,9,0\ns2,3,0,0,0\n")
    source = ExpressionSource("dense_csv", str(matrix), {"sep": ","})
    expr_plan = matrices.plan_expression(source)
    gene_map = genes.harmonise(expr_plan.genes, expr_plan.ensembl_ids, expr_plan.symbols, "human")
    rows = matrices.plan_rows(source, expr_plan, np.array(["s1", "s2"], dtype=object))
    unit = plan.ExprUnit("slide", "Visium", source, expr_plan, expr_plan.chunks[0], gene_map.gene_ids, rows[0], 0)
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
    expr_unit = plan.ExprUnit("slide", "Visium", record.expression, None, None, None,
                              matrices.SlideIds.of(spots.spot_id), 0)
    slide = plan.SlidePlan(ref, record, image, 20, units=[
        *plan.tile_units(record, image, Resolution.level0(20, (image.width, image.height)), options), expr_unit])
    return slide, options


def test_a_crowded_band_is_split_into_column_runs():
    slide, options = one_band_plan(50, 20)
    groups = [unit.spots.x for unit in slide.units if isinstance(unit, plan.TileUnit)]
    assert [len(g) for g in groups] == [20, 20, 10]
    assert {unit.threads for unit in slide.units if isinstance(unit, plan.TileUnit)} == {1}  # tasks, not threads
    png = dataclasses.replace(slide.image, format="png", random_access=False)
    [whole] = plan.tile_units(slide.record, png, Resolution.level0(20, (png.width, png.height)), options)
    assert len(whole.spots) == 50 and whole.threads == options.tile_threads == 2
    assert all(a.max() < b.min() for a, b in zip(groups, groups[1:]))  # left to right, not interleaved


def test_fill_cores_splits_into_column_runs_and_renumbers_once():
    slide, _ = one_band_plan(1200, 20_000)
    plan.fill_cores([slide], 4)  # 1,200 -> 600 + 600; 600 spots are too few to split again
    tiles = [unit for unit in slide.units if isinstance(unit, plan.TileUnit)]
    assert [unit.index for unit in tiles] == [0, 1] and [len(unit.spots) for unit in tiles] == [600, 600]
    assert tiles[0].spots.x.max() < tiles[1].spots.x.min()
    assert isinstance(slide.units[-1], plan.ExprUnit) and slide.units[-1].index == 0


def test_units_start_longest_first_a_whole_png_before_tiff_bands_and_small_chunks():
    """A big PNG is decoded whole by one unit: it goes first, whatever the slides' order."""
    tiff, _ = one_band_plan(1200, 400)  # three TIFF bands of 400 spots, 20 px tiles
    spots = make_spots(np.array(["p0", "p1"], dtype=object), np.array([50.0, 90.0]), np.full(2, 50.0))
    ref = SlideRef("big_png", "stimage", "Visium", {})
    record = SlideRecord(ref, "big.png", spots, 20.0, ExpressionSource("dense_csv", "counts.csv"))
    png = plan.SlidePlan(ref, record, ImageInfo(20_000, 17_000, 3, "png", False), 20, units=[
        plan.TileUnit("big_png", "Visium", "big.png", spots, tiling.TileSpec(20), 1 << 30, (), 0),
        plan.ExprUnit("big_png", "Visium", record.expression, None, matrices.ExprChunk("bytes", 0, 64 << 20),
                      None, None, 0)])
    tiff.units[-1] = dataclasses.replace(tiff.units[-1], chunk=matrices.ExprChunk("bytes", 0, 64 << 10))
    ordered = plan.longest_first([tiff, png])
    assert [(u.slide_id, type(u).__name__) for u in ordered[:2]] == [("big_png", "TileUnit"), ("big_png", "ExprUnit")]
    assert isinstance(ordered[-1], plan.ExprUnit) and ordered[-1].slide_id == "slide"
    assert len(ordered) == len(tiff.units) + len(png.units)


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
    spots.annotations = np.array([["Tumor"], [None], ["stroma"]], dtype=object)
    label_set = LabelSet("anno", "anno.csv", {"Tumor": "tumor", "stroma": "stroma"})
    spec = tiling.TileSpec(size_px=16, resize_px=None, border="pad", encoding="jpeg", quality=90)
    return plan.TileUnit("slide", "Visium", str(image), spots, spec, 1 << 30, (label_set,), 0)


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


def textured_tile_unit(tmp_path, budget: int, n: int = 60, size: int = 64, h: int = 300,
                       w: int = 400) -> plan.TileUnit:
    """A tile unit of ``n`` spots on a noisy ``h`` x ``w`` PNG (PNG tiles: about their raw size)."""
    import cv2

    image = tmp_path / "noise.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8))
    rng = np.random.default_rng(2)
    spots = make_spots(np.array([f"s{i}" for i in range(n)], dtype=object), rng.uniform(0, w, n),
                       rng.uniform(0, h, n))
    return plan.TileUnit("slide", "Visium", str(image), spots, tiling.TileSpec(size_px=size, encoding="png"),
                         budget, (), 0)


def test_a_tile_unit_writes_batches_within_its_budget(tmp_path):
    """Encoded tiles beyond the batch limit go to further files; the rows are those of one big batch."""
    from stlake.lake import tables

    budget = 4 << 20  # tile half 2 MiB: batches of ~0.5 MiB, 60 tiles of ~12 KiB = 0.7 MiB
    tight = units.run_unit(textured_tile_unit(tmp_path, budget), str(tmp_path / "tight"), "run")
    free = units.run_unit(textured_tile_unit(tmp_path, 1 << 30), str(tmp_path / "free"), "run")
    assert tight.error is None and tight.rows == free.rows == 60
    assert len(tight.files) > len(free.files) == 1
    assert tight.peak_tile_bytes <= tiling.tile_budget(budget)
    assert tight.peak_decoded_bytes <= tiling.decode_budget(budget)
    rows = [tables.read_table(str(tmp_path / lake), "spots").sort_by("spot_id").drop(["run_id"])
            for lake in ("tight", "free")]
    assert rows[0].equals(rows[1])


@pytest.mark.parametrize("budget", [1 << 30, 2 << 20])  # decoded whole; streamed (1.44 MB decoded > 1 MiB)
def test_a_tile_unit_on_threads_writes_the_same_rows(tmp_path, budget):
    from stlake.lake import tables

    rows, results = [], []
    for threads in (1, 2):
        unit = dataclasses.replace(textured_tile_unit(tmp_path, budget, n=200, size=16, h=600, w=800), threads=threads)
        assert tiling.fitting_threads(unit.spec, budget, threads) == threads
        results.append(units.run_unit(unit, str(tmp_path / f"t{threads}"), "run"))
        rows.append(tables.read_table(str(tmp_path / f"t{threads}"), "spots").sort_by("spot_id").drop(["run_id"]))
    assert all(r.error is None and r.rows == 200 and r.peak_tile_bytes <= tiling.tile_budget(budget) for r in results)
    assert all(r.peak_decoded_bytes <= tiling.decode_budget(budget) for r in results)
    assert rows[0].equals(rows[1])


def test_a_tile_unit_counts_uniform_tiles(tmp_path):
    result = units.run_tile_unit(labelled_tile_unit(tmp_path), str(tmp_path / "lake"), "run")  # a white PNG
    assert result.rows == 3 and result.uniform_tiles == 3
    textured = units.run_tile_unit(textured_tile_unit(tmp_path, 1 << 30), str(tmp_path / "lake2"), "run")
    assert textured.uniform_tiles == 0


def geometry_record(x: np.ndarray, y: np.ndarray, diameter: float) -> SlideRecord:
    spots = make_spots(np.array([f"s{i}" for i in range(len(x))], dtype=object), x, y)
    return SlideRecord(SlideRef("slide", "visium", "Visium", {}), "image.tif", spots, diameter,
                       ExpressionSource("tenx_h5", "m.h5"))


def grid(n: int, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(n) * pitch + 50, np.arange(n) * pitch + 50)
    return gx.ravel().astype(float), gy.ravel().astype(float)


@pytest.mark.parametrize("diameter,ok", [(55.0, True), (100.0, True), (290.0, True), (5.0, False), (400.0, False),
                                         (0.5, False), (float("nan"), False), (600.0, False)])
def test_check_geometry_diameter_against_spacing_and_image(diameter, ok):
    x, y = grid(10, 100.0)
    image = ImageInfo(2400, 2000, 3, "tiff", True)
    record = geometry_record(x, y, diameter)
    if ok:
        plan.check_geometry(record, image)
        return
    with pytest.raises(SlideError) as error:
        plan.check_geometry(record, image)
    assert error.value.reason == "implausible_geometry" and "image.tif" in error.value.detail


def test_check_geometry_stacked_spots_and_single_spot():
    image = ImageInfo(1000, 1000, 3, "tiff", True)
    with pytest.raises(SlideError) as error:
        plan.check_geometry(geometry_record(np.full(20, 300.0), np.full(20, 300.0), 50.0), image)
    assert "lie exactly on another spot" in error.value.detail
    plan.check_geometry(geometry_record(np.array([300.0]), np.array([300.0]), 50.0), image)  # no spacing to check


def test_spot_pitch_of_a_large_slide_is_measured_on_a_central_band(monkeypatch):
    x, y = grid(60, 16.0)
    whole = plan.spot_pitch(geometry_record(x, y, 16.0).spots)
    monkeypatch.setattr(plan, "PITCH_SPOTS", 500)
    assert whole == plan.spot_pitch(geometry_record(x, y, 16.0).spots) == pytest.approx(16.0)


def test_uniform_tiles_warning_when_every_tile_is_uniform():
    from stlake.ingestion import driver

    record = geometry_record(*grid(3, 100.0), 55.0)
    slide = plan.SlidePlan(record.ref, record, ImageInfo(500, 500, 3, "tiff", True), 55)

    def warnings(uniform: list[int]) -> list[str]:
        results = [units.UnitResult("slide", "tiles", rows=3, uniform_tiles=u) for u in uniform]
        outcome = driver.SlideOutcome(slide, results)
        driver.collect_warnings(outcome)
        return [reason for reason, _ in outcome.warnings]

    assert warnings([3, 3, 3]) == ["uniform_tiles"]
    assert warnings([3, 2, 3]) == []


def test_an_unexpected_error_names_type_and_place_but_not_its_message(tmp_path, monkeypatch):
    """Messages of unexpected errors can quote input, so ``rejects`` gets the type and the frames only."""
    unit = labelled_tile_unit(tmp_path)

    def quoting(*args):
        raise ValueError("could not convert string to float: 'SECRET-4242'")

    monkeypatch.setattr(units, "annotation_rows", quoting)
    result = units.run_unit(unit, str(tmp_path / "lake"), "r")
    assert result.error.reason == "internal_error" and "ValueError" in result.error.detail
    assert "SECRET" not in result.error.detail and "quoting" in result.error.detail


def test_units_travel_packed_and_write_the_same_rows(tmp_path):
    """A unit's spots pickle into a small Parquet buffer, decoded only when a column is used."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    unit = labelled_tile_unit(tmp_path)
    travelled = pickle.loads(pickle.dumps(unit))
    assert "_packed" in travelled.spots.__dict__ and len(travelled.spots) == 3  # len needs no decoding
    assert pickle.loads(pickle.dumps(travelled)).spots.__dict__["_packed"] == travelled.spots.__dict__["_packed"]
    written = {}
    for name, one in (("here", unit), ("travelled", travelled)):
        assert units.run_tile_unit(one, str(tmp_path / name), "run").error is None
        written[name] = {table: pa.concat_tables(pq.read_table(path) for path in (tmp_path / name).rglob(
                             f"{table}/*.parquet")).drop(["run_id"]).to_pylist() for table in ("spots", "annotations")}
    assert len(written["here"]["spots"]) == 3 and len(written["here"]["annotations"]) == 2
    assert written["here"] == written["travelled"]
    assert "_packed" not in travelled.spots.__dict__
    assert travelled.spots.annotations.tolist() == [["Tumor"], [None], ["stroma"]]


def test_a_full_tile_unit_of_2um_bins_is_under_100_kb():
    """20,000 VisiumHD 2 µm bins (the default cap of a tile task): ~1 MB pickled as arrays, a few KB packed."""
    rows, cols = np.divmod(np.arange(20_000), 200)
    ids = np.array([f"s_002um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)], dtype=object)
    spots = make_spots(ids, 100 + 4.0 * cols, 100 + 4.0 * rows, array_row=rows, array_col=cols)
    spec = tiling.TileSpec(size_px=4, resize_px=None, border="pad", encoding="jpeg", quality=90)
    unit = plan.TileUnit("slide", "Visium HD", "image.tif", spots, spec, 1 << 30, (), 0)
    travelled = pickle.loads(pickle.dumps(unit))
    assert len(pickle.dumps(unit)) < 100_000 and len(travelled.spots) == 20_000
    assert (travelled.spots.spot_id == ids).all() and (travelled.spots.y == spots.y).all()
    assert travelled.spots.array_col.dtype == np.int32 and travelled.spots.annotations is None


def test_spots_whose_ids_are_not_text_pickle_as_arrays():
    spots = make_spots(np.array([1, 2], dtype=object), [1.0, 2.0], [3.0, 4.0])
    travelled = pickle.loads(pickle.dumps(spots))
    assert "_packed" not in travelled.__dict__ and travelled.spot_id.tolist() == [1, 2]


def test_an_expression_unit_carries_its_gene_ids_as_keys_and_hashes_them_back_in_the_task(tmp_path):
    import pickle

    matrix = tmp_path / "counts.csv"
    names = [f"GENE{i:05d}" for i in range(5000)]
    matrix.write_text("," + ",".join(names) + "\n" + "s1," + ",".join(["1"] * len(names)) + "\n")
    spots = make_spots(np.array(["s1"], dtype=object), np.array([10.0]), np.array([10.0]))
    ref = SlideRef("slide", "stimage", "Visium", {}, species="human")
    record = SlideRecord(ref, "image.png", spots, 5.0, ExpressionSource("dense_csv", str(matrix), {"sep": ","}))
    unit, = plan.expression_units(record, IngestOptions(source="", lake=""))[0]
    assert unit.gene_keys is not None
    shipped = pickle.loads(pickle.dumps(unit))
    assert len(pickle.dumps(unit)) < unit.gene_ids.nbytes / 2
    assert "gene_ids" not in shipped.__dict__  # hashed back only when the task uses them
    assert np.array_equal(shipped.gene_ids, unit.gene_ids)
    result = units.run_expression_unit(shipped, str(tmp_path / "lake"), "run")
    assert result.rows == 1 and sorted(result.detected_gene_ids.tolist()) == sorted(unit.gene_ids.tolist())
