"""Spark Connect: ingest -> SQL -> pairs -> HVG panel -> stream through a separately started Connect server.

One server for the module (``stlake.testing.connect``, its own JVM, stopped by pid). The ingest runs
as a user runs it (``stlake ingest --remote sc://...``, a client process without a JVM), the rest
through an in-process Connect session; every result must equal what the classic session computes
from the same slides (the reliability corpus's clean baseline lake: five good slides, every layout).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import corpus
from stlake.derived import hvg
from stlake.derived.pairs import build_pairs, pairs_frame
from stlake.lake import schemas, tables
from stlake.sql import queries, read_table, register_views, table_route
from stlake.stream import StreamSpec, make_loader

SQL = {"per_tissue": queries.SPOTS_PER_TISSUE_AND_TECHNOLOGY, "labels": queries.LABEL_COUNTS,
       "top_genes": queries.TOP_GENES_OF_SLIDE.format(slide_id="visium_1", limit=100000),
       "tiles": queries.TILES_OF_LABEL.format(label="tumor", limit=100000)}
#: Ingested tables compared row for row with the classic run (``rejects`` holds the runs' warnings).
INGESTED = ("genes", "slides", "spots", "expression", "annotations", "rejects")


def comparable(table: pa.Table) -> pa.Table:
    """``table`` without the columns that differ between runs, sorted by its keys."""
    table = table.drop([c for c in corpus.RUN_COLUMNS if c in table.column_names])
    keys = [c for c in ("slide_id", "spot_id", "gene_id", "panel", "species", "rank", "reason")
            if c in table.column_names]
    return table.sort_by([(c, "ascending") for c in keys])


def sql_rows(spark, lake: str) -> dict[str, list[tuple]]:
    """The README queries' results, rows sorted."""
    register_views(spark, lake)
    return {name: sorted(tuple(row) for row in spark.sql(query).collect()) for name, query in SQL.items()}


