"""End to end: synthetic slides of all four layouts -> Spark ingest job -> Delta lake, checked against truth."""
from __future__ import annotations

import os
from collections import Counter

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from stlake.ingestion.driver import ingest
from stlake.ingestion.options import IngestOptions
from stlake.lake import genes, tables
from stlake.sql import queries, read_table, register_views, run_sql
from stlake.synth import CORRUPT_SLIDES, StimageSpec, generate, generate_stimage_slide, load_truth, locate_marker

MARKER_CHECKS_PER_SLIDE = 150
TRUTH_SLIDES = ["anndata_1", "anndata_2", "hest_1", "st_1", "stimage_hd_1", "stimage_st_1", "stimage_visium_1",
                "visium_1", "visium_2", "visiumhd_1"]


@pytest.fixture(scope="module")
def dataset(synthetic_dataset) -> dict:
    return synthetic_dataset


@pytest.fixture(scope="module")
def lake(spark, dataset, tmp_path_factory) -> dict:
    """One ingest run over the dataset; PNG tiles so pixels can be compared exactly."""
    lake_dir = str(tmp_path_factory.mktemp("lake"))
    options = IngestOptions(source=os.path.join(dataset["root"], "manifest.csv"), lake=lake_dir, encoding="png")
    report = ingest(spark, options)
    return {"dir": lake_dir, "options": options, "report": report}


def valid_slides(dataset: dict) -> list[str]:
    return sorted(s for ids in dataset["slides"].values() for s in ids)


def slide_rows(lake_dir: str, table: str, slide_id: str, columns: list[str]):
    data = tables.read_table(lake_dir, table, columns=["slide_id", *columns])
    return data.filter(pc.equal(data["slide_id"], slide_id))


def landed_truth(root: str, slide_id: str):
    """The truth of the spots a default run keeps (in-tissue spots)."""
    truth = load_truth(root, slide_id)
    return truth.take(np.flatnonzero(truth.in_tissue))


TENX_LAYOUTS = ("visium", "visiumhd", "anndata", "hest")  # features named by symbol + Ensembl id


def tenx_symbols(root: str, slides: list[str]) -> dict[str, str]:
    """Unversioned Ensembl id -> symbol of every gene of the 10x slides (their features carry both)."""
    truths = [load_truth(root, s) for s in slides]
    return {e: s for t in truths if t.layout in TENX_LAYOUTS for e, s in zip(t.gene_ids, t.gene_symbols)}


def truth_gene_ids(truth, symbols: dict[str, str]) -> np.ndarray:
    """Global gene id of every truth column, keyed the way the lake keys them.

    10x features carry a symbol, which is the key; CSV columns are keyed by their own name, an
    Ensembl-named column by its symbol when a 10x slide of the run pairs them (``symbols``), else by
    its unversioned id.
    """
    names = truth.gene_symbols if truth.layout in TENX_LAYOUTS else truth.gene_names
    names = [symbols.get(genes.unversioned(n), n) if genes.is_ensembl(n) else n for n in names]
    species = genes.normalise_species("human")
    return np.array([genes.gene_id(species, genes.gene_key(name, species)[0]) for name in names], dtype=np.int64)


def test_good_slides_land_and_broken_ones_are_rejected_with_their_reason(lake, dataset):
    report = lake["report"]
    assert report.landed == valid_slides(dataset)
    assert report.rejected == dataset["corrupt"] == CORRUPT_SLIDES
    rejects = tables.read_table(lake["dir"], "rejects").to_pylist()
    errors = {r["slide_id"]: r["reason"] for r in rejects if r["severity"] == "error"}
    assert errors == CORRUPT_SLIDES
    assert all(r["run_id"] == report.run_id and r["detail"] for r in rejects)
    landed = set(tables.read_table(lake["dir"], "spots", columns=["slide_id"])["slide_id"].to_pylist())
    assert landed == set(report.landed)


def test_report_sums_unit_seconds_by_kind(lake):
    report = lake["report"]
    assert set(report.unit_seconds) == {"tiles", "expression"}
    assert all(seconds >= 0 for seconds in report.unit_seconds.values()) and sum(report.unit_seconds.values()) > 0
    assert '"unit_seconds"' in report.to_json()


def test_every_expected_spot_lands_once(lake, dataset):
    spots = tables.read_table(lake["dir"], "spots", columns=["slide_id", "spot_id"])
    per_slide = Counter(spots["slide_id"].to_pylist())
    assert dict(per_slide) == {s: dataset["n_spots"][s] for s in valid_slides(dataset)}
    keys = list(zip(spots["slide_id"].to_pylist(), spots["spot_id"].to_pylist()))
    assert len(set(keys)) == len(keys)
    for slide_id in valid_slides(dataset):
        truth = landed_truth(dataset["root"], slide_id)
        ids = set(slide_rows(lake["dir"], "spots", slide_id, ["spot_id"])["spot_id"].to_pylist())
        assert ids == set(truth.spot_id.tolist()), slide_id


