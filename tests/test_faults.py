"""Faults during an ingest: task retries on every master, and a Python worker killed mid-task.

The kill comes from outside (no test hook in the product): the ingest runs as ``stlake ingest`` in a
subprocess, and once its units stage is running, a forked PySpark worker seen running a task is killed
with SIGKILL (again, at most twice more, when Spark reports no failed attempt: the worker was between
tasks). The retried task must land everything exactly as a clean run (``corpus_baseline``), with the
killed attempt's files, if it wrote any, left outside the Delta snapshot.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import psutil
import pyarrow.parquet as pq
import pytest

import corpus
from stlake import spark as spark_module
from stlake.lake import tables
from stlake.spark import (
    LOCAL_DEFAULTS,
    TASK_ATTEMPTS,
    choose_master,
    is_local_master,
    task_retry_conf,
    with_task_retries,
)

UNIT_TABLES = ("spots", "annotations", "expression")
# part-<token of the writer's tag>-<random>.zstd.parquet (tables.write_data_file): a retried write has the
# same token as its failed attempt
DATA_FILE = re.compile(r"part-(?P<token>.+)-[0-9a-f]{12}\.zstd\.parquet")
INGEST_TIMEOUT_S = 240


# ---------------------------------------------------------------- master strings (no Spark)

@pytest.mark.parametrize("master, expected", [
    ("local", "local[1,4]"),
    ("local[2]", "local[2,4]"),
    ("local[*]", "local[*,4]"),
    ("local[2,1]", "local[2,1]"),  # an explicit count is the user's choice
    ("local[*, 8]", "local[*, 8]"),
    ("local-cluster[2,1,1024]", "local-cluster[2,1,1024]"),  # executors: spark.task.maxFailures applies
    ("spark://127.0.0.1:7077", "spark://127.0.0.1:7077"),
    ("yarn", "yarn"),
])
def test_local_masters_get_a_failure_count(master, expected):
    assert with_task_retries(master) == expected


def test_local_master_forms():
    assert all(is_local_master(m) for m in ("local", "local[3]", "local[*]", "local[3,2]", "local[*, 4]"))
    assert not any(is_local_master(m) for m in ("local-cluster[2,1,1024]", "yarn", "k8s://h", "localhost", ""))


def test_cluster_masters_get_max_failures_unless_set():
    assert task_retry_conf("yarn") == {"spark.task.maxFailures": str(TASK_ATTEMPTS)}
    assert task_retry_conf("spark://h:7077", ["spark.executor.cores"]) == {"spark.task.maxFailures": "4"}
    assert task_retry_conf("yarn", ["spark.task.maxFailures"]) == {}
    assert task_retry_conf("local[*,4]") == {}  # Spark ignores it for local masters


def test_master_precedence(monkeypatch):
    monkeypatch.delenv("STLAKE_SPARK_MASTER", raising=False)
    assert choose_master(None, None) == "local[*,4]"
    monkeypatch.setenv("STLAKE_SPARK_MASTER", "local[3]")
    assert choose_master(None, None) == "local[3,4]"
    assert choose_master(None, "yarn") == "yarn"
    assert choose_master("local[2]", "yarn") == "local[2,4]"
    assert choose_master("local[2,1]", None) == "local[2,1]"


# ---------------------------------------------------------------- spark_session's builder (no Spark)

class FakeBuilder:
    """Records what ``spark_session`` asks of ``SparkSession.builder``."""

    def __init__(self):
        self.master_set: Optional[str] = None
        self.conf: dict[str, str] = {}

    def appName(self, name):  # noqa: N802 (pyspark's name)
        return self

    def master(self, master):
        self.master_set = master
        return self

    def config(self, key, value):
        self.conf[key] = value
        return self

    def getOrCreate(self):  # noqa: N802 (pyspark's name)
        return SimpleNamespace(sparkContext=SimpleNamespace(setLogLevel=lambda level: None))


def built(monkeypatch, submitted: dict[str, str], **kwargs) -> FakeBuilder:
    """The builder calls of ``spark_session(**kwargs)`` in a process that spark-submit gave ``submitted``."""
    builder = FakeBuilder()
    monkeypatch.setattr(spark_module, "SparkSession", SimpleNamespace(builder=builder))
    monkeypatch.setattr(spark_module, "submitted_conf", lambda: dict(submitted))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    monkeypatch.delenv("STLAKE_SPARK_MASTER", raising=False)
    spark_module.spark_session(**kwargs)
    return builder


def test_session_defaults_to_local_with_retries(monkeypatch):
    builder = built(monkeypatch, {})
    assert builder.master_set == "local[*,4]"
    assert "spark.driver.memory" in builder.conf and "spark.task.maxFailures" not in builder.conf


def test_session_explicit_local_master(monkeypatch):
    assert built(monkeypatch, {}, master="local[2]").master_set == "local[2,4]"
    assert built(monkeypatch, {}, master="local[2,1]").master_set == "local[2,1]"


def test_session_keeps_a_submitted_cluster_master(monkeypatch):
    builder = built(monkeypatch, {"spark.master": "yarn"})
    assert builder.master_set is None and "spark.driver.memory" not in builder.conf
    assert builder.conf["spark.task.maxFailures"] == "4"


def test_session_keeps_a_submitted_or_given_max_failures(monkeypatch):
    submitted = {"spark.master": "yarn", "spark.task.maxFailures": "8"}
    assert "spark.task.maxFailures" not in built(monkeypatch, submitted).conf
    given = built(monkeypatch, {}, master="spark://h:7077", conf={"spark.task.maxFailures": "2"})
    assert given.conf["spark.task.maxFailures"] == "2"


def test_session_submitted_local_master_gets_retries(monkeypatch):
    builder = built(monkeypatch, {"spark.master": "local[*]"})
    assert builder.master_set == "local[*,4]" and "spark.driver.memory" not in builder.conf


def test_session_fixture_retries_tasks(spark):
    assert spark.sparkContext.master == "local[2,4]"


SUBMITTED_JOB = """
from stlake.spark import spark_session
session = spark_session("stlake-submit-check")
print("MASTER=" + session.sparkContext.master)
session.stop()
"""


@pytest.mark.slow
def test_spark_submit_master_is_kept_with_retries(tmp_path):
    """A job under spark-submit keeps its master (it once became local[*]) and gets a failure count."""
    import pyspark
    script = tmp_path / "job.py"
    script.write_text(SUBMITTED_JOB)
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("STLAKE_SPARK_MASTER", None)
    done = subprocess.run([submit, "--master", "local[1]", str(script)], capture_output=True, text=True, env=env,
                          timeout=INGEST_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "MASTER=local[1,4]" in done.stdout.splitlines(), done.stdout


# ---------------------------------------------------------------- a Python worker killed mid-task

#: PySpark's worker daemon module, and stlake's (``spark.python.daemon.module``, see stlake/workerdaemon.py).
DAEMON_MODULES = ("pyspark.daemon", LOCAL_DEFAULTS["spark.python.daemon.module"])


def is_daemon(process: psutil.Process) -> bool:
    """A Python worker daemon process, or a worker it forked (same command line)."""
    command = " ".join(process.cmdline())
    return any(f"-m {module}" in command for module in DAEMON_MODULES)


def python_workers(root: psutil.Process) -> list[psutil.Process]:
    """The forked PySpark workers below ``root``: children of a daemon that are daemons by command line."""
    workers = []
    for process in root.children(recursive=True):
        try:
            parent = process.parent()
            if parent is not None and is_daemon(process) and is_daemon(parent):
                workers.append(process)
        except psutil.Error:  # exited while we looked
            continue
    return workers


def running(workers: list[psutil.Process]) -> set[int]:
    """Pids of the workers on a CPU now (a worker in the idle pool sleeps on its socket)."""
    pids = set()
    for worker in workers:
        try:
            if worker.status() == psutil.STATUS_RUNNING:
                pids.add(worker.pid)
        except psutil.Error:
            continue
    return pids


def unit_files_written(lake: Path) -> bool:
    """The units stage has started: some unit has written a data file."""
    return any((lake / table).is_dir() and any((lake / table).glob("part-*.parquet")) for table in UNIT_TABLES)


def kill_running_worker(job: subprocess.Popen, deadline: float) -> Optional[int]:
    """SIGKILL the first worker seen running in two samples 2 ms apart (in a task, not just leaving one).

    Returns its pid; None when the job ended first.
    """
    root, workers, listed, before = psutil.Process(job.pid), [], 0.0, set()
    while time.monotonic() < deadline and job.poll() is None:
        if time.monotonic() - listed > 0.05:
            workers, listed = python_workers(root), time.monotonic()
        now = running(workers)
        for pid in sorted(now & before)[:1]:
            os.kill(pid, signal.SIGKILL)
            return pid
        before = now
        time.sleep(0.002)
    return None


def attempt_lost(job: subprocess.Popen, stderr: Path, wait_s: float = 2.0) -> bool:
    """Spark reported a failed task attempt within ``wait_s`` (False: the kill hit a worker between tasks)."""
    until = time.monotonic() + wait_s
    while time.monotonic() < until:
        if lost_tasks(stderr.read_text(errors="replace")):
            return True
        if job.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def kill_a_worker_mid_task(job: subprocess.Popen, lake: Path, stderr: Path, deadline: float,
                           tries: int = 3) -> list[int]:
    """Once the units stage runs, kill a worker running a task; again (up to ``tries``) if no attempt failed."""
    while time.monotonic() < deadline and job.poll() is None and not unit_files_written(lake):
        time.sleep(0.01)
    killed: list[int] = []
    while len(killed) < tries and job.poll() is None:
        pid = kill_running_worker(job, deadline)
        if pid is None:
            break
        killed.append(pid)
        if attempt_lost(job, stderr):
            break
    return killed


def stop_tree(job: subprocess.Popen) -> None:
    """Kill ``job`` and what it started (its JVM and Python workers) if it is still running."""
    if job.poll() is not None:
        return
    for process in [*psutil.Process(job.pid).children(recursive=True), psutil.Process(job.pid)]:
        try:
            process.kill()
        except psutil.Error:
            continue
    job.wait()


def ingest_command(manifest: Path, lake: Path) -> list[str]:
    """``stlake ingest`` with the product's own master handling (``local[2]`` gets its failure count)."""
    return [sys.executable, "-m", "stlake.cli", "ingest", "--source", str(manifest), "--lake", str(lake),
            "--master", "local[2]", "--json"]


