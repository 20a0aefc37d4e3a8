"""A faster start for the driver JVM stlake launches itself: a class-data-sharing archive, and C1 for ingests.

Measured on a one-slide ingest (``bench/README.md``), most of a CLI run's fixed cost is the driver JVM
loading and JIT-compiling Spark's classes, not the work. Two standard HotSpot (Java 11+) features cut it:

- **AppCDS**: the first session a machine starts adds ``-XX:ArchiveClassesAtExit``, so its JVM dumps
  the classes it loaded into an archive when it exits; later sessions map that archive with
  ``-XX:SharedArchiveFile`` instead of parsing and verifying the same ~10,000 classes from Spark's jars.
  The archive is keyed by the Java binary and the pyspark jars; a finished dump is checked (a JVM
  started on it must run) before it is renamed into place, because HotSpot crashes on a truncated one.
- **C1 only** (``-XX:TieredStopAtLevel=1``) for ``workload="ingest"``: there the driver JVM only
  schedules tasks and moves small Arrow batches (the work runs in Python workers), so the optimising
  C2 compiler's CPU is never paid back. Query workloads keep C2 (the JVM scans Parquet there).

Only a JVM that pyspark launches for this process takes these options (a local or client-mode driver);
under spark-submit, on Spark Connect or with ``$STLAKE_JVM_START=off`` nothing changes. HotSpot's CDS
messages are silenced (``-Xlog:cds=off``), so an archive a JVM cannot use is simply not used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal, Optional

log = logging.getLogger(__name__)

#: ``ingest``: the driver JVM only orchestrates (C1 only); ``query``: it scans data (full JIT).
Workload = Literal["ingest", "query"]
#: Set to ``off`` to start the driver JVM with Spark's own options only.
SWITCH_VARIABLE = "STLAKE_JVM_START"
#: Where the archives live (default ``~/.cache/stlake/jvm``).
CACHE_VARIABLE = "STLAKE_JVM_CACHE"
#: A dump younger than this may still be being written by its JVM: not checked yet.
DUMP_SETTLE_SECONDS = 30.0
#: A dump was asked for this recently: do not ask again (one JVM per machine writes the archive).
DUMP_RETRY_SECONDS = 3600.0
QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"
C1_ONLY = "-XX:TieredStopAtLevel=1"


def cache_dir() -> Path:
    """The folder of the archives (``$STLAKE_JVM_CACHE``, else ``~/.cache/stlake/jvm``)."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "stlake" / "jvm")


def java_binary() -> Optional[Path]:
    """The ``java`` Spark will run (``$JAVA_HOME/bin/java``, else the one on ``PATH``), resolved."""
    home = os.environ.get("JAVA_HOME")
    name = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(name).resolve() if name and Path(name).exists() else None


def runs(java: Path, *options: str) -> bool:
    """True when ``java`` starts with ``options`` (``-version``; a truncated archive crashes HotSpot).

    A crash report goes to a temporary folder that is then deleted, not to the current directory.
    """
    with tempfile.TemporaryDirectory(prefix="stlake-jvm-check-") as scratch:
        try:
            done = subprocess.run([str(java), f"-XX:ErrorFile={scratch}/hs_err_%p.log", *options, "-version"],
                                  capture_output=True, timeout=60, cwd=scratch)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def archive_usable(java: Path, archive: Path) -> bool:
    """True when a JVM started on ``archive`` runs: a truncated archive crashes HotSpot, so it is never used."""
    return runs(java, f"-XX:SharedArchiveFile={archive}", *QUIET_CDS.split())


def hotspot(java: Path, folder: Path) -> bool:
    """True when ``java`` takes the options used here (a HotSpot JVM); probed once per binary, then remembered."""
    digest = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    good, bad = folder / f"java-{digest}.ok", folder / f"java-{digest}.unsupported"
    if good.exists() or bad.exists():
        return good.exists()
    ok = runs(java, C1_ONLY, *QUIET_CDS.split())
    (good if ok else bad).touch()
    return ok


