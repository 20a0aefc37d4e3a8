"""The S3 pipeline on a real standalone cluster (a master and two worker JVMs, ``spark_cluster``).

Raw slides in a SeaweedFS bucket -> ``stlake ingest --master spark://...`` -> Delta tables in the bucket ->
SQL, ``pairs`` and an HVG panel as Spark jobs on the cluster -> Petastorm batches from the bucket. The
driver and the executors share nothing but S3: the executors run in the workers' own folders, get the S3
keys from their worker (as from an instance role), and the tasks of the run are found, by the event log
and the workers' JSON UIs, on executors of both workers. Then an executor JVM is killed with SIGKILL
during stage 2: the run is retried onto a new executor and lands the same rows as the clean run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import psutil
import pytest

import corpus
from stlake.lake import storage, tables
from stlake.synth import CORRUPT_SLIDES
from stlake.testing.cluster import SparkCluster
from test_s3_pipeline import assert_no_duplicate_spots, row_counts, valid_slides

pytestmark = pytest.mark.slow  # `make test-cluster` (in .ci/run) runs this module and test_dist.py

RUN_TIMEOUT_S = 900
#: The slides of the fault and archive runs (fewer than the clean run's, to keep the suite short).
SOME_LAYOUTS = ("visium", "st")
UNIT_TABLES = ("spots", "annotations", "expression")


# ---------------------------------------------------------------- driver processes

def stlake_source_root() -> str:
    """The folder that holds the ``stlake`` package under test (the executors import it from there)."""
    import stlake
    return os.path.dirname(os.path.dirname(stlake.__file__))


def driver_env(folder: Path, s3_env: dict[str, str], conf: dict[str, str]) -> dict[str, str]:
    """The driver's environment: ours, the S3 settings, loopback, and ``conf`` as its spark-defaults.conf."""
    conf_dir = folder / "driver-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPARK_"))}
    env.update(s3_env, SPARK_LOCAL_IP="127.0.0.1", SPARK_CONF_DIR=str(conf_dir), STLAKE_SPARK_LOG_LEVEL="WARN",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    return env


def event_log_conf(folder: Path) -> dict[str, str]:
    """Spark settings that write the run's event log (uncompressed JSON lines) into ``folder/events``."""
    events = folder / "events"
    events.mkdir(parents=True, exist_ok=True)
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}


def dev_venv_conf() -> dict[str, str]:
    """Executors run this venv's Python and import the ``stlake`` under test (not an installed copy)."""
    return {"spark.executorEnv.PYTHONPATH": stlake_source_root()}


def run_driver(command: list[str], env: dict[str, str], folder: Path, name: str,
               during: Optional[Any] = None) -> dict[str, Any]:
    """Run a driver program; ``during(process)`` is called while it runs. Its exit code, stdout and stderr."""
    out, err = folder / f"{name}.stdout", folder / f"{name}.stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        try:
            extra = during(process) if during else None
            code = process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return {"code": code, "stdout": out.read_text(), "stderr": err.read_text(errors="replace"), "during": extra}


def result_json(stdout: str) -> dict[str, Any]:
    """The ``RESULT {...}`` line of ``cluster_job.py``."""
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def ingest_command(master: str, source: str, lake: str, layouts: tuple[str, ...] = ()) -> list[str]:
    """``stlake ingest --master spark://...`` as a user types it (``--layout`` for each of ``layouts``);
    ``--allow-rejects``: the synthetic source holds broken slides on purpose; ``--json``: the report on stdout."""
    return [sys.executable, "-m", "stlake.cli", "ingest", "--source", source, "--lake", lake, "--master", master,
            "--allow-rejects", "--json", *[arg for layout in layouts for arg in ("--layout", layout)]]


def some_slides(dataset: dict) -> list[str]:
    """The valid slides of :data:`SOME_LAYOUTS`."""
    return sorted(s for layout in SOME_LAYOUTS for s in dataset["slides"][layout])


def job_command(master: str, *args: str) -> list[str]:
    """``tests/cluster_job.py`` on ``master``."""
    return [sys.executable, str(Path(__file__).with_name("cluster_job.py")), "--master", master, *args]


# ---------------------------------------------------------------- event log