@pytest.fixture(scope="module")
def killed_run(synthetic_dataset, tmp_path_factory) -> dict:
    """The corpus's good slides ingested by ``stlake ingest`` while a Python worker running a task is killed."""
    root = tmp_path_factory.mktemp("worker_kill")
    lake = root / "lake"
    manifest = corpus.write_manifest(root / "manifest.csv", corpus.good_rows(synthetic_dataset))
    env = {**os.environ, "STLAKE_SPARK_LOG_LEVEL": "WARN", "PYSPARK_PYTHON": sys.executable}
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        job = subprocess.Popen(ingest_command(manifest, lake), stdout=out, stderr=err, env=env)
        try:
            killed = kill_a_worker_mid_task(job, lake, root / "stderr", time.monotonic() + INGEST_TIMEOUT_S)
            code = job.wait(timeout=INGEST_TIMEOUT_S)
        finally:
            stop_tree(job)
    stdout, stderr = (root / "stdout").read_text(), (root / "stderr").read_text()
    return {"lake": lake, "code": code, "killed": killed, "stderr": stderr,
            "report": json.loads(stdout) if code == 0 else None}


def lost_tasks(stderr: str) -> list[str]:
    """Spark's ``Lost task`` warnings (a task attempt that failed)."""
    return [line for line in stderr.splitlines() if "Lost task" in line]


