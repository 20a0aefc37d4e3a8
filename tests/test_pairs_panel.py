"""Spark jobs of the streaming layer: the ``pairs`` join and the highly-variable-gene panel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stlake.derived import hvg as panel_mod
from stlake.derived.pairs import build_pairs
from stlake.lake import schemas, tables
from stlake.stream import StreamSpec, make_loader, resolve_panel
from stlake.testing import lake as tl

N_GENES = 40
SLIDES = [tl.FakeSlide("p0", 0, "Visium", base_spots=30), tl.FakeSlide("p1", 1, "ST", tissue="liver", base_spots=30),
          tl.FakeSlide("p2", 2, "Visium", species="mouse", base_spots=30)]
PLANTED = 17  # gene index with a planted bimodal expression in every slide


def planted_counts(n: int) -> list[int]:
    return [60 if j % 2 else 0 for j in range(n)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("lake"))
    extra = {s.slide_id: {PLANTED: planted_counts(s.n_spots)} for s in SLIDES}
    tl.write_sources(lake, SLIDES, N_GENES, extra_counts=extra)
    return lake


def pair_keys(lake: str) -> list[tuple[str, str]]:
    rows = tables.read_table(lake, "pairs", columns=["slide_id", "spot_id"])
    return list(zip(rows.column("slide_id").to_pylist(), rows.column("spot_id").to_pylist()))


def test_build_pairs_joins_spots_expression_slides_and_reruns_without_duplicates(spark, lake):
    version = build_pairs(spark, lake, run_id="b1")
    rows = tables.read_table(lake, "pairs").sort_by([("slide_id", "ascending"), ("spot_id", "ascending")])
    assert rows.schema.equals(schemas.PAIRS)
    sources = {s.slide_id: tl.source_tables(s, N_GENES, extra_counts={PLANTED: planted_counts(s.n_spots)})
               for s in SLIDES}
    assert rows.num_rows == sum(s.n_spots for s in SLIDES) == len(set(pair_keys(lake)))
    by_slide = {s.slide_id: s for s in SLIDES}
    for row in rows.slice(0, rows.num_rows).to_pylist()[::7]:
        slide = by_slide[row["slide_id"]]
        spot = [r for r in sources[slide.slide_id]["spots"].to_pylist() if r["spot_id"] == row["spot_id"]][0]
        expr = [r for r in sources[slide.slide_id]["expression"].to_pylist() if r["spot_id"] == row["spot_id"]][0]
        assert (row["species"], row["tissue"], row["technology"]) == (slide.species, slide.tissue, slide.technology)
        assert row["tile"] == spot["tile"] and row["label"] == spot["label"]
        assert abs(row["tissue_fraction"] - spot["tissue_fraction"]) < 1e-6
        assert row["gene_ids"] == expr["gene_ids"] and row["counts"] == expr["counts"]
        assert row["total_counts"] == expr["total_counts"]
    actions = tables.add_actions(tables.open_table(lake, "pairs"))
    lows, highs = actions.column("min.slide_id").to_pylist(), actions.column("max.slide_id").to_pylist()
    assert lows == highs and sorted(lows) == sorted(s.slide_id for s in SLIDES)  # one slide per file

    assert build_pairs(spark, lake, run_id="b2") == version + 1  # full rebuild: same rows, no duplicates
    assert len(pair_keys(lake)) == len(set(pair_keys(lake))) == rows.num_rows

    again = tl.FakeSlide("p1", 1, "ST", tissue="liver", base_spots=30, variant=2)  # re-ingested: 32 spots
    tl.write_sources(lake, [again], N_GENES, run_id="r2", extra_counts={"p1": {PLANTED: planted_counts(32)}})
    build_pairs(spark, lake, run_id="b3", slide_ids=["p1"])
    keys = pair_keys(lake)
    assert len(keys) == len(set(keys)) == 30 + 32 + 30
    assert sum(1 for s, _ in keys if s == "p1") == 32
    p1 = tables.read_table(lake, "pairs").filter(pc.equal(pc.field("slide_id"), "p1"))
    assert set(p1.column("total_counts").to_pylist()) == set(
        tl.source_tables(again, N_GENES, extra_counts={PLANTED: planted_counts(32)})["expression"]
        .column("total_counts").to_pylist())


def test_gene_statistics_include_zeros(spark, lake):
    stats = panel_mod.gene_stats(spark, lake)
    human = stats[stats["species"] == "human"]
    mean, var = panel_mod.mean_var(human)
    rows = tables.read_table(lake, "expression")
    slides = {s["slide_id"] for s in tables.read_table(lake, "slides").to_pylist() if s["species"] == "human"}
    ids = list(human["gene_id"])
    dense = np.zeros((0, len(ids)))
    for row in rows.to_pylist():
        if row["slide_id"] in slides:
            y = np.zeros(len(ids))
            for g, c in zip(row["gene_ids"], row["counts"]):
                if g in ids:
                    y[ids.index(g)] = np.log1p(c / row["total_counts"] * 1e4)
            dense = np.vstack([dense, y])
    assert np.allclose(mean, dense.mean(0)) and np.allclose(var, dense.var(0, ddof=1))


def test_compute_hvg_ranks_the_planted_gene_first_and_replaces_the_panel(spark, lake):
    rows = panel_mod.compute_hvg(spark, lake, k=5)
    assert set(rows.column("panel").to_pylist()) == {"hvg5"}
    for species in ("human", "mouse"):
        mine = [r for r in rows.to_pylist() if r["species"] == species]
        assert [r["rank"] for r in mine] == [1, 2, 3, 4, 5]
        assert mine[0]["gene_id"] == tl.gene_ids(species, N_GENES)[PLANTED]
        assert mine[0]["symbol"] == f"GENE{PLANTED:03d}"
    panel_mod.compute_hvg(spark, lake, k=5)  # recomputed: the panel's rows are replaced, not appended
    stored = tables.read_table(lake, "gene_panels")
    assert stored.num_rows == 10 and panel_mod.panel_names(lake) == ["hvg5"]
    gene_ids, symbols = resolve_panel(lake, StreamSpec(lake=lake, panel_name="hvg5", species=["human"]))
    assert symbols[0] == f"GENE{PLANTED:03d}" and len(gene_ids) == 5
    with make_loader(StreamSpec(lake=lake, panel_name="hvg5", species=["human"], batch_size=16)) as loader:
        batch = next(iter(loader))
    assert batch["expression"].shape == (16, 5) and set(batch["slide_id"]) <= {"p0", "p1"}


def test_panel_rows_keep_a_missing_species_null():
    ranked = pd.DataFrame({"species": ["human", None], "gene_id": [1, 2], "rank": [1, 1], "score": [2.0, 1.0]})
    genes = schemas.GENES.empty_table()
    assert panel_mod.panel_rows("p", ranked, genes).column("species").to_pylist() == ["human", None]


def test_writer_starts_a_file_at_every_slide_change(tmp_path):
    """Rows sorted by slide within a partition: one file per run of a slide, however batches cut them."""
    from stlake.sql.writer import _writer, slide_runs
    rows = pa.concat_tables([tl.pairs_rows(tl.FakeSlide(sid, i, base_spots=4), N_GENES)
                             for i, sid in enumerate(["s0", "s1", "s2"])]).combine_chunks()  # 4 + 4 + 4 rows
    batches = rows.to_batches(max_chunksize=6)  # s0 s0 s0 s0 s1 s1 | s1 s1 s2 s2 s2 s2
    assert [(sid, run.num_rows) for sid, run in slide_runs(batches[0])] == [("s0", 4), ("s1", 2)]
    files = next(_writer(str(tmp_path), "pairs", "w")(iter(batches))).to_pylist()
    assert [(f["slide_id"], f["num_records"]) for f in files] == [("s0", 4), ("s1", 4), ("s2", 4)]


def test_rank_hvg_prefers_dispersion_within_mean_bins():
    rng = np.random.default_rng(0)
    n, genes = 200, 60
    means = np.linspace(0.5, 4, genes)
    data = rng.normal(means, 0.1 * np.sqrt(means), (n, genes)).clip(0)
    data[:, 33] = np.where(np.arange(n) % 2, 2 * means[33], 0)  # same mean, huge variance
    stats = pd.DataFrame({"species": "human", "gene_id": np.arange(genes), "n": n, "n_nonzero": n,
                          "s1": data.sum(0), "s2": (data ** 2).sum(0)})
    ranked = panel_mod.rank_hvg(stats, k=3)
    assert ranked["gene_id"].iloc[0] == 33 and list(ranked["rank"]) == [1, 2, 3]


def test_panel_labels_are_symbols_or_ensembl_ids_never_hashed_ids():
    rows = pa.table({"gene_id": [1, 2, 3], "symbol": ["TP53", None, None], "ensembl_id": ["ENSG1", "ENSG2", None],
                     "gene_key": ["TP53", "ENSG2", "KEY3"]})
    ranked = pd.DataFrame({"species": ["human"] * 3, "gene_id": [1, 2, 3], "rank": [1, 2, 3], "score": [3.0, 2.0, 1.0]})
    assert panel_mod.panel_rows("p", ranked, rows).column("symbol").to_pylist() == ["TP53", "ENSG2", "KEY3"]


@pytest.mark.parametrize("table", ["spots", "expression", "slides"])
def test_every_sql_route_reads_the_snapshot_rows(spark, lake, table):
    """Spark's Parquet reader, the pyarrow route of this Spark version, and ``mapInArrow`` over the file list
    (Spark 3.5's pyarrow route, also on Spark 4) read the same rows as delta-rs."""
    from stlake.sql import read_table
    from stlake.sql.filelist import read_files_by_index
    columns = [c for c in ("slide_id", "spot_id", "total_counts", "n_spots") if c in schemas.TABLES[table].names]
    expected = sorted(zip(*[tables.read_table(lake, table, columns=columns)[c].to_pylist() for c in columns]))
    frames = {route: read_table(spark, lake, table, route) for route in ("snapshot-parquet", "snapshot-pyarrow")}
    frames["mapInArrow"] = read_files_by_index(spark, tables.active_files(lake, table), schemas.TABLES[table])
    for route, frame in frames.items():
        assert sorted(tuple(row) for row in frame.select(*columns).collect()) == expected, route