def events_of(folder: Path, app_id: str) -> list[dict[str, Any]]:
    """The events of ``app_id``'s event log."""
    (path,) = [p for p in (folder / "events").iterdir() if p.name.startswith(app_id)]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def app_id_of(folder: Path, app_name: str) -> str:
    """The id of the application named ``app_name`` in ``folder/events`` (the latest)."""
    ids = []
    for path in sorted((folder / "events").iterdir()):
        with open(path) as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("Event") == "SparkListenerApplicationStart" and event["App Name"] == app_name:
                    ids.append(event["App ID"])
                    break
    assert ids, f"no event log of {app_name} in {folder / 'events'}"
    return ids[-1]


def tasks_per_executor(events: list[dict[str, Any]], succeeded: bool = True) -> Counter:
    """Finished task attempts per executor id (only the successful ones by default)."""
    done = Counter()
    for event in events:
        if event.get("Event") == "SparkListenerTaskEnd":
            ok = event["Task End Reason"]["Reason"] == "Success"
            if ok == succeeded:
                done[event["Task Info"]["Executor ID"]] += 1
    return done


def tasks_per_worker(cluster: SparkCluster, folder: Path, app_id: str) -> dict[str, int]:
    """{worker id: successful tasks of ``app_id`` run by that worker's executors}."""
    done = tasks_per_executor(events_of(folder, app_id))
    return {worker: sum(done[e] for e in executors) for worker, executors in cluster.executors(app_id).items()}


# ---------------------------------------------------------------- the clean run

@pytest.fixture(scope="module")
def cluster_run(spark_cluster, s3_env_module, raw_uri_module, tmp_path_factory) -> dict[str, Any]:
    """The synthetic slides ingested from S3 into an S3 lake by ``stlake ingest --master spark://...``,
    then SQL, pairs and HVG on the cluster (``cluster_job.py --queries``)."""
    folder = tmp_path_factory.mktemp("cluster_run")
    lake = "s3://lake/cluster"
    env = driver_env(folder, s3_env_module.env(), {**event_log_conf(folder), **dev_venv_conf()})
    started = time.monotonic()
    ingest = run_driver(ingest_command(spark_cluster.master_url, f"{raw_uri_module}/manifest.csv", lake), env, folder,
                        "ingest")
    ingest_s = time.monotonic() - started
    assert ingest["code"] == 0, ingest["stderr"][-4000:]
    queries = run_driver(job_command(spark_cluster.master_url, "--lake", lake, "--queries"), env, folder, "queries")
    assert queries["code"] == 0, queries["stderr"][-4000:]
    print(f"cluster ingest {ingest_s:.1f} s, queries {time.monotonic() - started - ingest_s:.1f} s")
    return {"lake": lake, "folder": folder, "report": json.loads(ingest["stdout"]),
            "ingest_app": app_id_of(folder, "stlake-ingest"), "queries": result_json(queries["stdout"])}


def test_cluster_ingest_lands_every_slide_in_s3(cluster_run, synthetic_dataset, s3_env):
    report, lake = cluster_run["report"], cluster_run["lake"]
    assert report["landed"] == valid_slides(synthetic_dataset)
    assert report["rejected"] == CORRUPT_SLIDES
    counts = row_counts(lake)
    assert dict(counts["spots"]) == {s: synthetic_dataset["n_spots"][s] for s in report["landed"]}
    assert counts["expression"] == counts["spots"]
    assert_no_duplicate_spots(lake)
    assert all(f.startswith(f"{lake}/") for f in tables.active_files(lake, "spots"))


def test_cluster_tasks_ran_on_both_workers(cluster_run, spark_cluster):
    for app in (cluster_run["ingest_app"], cluster_run["queries"]["app_id"]):
        per_worker = tasks_per_worker(spark_cluster, cluster_run["folder"], app)
        assert len(per_worker) == 2 and all(per_worker.values()), (app, per_worker)
        # the executors ran in the workers' own folders (<work dir>/<app>/<executor id>/)
        assert {name.split("/")[0] for name in spark_cluster.executor_logs(app)} == {"worker-0", "worker-1"}
        print(f"{app}: successful tasks per worker {per_worker}")


