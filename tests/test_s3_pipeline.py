"""The whole product on a real S3 server (SeaweedFS on loopback): raw slides in a bucket -> ingest ->
Delta tables in the bucket -> SQL without s3a jars -> Petastorm batches from the bucket; concurrent
jobs; the server restarted in the middle of a run."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from deltalake import DeltaTable

from stlake.ingestion.driver import CommitFailed, ingest
from stlake.ingestion.options import IngestOptions
from stlake.lake import storage, tables
from stlake.sql import run_sql, table_route
from stlake.synth import CORRUPT_SLIDES

DATA_TABLES = ("slides", "spots", "expression", "annotations")


@pytest.fixture(scope="module")
def local_dataset(synthetic_dataset) -> dict:
    return synthetic_dataset


def valid_slides(dataset: dict) -> list[str]:
    return sorted(s for ids in dataset["slides"].values() for s in ids)


def row_counts(lake: str) -> dict[str, Counter]:
    """Rows per slide of each data table, read by delta-rs (its current snapshot)."""
    counts = {}
    for name in DATA_TABLES:
        table = tables.open_table(lake, name)  # a DeltaTable (delta-rs); None when no slide had such rows
        rows = table.to_pyarrow_table(columns=["slide_id"])["slide_id"].to_pylist() if table else []
        counts[name] = Counter(rows)
    return counts


def assert_no_duplicate_spots(lake: str) -> None:
    for name in ("spots", "expression"):
        rows = tables.read_table(lake, name, columns=["slide_id", "spot_id"])
        keys = list(zip(rows["slide_id"].to_pylist(), rows["spot_id"].to_pylist()))
        assert len(keys) == len(set(keys)), name


def test_s3_raw_slides_to_s3_lake_to_sql_to_petastorm(spark, s3_env, raw_uri, local_dataset):
    lake = "s3://lake/e2e"
    report = ingest(spark, IngestOptions(source=f"{raw_uri}/manifest.csv", lake=lake))
    assert report.landed == valid_slides(local_dataset)
    assert report.rejected == CORRUPT_SLIDES
    counts = row_counts(lake)
    assert dict(counts["spots"]) == {s: local_dataset["n_spots"][s] for s in report.landed}
    assert counts["expression"] == counts["spots"]
    assert_no_duplicate_spots(lake)
    assert all(not f.startswith("s3a") and f.startswith("s3://lake/e2e/") for f in tables.active_files(lake, "spots"))

    assert table_route(spark, lake) == "snapshot-pyarrow"
    per_tech = run_sql(spark, lake, "SELECT technology, COUNT(*) AS n FROM spots GROUP BY technology").collect()
    slides = {r["slide_id"]: r["technology"] for r in tables.read_table(lake, "slides").to_pylist()}
    expected = Counter()
    for slide_id, n in counts["spots"].items():
        expected[slides[slide_id]] += n
    assert {r.technology: r.n for r in per_tech} == dict(expected)
    reasons = run_sql(spark, lake, "SELECT slide_id, reason FROM rejects WHERE severity = 'error'").collect()
    assert {r.slide_id: r.reason for r in reasons} == CORRUPT_SLIDES

    from stlake.stream import StreamSpec, make_loader
    from stlake.stream.demo import ensure_pairs_and_panel
    panel = ensure_pairs_and_panel(lake, k=32, spark=spark)
    spec = StreamSpec(lake=lake, panel_name=panel, batch_size=128, image_size=32, normalize="log1p", seed=1)
    seen = []
    with make_loader(spec) as loader:
        assert all(f.startswith("s3://") for f in loader.files)
        for batch in loader:
            assert batch["expression"].shape[1] == 32
            seen += list(zip(batch["slide_id"], batch["spot_id"]))
    assert len(seen) == len(set(seen)) == sum(counts["spots"].values())


def test_two_jobs_committing_to_one_s3_lake_at_once_both_land(spark, s3_env, raw_uri, local_dataset):
    """Two ingest jobs (different slides, same tables) run concurrently: S3 conditional puts arbitrate."""
    lake = "s3://lake/concurrent"
    manifest = f"{raw_uri}/manifest.csv"
    reports, errors = {}, []

    def run(name: str, layouts: tuple[str, ...]) -> None:
        try:
            reports[name] = ingest(spark, IngestOptions(source=manifest, lake=lake, layouts=layouts))
        except Exception as error:  # surfaced below
            errors.append(error)

    jobs = [threading.Thread(target=run, args=("a", ("visium", "st"))),
            threading.Thread(target=run, args=("b", ("visiumhd",)))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=600)
    assert not errors, errors
    landed = sorted(reports["a"].landed + reports["b"].landed)
    assert landed == sorted(local_dataset["slides"]["visium"] + local_dataset["slides"]["st"]
                            + local_dataset["slides"]["visiumhd"])
    counts = row_counts(lake)
    assert dict(counts["spots"]) == {s: local_dataset["n_spots"][s] for s in landed}
    assert counts["expression"] == counts["spots"]
    assert_no_duplicate_spots(lake)
    history = DeltaTable(tables.table_uri(lake, "spots"), storage_options=storage.delta_storage_options()).history()
    assert len(history) == 2, "one commit per job, neither overwritten"


def test_server_restart_mid_run_fails_cleanly_and_a_rerun_lands_everything(spark, s3_env, raw_uri, local_dataset,
                                                                         monkeypatch):
    """The server goes away between two table commits: the job fails with a clear error, every table
    stays readable at a consistent version, and re-running the job lands every slide exactly once."""
    server = s3_env
    lake = "s3://lake/restart"
    options = IngestOptions(source=f"{raw_uri}/manifest.csv", lake=lake, layouts=("visium", "st"))
    original_commit = tables.commit

    def commit_with_outage(lake_uri, table_name, *args, **kwargs):
        if table_name == "spots":
            server.stop()
        return original_commit(lake_uri, table_name, *args, **kwargs)

    monkeypatch.setattr(tables, "commit", commit_with_outage)
    try:
        with pytest.raises(CommitFailed, match="committing table 'spots' failed") as failure:
            ingest(spark, options)
        assert failure.value.committed.keys() == {"genes", "expression", "annotations"}
    finally:
        monkeypatch.setattr(tables, "commit", original_commit)
        server.start()
    storage._s3_filesystem.cache_clear()

    # Readable and consistent: the commits before the outage landed whole, nothing after it did.
    assert tables.open_table(lake, "slides") is None, "slides land last, so no slide looks complete"
    for name in ("genes", "expression"):
        table = tables.open_table(lake, name)
        assert table is not None and table.version() == 0, name
        assert table.to_pyarrow_table().num_rows > 0
    assert tables.open_table(lake, "spots") is None

    report = ingest(spark, options)
    expected = sorted(local_dataset["slides"]["visium"] + local_dataset["slides"]["st"])
    assert report.landed == expected
    counts = row_counts(lake)
    assert dict(counts["spots"]) == {s: local_dataset["n_spots"][s] for s in expected}
    assert counts["expression"] == counts["spots"]
    assert_no_duplicate_spots(lake)


def test_delta_commits_on_s3_use_conditional_puts_never_unsafe_rename(s3_env):
    options = storage.delta_storage_options()
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in {k.upper() for k in options}
    assert options.get("AWS_ENDPOINT_URL", "").startswith("http://127.0.0.1")
