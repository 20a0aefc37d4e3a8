"""How stlake starts Spark's processes: the driver JVM's options (a class-data-sharing archive built by a real
HotSpot, C1 for ingests) and the Python worker daemon that imports the task modules before it forks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stlake import jvmstart

JAVA = jvmstart.java_binary()
pytestmark = pytest.mark.skipif(JAVA is None, reason="no java")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jvm"
    monkeypatch.setenv(jvmstart.CACHE_VARIABLE, str(folder))
    monkeypatch.delenv(jvmstart.SWITCH_VARIABLE, raising=False)
    return folder


def settled(path: Path) -> None:
    """Make a dump look finished (older than the settle time)."""
    old = time.time() - 2 * jvmstart.DUMP_SETTLE_SECONDS
    os.utime(path, (old, old))


def dump_of_java_version(target: Path) -> None:
    """A real (small) dynamic archive: the classes ``java -version`` loads."""
    assert JAVA is not None
    subprocess.run([str(JAVA), f"-XX:ArchiveClassesAtExit={target}", *jvmstart.QUIET_CDS.split(), "-version"],
                   check=True, capture_output=True)


def test_first_start_asks_for_a_dump_once_then_nothing_until_it_is_checked(cache: Path) -> None:
    first = jvmstart.driver_java_options("ingest")
    assert jvmstart.C1_ONLY in first and "-XX:ArchiveClassesAtExit=" in first and "-Xlog:cds=off" in first
    assert jvmstart.driver_java_options("query") == ""  # one JVM per hour writes the archive


def test_a_finished_dump_is_checked_by_a_real_jvm_and_becomes_the_archive(cache: Path) -> None:
    assert JAVA is not None
    jvmstart.driver_java_options("query")
    key = jvmstart.archive_key(JAVA)
    dump = cache / f"{key}.jsa.dump-test"
    dump_of_java_version(dump)
    settled(dump)
    options = jvmstart.driver_java_options("query")
    assert options.startswith(f"-XX:SharedArchiveFile={cache / (key + '.jsa')}")
    assert jvmstart.C1_ONLY not in options
    assert not dump.exists()


def test_a_truncated_dump_crashes_its_check_and_is_deleted(cache: Path) -> None:
    assert JAVA is not None
    jvmstart.driver_java_options("query")
    key = jvmstart.archive_key(JAVA)
    whole = cache / "whole.jsa"
    dump_of_java_version(whole)
    dump = cache / f"{key}.jsa.dump-cut"
    dump.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    settled(dump)
    here = set(Path.cwd().glob("hs_err_pid*.log"))
    assert "SharedArchiveFile" not in jvmstart.driver_java_options("query")
    assert not dump.exists() and not (cache / f"{key}.jsa").exists()
    assert set(Path.cwd().glob("hs_err_pid*.log")) == here  # the crash report is not left in the working directory


def test_switched_off(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jvmstart.SWITCH_VARIABLE, "off")
    assert jvmstart.driver_java_options("ingest") == ""
    assert not cache.exists()


def test_an_ingest_session_starts_its_jvm_with_the_options(cache: Path) -> None:
    """A real session in a fresh process: the JVM's own input arguments hold C1 and the dump request."""
    code = ("import json; from stlake.spark import spark_session; s = spark_session(master='local[1]', "
            "workload='ingest'); jvm = s.sparkContext._jvm; print(json.dumps(list(jvm.java.lang.management."
            "ManagementFactory.getRuntimeMXBean().getInputArguments()))); s.stop()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, jvmstart.CACHE_VARIABLE: str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    arguments = json.loads(done.stdout.strip().splitlines()[-1])
    assert jvmstart.C1_ONLY in arguments
    assert any(a.startswith("-XX:ArchiveClassesAtExit=") for a in arguments)
    assert any("log4j2.configurationFile" in a for a in arguments)  # stlake's quiet logging kept


def test_python_workers_start_with_the_task_modules_imported(spark) -> None:
    """The workers come from stlake's daemon, which imported the task modules before it forked them."""
    def modules_seen(batches):  # runs in a Python worker; nested, so it is pickled by value
        import importlib
        import sys

        import pyarrow as pa
        for _ in batches:
            import zipimport
            pyspark_zip = next(p for p in sys.path if p.endswith(".zip") and "pyspark" in p)
            importer = sys.path_importer_cache.get(pyspark_zip)
            listed = getattr(importer, "_files", None)
            importlib.invalidate_caches()  # what PySpark's worker does before every task
            kept = listed is not None and getattr(importer, "_files", None) is listed
            yield pa.RecordBatch.from_pylist([{"cv2": "cv2" in sys.modules, "zip_kept": kept,
                                               "units": "stlake.ingestion.units" in sys.modules,
                                               "patched": isinstance(importer, zipimport.zipimporter)}])

    assert spark.conf.get("spark.python.daemon.module") == "stlake.workerdaemon"
    seen = spark.range(1).mapInArrow(modules_seen, "cv2 boolean, zip_kept boolean, units boolean, "
                                                   "patched boolean").collect()
    assert seen and all(row.cv2 and row.units for row in seen)
    assert all(row.patched and row.zip_kept for row in seen)  # pyspark.zip's listing is not re-read per task