@pytest.mark.parametrize("layout_slide", TRUTH_SLIDES)
def test_tiles_are_cut_at_the_spot_to_the_pixel(lake, dataset, layout_slide):
    truth = landed_truth(dataset["root"], layout_slide)
    rows = slide_rows(lake["dir"], "spots", layout_slide, ["spot_id", "tile", "tile_format", "x", "y"]).to_pylist()
    index = {spot: i for i, spot in enumerate(truth.spot_id.tolist())}
    marked = [r for r in rows if truth.code[index[r["spot_id"]]] >= 0]
    assert marked, f"{layout_slide}: no spot carries a marker"
    rng = np.random.default_rng(0)
    for row in rng.permutation(marked)[:MARKER_CHECKS_PER_SLIDE]:
        i = index[row["spot_id"]]
        assert row["tile_format"] == "png"
        assert abs(row["x"] - truth.x[i]) <= 1 and abs(row["y"] - truth.y[i]) <= 1
        tile = cv2.imdecode(np.frombuffer(row["tile"], np.uint8), cv2.IMREAD_COLOR)
        dy, dx = locate_marker(tile, int(truth.code[i]), search=2 if min(tile.shape[:2]) < 22 else 3)
        assert abs(dy) <= 1 and abs(dx) <= 1, f"{layout_slide}/{row['spot_id']}: marker off by {(dy, dx)}"


@pytest.mark.parametrize("slide_id", TRUTH_SLIDES)
def test_counts_equal_the_source_exactly(lake, dataset, slide_id):
    truth = landed_truth(dataset["root"], slide_id)
    column_ids = truth_gene_ids(truth, tenx_symbols(dataset["root"], valid_slides(dataset)))
    rows = slide_rows(lake["dir"], "expression", slide_id,
                      ["spot_id", "gene_ids", "counts", "total_counts", "n_genes"]).to_pylist()
    index = {spot: i for i, spot in enumerate(truth.spot_id.tolist())}
    assert len(rows) == len(index)
    counts = truth.counts.tocsr()
    for row in rows:
        source = counts[index[row["spot_id"]]]
        expected = dict(zip(column_ids[source.indices].tolist(), source.data.tolist()))
        assert dict(zip(row["gene_ids"], row["counts"])) == expected, f"{slide_id}/{row['spot_id']}"
        assert row["gene_ids"] == sorted(row["gene_ids"])
        assert row["total_counts"] == int(source.data.sum()) and row["n_genes"] == source.nnz


def test_one_gene_table_is_shared_by_all_slides(lake, dataset):
    gene_rows = tables.read_table(lake["dir"], "genes")
    ids = gene_rows["gene_id"].to_pylist()
    assert len(ids) == len(set(ids))
    known = set(ids)
    used = set(pc.list_flatten(tables.read_table(lake["dir"], "expression", columns=["gene_ids"])["gene_ids"])
               .to_pylist())
    assert used <= known
    symbols = tenx_symbols(dataset["root"], valid_slides(dataset))
    per_slide = [set(truth_gene_ids(load_truth(dataset["root"], s), symbols).tolist()) for s in valid_slides(dataset)]
    shared = set.intersection(*per_slide)
    assert shared, "the synthetic slides share genes; the lake must give them one id"
    assert shared <= known
    keys = gene_rows["gene_key"].to_pylist()
    assert not any("." in k and k.startswith("ENS") for k in keys), "Ensembl versions are stripped"


def test_ensembl_only_columns_meet_the_10x_genes_by_symbol(lake, dataset):
    """stimage_visium_1 names some genes (TP53 among them) by versioned Ensembl id only; 10x slides pair them."""
    symbols = tenx_symbols(dataset["root"], valid_slides(dataset))
    truth = load_truth(dataset["root"], "stimage_visium_1")
    ensembl_named = [n for n in truth.gene_names if genes.is_ensembl(n)]
    assert any(n.startswith("ENSG00000141510.") for n in ensembl_named)
    tp53 = genes.gene_id("human", "TP53")
    for slide_id in ("stimage_visium_1", "visium_1"):
        used = set(pc.list_flatten(slide_rows(lake["dir"], "expression", slide_id, ["gene_ids"])["gene_ids"])
                   .to_pylist())
        assert tp53 in used, slide_id
    rows = {r["gene_id"]: r for r in tables.read_table(lake["dir"], "genes").to_pylist()}
    assert rows[tp53]["ensembl_id"] == "ENSG00000141510"
    assert genes.gene_id("human", "ENSG00000141510") not in rows
    unresolved = sorted({genes.unversioned(n) for n in ensembl_named} - set(symbols))
    warnings = [r for r in tables.read_table(lake["dir"], "rejects").to_pylist()
                if r["slide_id"] == "stimage_visium_1" and r["reason"] == "ensembl_genes_unresolved"]
    if unresolved:
        [warning] = warnings
        assert warning["severity"] == "warning"
        assert warning["detail"].startswith(f"{len(unresolved)} of {len(ensembl_named)} genes")
    else:
        assert warnings == []