def archive_key(java: Path) -> str:
    """A name for the archive of this Java binary and these pyspark jars (either changing makes a new one)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    parts = [str(java), str(java.stat().st_mtime_ns), pyspark.__version__, str(jars.resolve())]
    return f"spark-{pyspark.__version__}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


def promote_dumps(java: Path, folder: Path, key: str) -> None:
    """Check the finished dumps of ``key``: the first usable one becomes the archive, the others are deleted."""
    final = folder / f"{key}.jsa"
    for dump in sorted(folder.glob(f"{key}.jsa.dump-*")):
        try:
            if time.time() - dump.stat().st_mtime < DUMP_SETTLE_SECONDS:
                continue
            if not final.exists() and archive_usable(java, dump):
                os.replace(dump, final)
            else:
                dump.unlink()
        except OSError as error:  # another process promoted or deleted it first
            log.debug("JVM class archive %s left: %s", dump, error)


def cds_options(java: Path, folder: Path) -> str:
    """``-XX:SharedArchiveFile`` when the archive exists, else ``-XX:ArchiveClassesAtExit`` once per hour."""
    key = archive_key(java)
    promote_dumps(java, folder, key)
    final = folder / f"{key}.jsa"
    if final.exists():
        return f"-XX:SharedArchiveFile={final} {QUIET_CDS}"
    asked = folder / f"{key}.asked"
    if asked.exists() and time.time() - asked.stat().st_mtime < DUMP_RETRY_SECONDS:
        return ""
    asked.touch()
    return f"-XX:ArchiveClassesAtExit={folder / f'{key}.jsa.dump-{uuid.uuid4().hex[:12]}'} {QUIET_CDS}"


def hotspot_and_cache() -> Optional[tuple[Path, Path]]:
    """The HotSpot ``java`` Spark will run and the (created) archive folder; None when off or not usable."""
    java = java_binary()
    if java is None or os.environ.get(SWITCH_VARIABLE, "").lower() in ("off", "0", "false", "no"):
        return None
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return (java, folder) if hotspot(java, folder) else None
    except OSError as error:  # a read-only home: Spark's own options
        log.debug("JVM start options not used (%s): %s", folder, error)
        return None


def driver_java_options(workload: Workload = "query") -> str:
    """Extra ``spark.driver.extraJavaOptions`` for a driver JVM about to be launched here ("" when off)."""
    found = hotspot_and_cache()
    if found is None:
        return ""
    options = [C1_ONLY] if workload == "ingest" else []
    try:
        return " ".join([*options, cds_options(*found)]).strip()
    except OSError as error:  # the folder turned unwritable: C1 alone
        log.debug("JVM class archive not used (%s): %s", found[1], error)
        return " ".join(options)


#: What the builder's JVM runs: a session, a DataFrame through ``mapInArrow`` and a SQL query (their classes).
_WARM_UP = """
import json, os
from stlake.spark import spark_session
spark = spark_session("stlake-jvm-archive", master="local[1]",
                      conf={"spark.driver.extraJavaOptions": os.environ["STLAKE_ARCHIVE_OPTIONS"]})
frame = spark.range(8).mapInArrow(lambda batches: batches, "id long")
frame.createOrReplaceTempView("t")
spark.sql("SELECT count(*) FROM t").collect()
print(json.dumps({"jvm_pid": spark.sparkContext._gateway.proc.pid}))
"""


def build_archive(timeout: float = 300.0) -> Optional[Path]:
    """Write this machine's archive now (``python -m stlake.jvmstart``): one short session, then the check.

    Returns the archive, or None when this JVM cannot have one (not HotSpot, switched off, no home).
    """
    found = hotspot_and_cache()
    if found is None:
        return None
    java, folder = found
    key = archive_key(java)
    final = folder / f"{key}.jsa"
    if final.exists():
        return final
    dump = folder / f"{key}.jsa.dump-build"
    options = f"-XX:ArchiveClassesAtExit={dump} {QUIET_CDS}"
    done = subprocess.run([sys.executable, "-c", _WARM_UP], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, SWITCH_VARIABLE: "off", "STLAKE_ARCHIVE_OPTIONS": options})
    if done.returncode != 0:
        raise RuntimeError(f"the warm-up session failed:\n{done.stderr[-2000:]}")
    wait_for_exit(int(json.loads(done.stdout.strip().splitlines()[-1])["jvm_pid"]), timeout)
    if dump.exists() and archive_usable(java, dump):
        os.replace(dump, final)
        return final
    dump.unlink(missing_ok=True)
    return None


def wait_for_exit(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` is gone (a JVM writes its archive as it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    built = build_archive()
    print(f"JVM class archive: {built}" if built else "JVM class archive: not used here")