def test_cluster_sql_pairs_hvg_and_stream(cluster_run, synthetic_dataset, s3_env):
    lake, result = cluster_run["lake"], cluster_run["queries"]
    assert result["route"] == "snapshot-pyarrow"
    counts = row_counts(lake)
    slides = {r["slide_id"]: r["technology"] for r in tables.read_table(lake, "slides").to_pylist()}
    expected: Counter = Counter()
    for slide_id, n in counts["spots"].items():
        expected[slides[slide_id]] += n
    assert result["spots_per_technology"] == dict(expected)
    assert result["errors"] == CORRUPT_SLIDES

    from stlake.stream import StreamSpec, make_loader
    spec = StreamSpec(lake=lake, panel_name=result["panel"], batch_size=128, image_size=32, normalize="log1p",
                      seed=1)
    seen = []
    with make_loader(spec) as loader:
        assert all(f.startswith(f"{lake}/pairs/") for f in loader.files)
        for batch in loader:
            assert batch["expression"].shape[1] == 32
            seen += list(zip(batch["slide_id"], batch["spot_id"]))
    assert len(seen) == len(set(seen)) == sum(counts["spots"].values())


# ---------------------------------------------------------------- an executor JVM killed during stage 2

def executor_jvms(cluster: SparkCluster, index: int) -> list[psutil.Process]:
    """The executor JVMs (``CoarseGrainedExecutorBackend``) that worker ``index`` started."""
    worker = cluster.workers[index].process
    assert worker is not None
    found = []
    for process in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "CoarseGrainedExecutorBackend" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def unit_files_in(lake: str) -> bool:
    """Some unit has written a data file into ``lake`` (stage 2 is running)."""
    return any(name.startswith("part-") for table in UNIT_TABLES
               for name in storage.list_dir(storage.join(lake, table)))


def kill_executor_in_stage_2(cluster: SparkCluster, lake: str, process: subprocess.Popen) -> Optional[int]:
    """Once stage 2 has written its first file, SIGKILL worker 0's executor JVM; its pid (None: job ended)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if unit_files_in(lake):
            jvms = executor_jvms(cluster, 0)
            if jvms:
                os.kill(jvms[0].pid, signal.SIGKILL)
                return jvms[0].pid
        time.sleep(0.1)
    return None


@pytest.fixture(scope="module")
def killed_cluster_run(cluster_run, spark_cluster, s3_env_module, raw_uri_module, tmp_path_factory) -> dict[str, Any]:
    """The ingest of :data:`SOME_LAYOUTS` into another lake while worker 0's executor JVM is SIGKILLed in stage 2."""
    folder = tmp_path_factory.mktemp("cluster_kill")
    lake = "s3://lake/cluster-kill"
    env = driver_env(folder, s3_env_module.env(), {**event_log_conf(folder), **dev_venv_conf()})
    command = ingest_command(spark_cluster.master_url, f"{raw_uri_module}/manifest.csv", lake, SOME_LAYOUTS)
    run = run_driver(command, env, folder, "ingest", during=lambda p: kill_executor_in_stage_2(spark_cluster, lake, p))
    return {**run, "lake": lake, "folder": folder, "app": app_id_of(folder, "stlake-ingest")}


def test_killed_executor_job_completes_on_a_new_executor(killed_cluster_run, spark_cluster):
    run = killed_cluster_run
    assert run["during"] is not None, "stage 2 ended before an executor could be killed"
    assert run["code"] == 0, run["stderr"][-4000:]
    events = events_of(run["folder"], run["app"])
    failed = tasks_per_executor(events, succeeded=False)
    assert failed, "no task attempt failed: the kill hit no running task"
    executors = spark_cluster.executors(run["app"])
    worker_0 = spark_cluster.worker_state(0)["id"]
    assert len(executors[worker_0]) >= 2, f"worker 0 started no new executor: {executors}"
    print(f"killed executor JVM {run['during']}; failed attempts per executor {dict(failed)}; "
          f"executors per worker {executors}")


@pytest.mark.parametrize("table", [*UNIT_TABLES, "slides"])
def test_killed_executor_rows_identical_to_clean_run(killed_cluster_run, cluster_run, synthetic_dataset, s3_env,
                                                     table):
    assert killed_cluster_run["code"] == 0, killed_cluster_run["stderr"][-4000:]
    report = json.loads(killed_cluster_run["stdout"])
    slides = some_slides(synthetic_dataset)
    assert report["landed"] == slides
    killed = corpus.landed(killed_cluster_run["lake"], table, slides)
    clean = corpus.landed(cluster_run["lake"], table, slides)
    assert killed.num_rows == clean.num_rows
    assert killed.equals(clean)