def test_no_orphan_data_files_after_a_run_with_rejects(lake):
    """Files of rejected slides are deleted; every Parquet file on disk is active in its table."""
    for name in ("spots", "expression", "annotations"):
        active = {os.path.normpath(p) for p in tables.active_files(lake["dir"], name)}
        root = tables.table_uri(lake["dir"], name)
        on_disk = {os.path.normpath(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
                   if f.endswith(".parquet")}
        assert on_disk == active, name


def test_sql_answers_the_readme_questions(spark, lake, dataset):
    register_views(spark, lake["dir"])
    slides = {r["slide_id"]: r for r in tables.read_table(lake["dir"], "slides").to_pylist()}
    expected = Counter()
    for slide_id in valid_slides(dataset):
        expected[(slides[slide_id]["tissue"], slides[slide_id]["technology"])] += dataset["n_spots"][slide_id]
    per_tissue = run_sql(spark, lake["dir"], queries.SPOTS_PER_TISSUE_AND_TECHNOLOGY).collect()
    assert {(r.tissue, r.technology): r.spots for r in per_tissue} == dict(expected)

    top = run_sql(spark, lake["dir"], queries.TOP_GENES_OF_SLIDE.format(slide_id="visium_1", limit=5)).collect()
    truth = landed_truth(dataset["root"], "visium_1")
    sums = np.asarray(truth.counts.sum(axis=0)).ravel()
    expected_top = sorted(zip(sums.tolist(), truth.gene_symbols), key=lambda t: -t[0])[:5]
    assert [r.total_counts for r in top] == [total for total, _ in expected_top]
    assert {r.symbol for r in top if r.total_counts > expected_top[-1][0]} <= {s for _, s in expected_top}

    labels = run_sql(spark, lake["dir"], queries.LABEL_COUNTS).collect()
    spots = tables.read_table(lake["dir"], "spots", columns=["label"])["label"].to_pylist()
    assert {r.label: r.spots for r in labels} == dict(Counter(x for x in spots if x is not None))
    label = labels[0].label
    tiles = run_sql(spark, lake["dir"], queries.TILES_OF_LABEL.format(label=label, limit=1000)).collect()
    assert len(tiles) == labels[0].spots and all(t.tile_bytes > 0 for t in tiles)


def test_tables_read_back_by_delta_rs_and_by_spark(spark, lake):
    for name in ("slides", "spots", "expression", "genes", "annotations", "rejects"):
        uri = tables.table_uri(lake["dir"], name)
        by_delta_rs = DeltaTable(uri).to_pyarrow_table()
        by_spark = read_table(spark, lake["dir"], name)
        assert by_spark.count() == by_delta_rs.num_rows, name
        assert set(by_spark.columns) == set(by_delta_rs.column_names), name


def test_giant_image_is_cut_region_by_region_within_the_memory_budget(spark, tmp_path):
    """A slide whose decoded image exceeds the budget: TIFF regions, several tasks, peak under the budget."""
    root, lake_dir = str(tmp_path / "raw"), str(tmp_path / "lake")
    truth = generate_stimage_slide(root, StimageSpec("giant_1", "Visium", 600, 6000, 120, image_format="tiff"), seed=3)
    decoded = truth.image_width * truth.image_height * 3
    budget = decoded // 4
    options = IngestOptions(source=root, lake=lake_dir, encoding="png", memory_budget=budget,
                            max_spots_per_task=150)
    report = ingest(spark, options)
    assert report.landed == ["giant_1"], report.rejected
    assert report.tasks["units"] >= 4
    assert 0 < report.peak_decoded_bytes["giant_1"] <= budget
    rows = tables.read_table(lake_dir, "spots", columns=["spot_id", "tile"]).to_pylist()
    assert len(rows) == len(truth)
    index = {spot: i for i, spot in enumerate(truth.spot_id.tolist())}
    for row in rows[::10]:
        tile = cv2.imdecode(np.frombuffer(row["tile"], np.uint8), cv2.IMREAD_COLOR)
        dy, dx = locate_marker(tile, int(truth.code[index[row["spot_id"]]]))
        assert abs(dy) <= 1 and abs(dx) <= 1


def test_giant_png_is_decoded_strip_by_strip_within_the_memory_budget(spark, tmp_path):
    root, lake_dir = str(tmp_path / "raw"), str(tmp_path / "lake")
    truth = generate_stimage_slide(root, StimageSpec("giant_png", "Visium", 400, 5000, 100, image_format="png"), seed=4)
    budget = truth.image_width * truth.image_height * 3 // 3
    report = ingest(spark, IngestOptions(source=root, lake=lake_dir, encoding="jpeg", memory_budget=budget))
    assert report.landed == ["giant_png"], report.rejected
    assert 0 < report.peak_decoded_bytes["giant_png"] <= budget
    assert tables.read_table(lake_dir, "spots", columns=["spot_id"]).num_rows == len(truth)


def test_rerun_replaces_rows_and_never_duplicates(spark, lake, dataset):
    """Runs last in this module: re-ingests the same source into the same lake."""
    before = {name: tables.read_table(lake["dir"], name).num_rows
              for name in ("slides", "spots", "expression", "genes", "annotations")}
    versions = dict(lake["report"].versions)
    report = ingest(spark, lake["options"])
    assert report.landed == lake["report"].landed
    after = {name: tables.read_table(lake["dir"], name).num_rows for name in before}
    assert after == before
    assert all(report.versions[name] > versions[name] for name in ("spots", "expression", "slides"))
    rejects = tables.read_table(lake["dir"], "rejects", columns=["run_id"])["run_id"].to_pylist()
    assert Counter(rejects)[report.run_id] == Counter(rejects)[lake["report"].run_id]


def test_rerun_after_the_source_lost_a_slide_keeps_other_slides(spark, dataset, tmp_path):
    """Ingesting one slide alone does not touch the rows of the others."""
    lake_dir = str(tmp_path / "lake")
    manifest = os.path.join(dataset["root"], "manifest.csv")
    ingest(spark, IngestOptions(source=manifest, lake=lake_dir, layouts=("st",)))
    first = tables.read_table(lake_dir, "spots", columns=["slide_id"]).num_rows
    ingest(spark, IngestOptions(source=manifest, lake=lake_dir, layouts=("visium",)))
    spots = Counter(tables.read_table(lake_dir, "spots", columns=["slide_id"])["slide_id"].to_pylist())
    assert spots["st_1"] == first
    assert spots["visium_1"] == dataset["n_spots"]["visium_1"]


def test_a_lone_large_slide_is_split_so_every_core_gets_a_task(spark, tmp_path):
    """Two cores, one TIFF slide of 1,200 spots: its tiles are cut by two tasks, all spots land once."""
    root, lake_dir = str(tmp_path / "raw"), str(tmp_path / "lake")
    truth = generate_stimage_slide(root, StimageSpec("lone_1", "Visium", 1200, 4000, 80, image_format="tiff"), seed=5)
    report = ingest(spark, IngestOptions(source=root, lake=lake_dir))
    assert report.landed == ["lone_1"]
    assert report.tasks["units"] >= spark.sparkContext.defaultParallelism + 1  # tiles split + expression
    spots = tables.read_table(lake_dir, "spots", columns=["spot_id"])["spot_id"].to_pylist()
    assert sorted(spots) == sorted(truth.spot_id.tolist())
    assert len(tables.active_files(lake_dir, "spots")) >= 2


@pytest.mark.slow
def test_full_size_dataset_of_all_layouts_lands_within_the_default_budget(spark, tmp_path):
    """Benchmark-size slides (Visium 4,992 spots on ~20k px, VisiumHD 160k bins, ST, the release):
    every slide lands with all its spots and exact totals, within the default 4 GB task budget."""
    root, lake_dir = str(tmp_path / "raw"), str(tmp_path / "lake")
    summary = generate(root, size="full", seed=1)
    report = ingest(spark, IngestOptions(source=os.path.join(root, "manifest.csv"), lake=lake_dir))
    slides = sorted(s for ids in summary["slides"].values() for s in ids)
    assert report.landed == slides and not report.rejected
    assert max(report.peak_decoded_bytes.values()) <= IngestOptions(source="", lake="").memory_budget
    spots = Counter(tables.read_table(lake_dir, "spots", columns=["slide_id"])["slide_id"].to_pylist())
    assert dict(spots) == {s: summary["n_spots"][s] for s in slides}
    assert spots["visiumhd_1"] >= 100_000
    expression = tables.read_table(lake_dir, "expression", columns=["slide_id", "total_counts"])
    for slide_id in slides:
        truth = landed_truth(root, slide_id)
        mine = pc.sum(expression.filter(pc.equal(expression["slide_id"], slide_id))["total_counts"]).as_py()
        assert mine == int(truth.counts.sum()), slide_id