@pytest.fixture(scope="module")
def classic(spark, corpus_baseline) -> dict:
    """What the classic session computes from the baseline lake (read only: the lake is shared)."""
    lake = str(corpus_baseline)
    return {"lake": lake, "sql": sql_rows(spark, lake),
            "pairs": comparable(pa.Table.from_pylist(pairs_frame(spark, lake).toArrow().to_pylist(), schemas.PAIRS)),
            "hvg": hvg.rank_hvg(hvg.gene_stats(spark, lake), k=20)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Spark Connect server (local[2,4]) for the module."""
    from stlake.testing.connect import ConnectServer
    with ConnectServer(tmp_path_factory.mktemp("connect")) as started:
        yield started


@pytest.fixture(scope="module")
def connect(classic, server):
    """A Spark Connect session to ``server``; pyspark's process-wide Connect switch is undone afterwards."""
    from stlake.spark import spark_session
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")  # set by spark_session; restored (unset) at the end
        session = spark_session("stlake-connect-tests", remote=server.url)
        try:
            yield session
        finally:
            session.stop()


@pytest.fixture(scope="module")
def connect_lake(server, synthetic_dataset, tmp_path_factory) -> dict:
    """``stlake ingest --remote sc://...`` of the baseline's slides, as a separate client process."""
    root = tmp_path_factory.mktemp("connect_lake")
    manifest = corpus.write_manifest(root / "manifest.csv", corpus.good_rows(synthetic_dataset))
    lake = str(root / "lake")
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE")}
    done = subprocess.run([sys.executable, "-m", "stlake.cli", "ingest", "--remote", server.url, "--json",
                           "--source", str(manifest), "--lake", lake], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\nserver log:\n{server.log_tail()}"
    return {"lake": lake, "report": json.loads(done.stdout)}


def test_ingest_through_a_connect_server_lands_the_rows_of_a_classic_run(connect_lake, classic):
    assert connect_lake["report"]["landed"] == sorted(corpus.GOOD_SLIDES)
    assert connect_lake["report"]["tasks"]["plan"] == len(corpus.GOOD_SLIDES)
    for name in INGESTED:
        ours, theirs = (comparable(tables.read_table(lake, name)) for lake in (connect_lake["lake"], classic["lake"]))
        assert ours.num_rows and ours.equals(theirs), name


def test_connect_session_has_no_jvm_yet_probes_the_server(connect):
    from stlake.spark import default_parallelism, has_delta_spark, has_jvm_class, is_connect, is_local
    assert is_connect(connect) and is_local(connect)
    assert default_parallelism(connect) == 2  # the server's local[2,4]
    assert has_jvm_class(connect, "org.apache.spark.sql.SparkSession") and not has_delta_spark(connect)


def test_sql_over_connect_answers_as_classic(connect, connect_lake, classic):
    lake = connect_lake["lake"]
    assert table_route(connect, lake) == "snapshot-parquet"
    assert sql_rows(connect, lake) == classic["sql"]
    by_source = read_table(connect, lake, "spots", route="snapshot-pyarrow")  # the Python data source
    assert by_source.count() == tables.read_table(lake, "spots", columns=["slide_id"]).num_rows


def test_pairs_and_hvg_over_connect_equal_classic_and_stream(connect, connect_lake, classic):
    lake = connect_lake["lake"]
    version = build_pairs(connect, lake, run_id="c1")
    assert build_pairs(connect, lake, run_id="c2") == version + 1  # rebuilt, never duplicated
    assert comparable(tables.read_table(lake, "pairs")).to_pylist() == classic["pairs"].to_pylist()
    actions = tables.add_actions(tables.open_table(lake, "pairs"))
    assert actions.column("min.slide_id").to_pylist() == actions.column("max.slide_id").to_pylist()  # a slide a file

    panel = hvg.compute_hvg(connect, lake, k=20, name="hvg20").to_pandas()
    expected = classic["hvg"]
    columns = ["species", "gene_id", "rank"]
    assert panel[columns].values.tolist() == expected[columns].values.tolist()
    assert np.allclose(panel["score"], expected["score"])  # sums of floats: the order of addition may differ

    spec = StreamSpec(lake=lake, panel_name="hvg20", image_size=32, batch_size=16, shuffle=False, num_epochs=1)
    with make_loader(spec) as loader:
        batches, n_genes = list(loader), loader.panel.n_genes
    keys = [k for b in batches for k in zip(b["slide_id"], b["spot_id"])]
    assert len(keys) == len(set(keys)) == classic["pairs"].num_rows
    assert n_genes and batches[0]["expression"].shape == (16, n_genes)


@pytest.mark.slow
def test_spark_remote_local_cli_lands_the_rows_of_a_classic_run(synthetic_dataset, classic, tmp_path):
    """``SPARK_REMOTE=local[2] stlake ingest``: pyspark starts a local Connect server in the client process."""
    manifest = corpus.write_manifest(tmp_path / "manifest.csv", corpus.good_rows(synthetic_dataset))
    lake = str(tmp_path / "lake")
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_MODE_ENABLED"}
    done = subprocess.run([sys.executable, "-m", "stlake.cli", "ingest", "--source", str(manifest), "--lake", lake],
                          capture_output=True, text=True, env={**env, "SPARK_REMOTE": "local[2]"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in INGESTED:
        assert comparable(tables.read_table(lake, name)).equals(comparable(tables.read_table(classic["lake"], name)))


def test_master_and_remote_together_end_in_one_line(monkeypatch, capsys, tmp_path):
    from stlake.cli import EXIT_USAGE, main
    from stlake.testing.lake import write_genes
    write_genes(str(tmp_path), ["human"])  # a lake, so that the session is what fails
    monkeypatch.setenv("SPARK_REMOTE", "sc://127.0.0.1:1")
    code = main(["sql", "SELECT 1", "--lake", str(tmp_path), "--master", "local[1]"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and len(err.splitlines()) <= 2 and "choose one" in err
