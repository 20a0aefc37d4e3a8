"""The shipped executor environment (``make dist``) on the standalone cluster.

``spark-submit --conf spark.archives=dist/stlake-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``
runs the S3 ingest with executors whose Python, stlake and dependencies come only from the archive Spark
unpacked for them: probe tasks record ``stlake.__file__``, ``sys.executable``, ``sys.prefix`` and
``PYTHONPATH`` on the executors, and none of them points into the source tree or the dev venv.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_cluster import (
    SOME_LAYOUTS,
    app_id_of,
    driver_env,
    event_log_conf,
    result_json,
    row_counts,
    run_driver,
    some_slides,
    stlake_source_root,
    tasks_per_worker,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """``dist/stlake-env.tar.gz`` (``make dist``; built into a temporary folder when it is missing)."""
    built = REPO / "dist" / "stlake-env.tar.gz"
    if built.exists():
        return built
    folder = tmp_path_factory.mktemp("dist")
    out = folder / "stlake-env.tar.gz"
    subprocess.run([sys.executable, str(REPO / "infra" / "dist" / "build_env.py"), "--out", str(out),
                    "--work", str(folder / "env")], check=True, timeout=BUILD_TIMEOUT_S)
    return out


def test_archive_holds_stlake_and_its_pins_but_not_spark_or_training(archive):
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    tops = {n.split("/")[3] for n in names if n.startswith("lib/python3") and n.count("/") >= 4}
    assert {"stlake", "deltalake", "pyarrow", "cv2", "numpy", "pandas", "scipy", "h5py"} <= tops
    assert not tops & {"pyspark", "py4j", "torch", "petastorm", "jupyter", "ipykernel", "matplotlib", "pytest"}
    assert "bin/python" in names and "bin/activate" in names
    size_mib = archive.stat().st_size / 2**20
    print(f"{archive}: {size_mib:.0f} MiB")
    assert size_mib < 400


@pytest.fixture(scope="module")
def archive_run(archive, spark_cluster, s3_env_module, raw_uri_module, tmp_path_factory) -> dict:
    """``spark-submit`` of ``cluster_job.py`` (ingest + probe) with the archive as the executors' Python."""
    import pyspark
    folder = tmp_path_factory.mktemp("archive_run")
    conf = {**event_log_conf(folder), "spark.archives": f"{archive}#env", "spark.pyspark.python": "./env/bin/python",
            "spark.pyspark.driver.python": sys.executable}
    env = driver_env(folder, s3_env_module.env(), conf)
    env.pop("PYSPARK_PYTHON")  # the executors' Python is spark.pyspark.python's
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    command = [submit, "--master", spark_cluster.master_url, str(REPO / "tests" / "cluster_job.py"),
               "--source", f"{raw_uri_module}/manifest.csv", "--lake", "s3://lake/archive", "--probe", "4",
               *[arg for layout in SOME_LAYOUTS for arg in ("--layout", layout)]]
    run = run_driver(command, env, folder, "submit")
    assert run["code"] == 0, run["stderr"][-4000:]
    return {**result_json(run["stdout"]), "folder": folder}


def test_archive_ingest_lands_every_slide(archive_run, synthetic_dataset, s3_env):
    report = archive_run["report"]
    assert report["landed"] == some_slides(synthetic_dataset)
    assert report["rejected"] == {}
    counts = row_counts("s3://lake/archive")
    assert dict(counts["spots"]) == {s: synthetic_dataset["n_spots"][s] for s in report["landed"]}


def test_archive_executors_import_stlake_from_the_archive(archive_run, spark_cluster):
    source_tree, dev_venv = stlake_source_root(), os.path.realpath(sys.prefix)
    probe = archive_run["probe"]
    assert len(probe) == 4
    for task in probe:
        python, prefix, module = task["python"], os.path.realpath(task["prefix"]), os.path.realpath(task["stlake"])
        assert python == os.path.join(task["cwd"], "env", "bin", "python"), task  # bin/python links to the base
        for path in (python, prefix, module):
            assert path.startswith(spark_cluster.directory + os.sep), task  # unpacked in a worker's folders
            assert not path.startswith((source_tree + os.sep, dev_venv + os.sep)), task
        assert module.startswith(prefix + os.sep), task
        for entry in filter(None, task["pythonpath"].split(os.pathsep)):
            # only the Spark installation's own Python libraries (pyspark.zip, py4j) and jars
            assert entry.endswith((".zip", ".jar")), task
            assert not entry.startswith(source_tree + os.sep), task
    print(f"an executor's view: {probe[0]}")


def test_archive_tasks_ran_on_both_workers(archive_run, spark_cluster):
    app = app_id_of(archive_run["folder"], "stlake-cluster-job")
    per_worker = tasks_per_worker(spark_cluster, archive_run["folder"], app)
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