def disk_files(lake: Path, table: str) -> set[str]:
    """Every Parquet data file in the table's folder (committed or not; the Delta log excluded)."""
    return {str(path) for path in (lake / table).glob("*.parquet")}


def token_of(path: str) -> str:
    """The writer's token in a data file's name (the same for every attempt of one unit's write)."""
    match = DATA_FILE.fullmatch(os.path.basename(path))
    assert match is not None, path
    return match["token"]


@pytest.mark.slow
def test_killed_worker_job_succeeds(killed_run):
    assert killed_run["killed"], "the job ended before a Python worker was seen running a task"
    assert killed_run["code"] == 0, killed_run["stderr"][-4000:]
    lost = lost_tasks(killed_run["stderr"])
    assert lost, "no kill failed a task attempt: nothing was retried"
    assert all("Python worker exited unexpectedly" in line for line in lost), lost
    idle = killed_run["stderr"].count("from idle queue is dead")
    print(f"killed {killed_run['killed']} ({idle} between tasks); failed attempts: {lost}")


@pytest.mark.slow
def test_killed_worker_lands_every_slide(killed_run, corpus_baseline):
    assert killed_run["report"] is not None, killed_run["stderr"][-4000:]
    clean = sorted(tables.slide_ids(str(corpus_baseline), "slides"))
    assert sorted(killed_run["report"]["landed"]) == clean == sorted(corpus.GOOD_SLIDES)
    assert sorted(tables.slide_ids(str(killed_run["lake"]), "slides")) == clean
    assert killed_run["report"]["rejected"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("table", [*UNIT_TABLES, "slides"])
def test_killed_worker_rows_identical_to_clean_run(killed_run, corpus_baseline, table):
    assert killed_run["report"] is not None, killed_run["stderr"][-4000:]
    landed, clean = corpus.landed(killed_run["lake"], table), corpus.landed(corpus_baseline, table)
    if "spot_id" in landed.column_names:
        columns = corpus.row_key(landed)
        keys = list(zip(*(landed[c].to_pylist() for c in columns)))
        assert len(keys) == len(set(keys)), f"duplicate {columns} rows"
        assert keys == list(zip(*(clean[c].to_pylist() for c in columns)))
    assert landed.num_rows == clean.num_rows
    assert landed.equals(clean)


@pytest.mark.slow
def test_killed_attempt_files_not_in_snapshot(killed_run):
    assert killed_run["report"] is not None, killed_run["stderr"][-4000:]
    lake = str(killed_run["lake"])
    orphans: set[str] = set()
    for table in UNIT_TABLES:
        active = set(tables.active_files(lake, table))
        on_disk = disk_files(killed_run["lake"], table)
        assert active <= on_disk, table
        assert sum(pq.ParquetFile(path).metadata.num_rows for path in active) == tables.read_table(lake, table).num_rows
        orphans |= on_disk - active
    # only a killed attempt can have left files behind, and its retry wrote the same ones again
    landed = {token_of(path) for table in UNIT_TABLES for path in tables.active_files(lake, table)}
    assert {token_of(path) for path in orphans} <= landed, sorted(orphans)
    print(f"files of the killed attempt left outside the snapshot: {sorted(orphans) or 'none'}")
