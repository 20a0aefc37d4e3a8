"""One way to get a SparkSession: ``local[*]`` by default, whatever spark-submit set otherwise.

Tasks are retried on every master: a crashed Python worker fails one attempt of its task, not the job.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import Optional

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from stlake.lake.storage import LOCAL_CREDENTIALS, STORAGE_SETTINGS

LOCAL_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
}


#: Attempts per task (Spark's cluster default); a local master gets it as its failure count.
TASK_ATTEMPTS = 4
DEFAULT_MASTER = "local[*]"
#: Spark's local masters: ``local``, ``local[N]``, ``local[*]``, ``local[N,F]`` (F: attempts per task).
_LOCAL_MASTER = re.compile(r"local(?:\[(?P<threads>\*|\d+)(?:\s*,\s*(?P<attempts>\d+))?\])?")


def is_local_master(master: str) -> bool:
    """True for ``local``, ``local[N]``, ``local[*]`` and ``local[N,F]`` (not ``local-cluster[...]``)."""
    return _LOCAL_MASTER.fullmatch(master) is not None


def with_task_retries(master: str, attempts: int = TASK_ATTEMPTS) -> str:
    """``master`` with a failure count when it is a local master without one (``local[*]`` -> ``local[*,4]``).

    Spark gives a local master one attempt per task unless the master names a count (``local[N,F]``), so
    one killed Python worker aborts the job. An explicit count and non-local masters are returned as given.
    """
    match = _LOCAL_MASTER.fullmatch(master)
    if match is None or match["attempts"] is not None:
        return master
    return f"local[{match['threads'] or 1},{attempts}]"


def task_retry_conf(master: str, configured: Iterable[str] = ()) -> dict[str, str]:
    """``spark.task.maxFailures`` for a non-local master unless it is among the ``configured`` keys.

    Empty for local masters: Spark ignores the setting there (see :func:`with_task_retries`).
    """
    if is_local_master(master) or "spark.task.maxFailures" in set(configured):
        return {}
    return {"spark.task.maxFailures": str(TASK_ATTEMPTS)}


def choose_master(master: Optional[str], submitted: Optional[str]) -> str:
    """``master`` > spark-submit's > ``$STLAKE_SPARK_MASTER`` > ``local[*]``, local ones with task retries."""
    return with_task_retries(master or submitted or os.environ.get("STLAKE_SPARK_MASTER") or DEFAULT_MASTER)


def submitted_conf() -> dict[str, str]:
    """The settings spark-submit gave this driver (or the running JVM's); empty in a plain Python process."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # started by spark-submit: connect to its JVM, which holds them
        SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def spark_session(app_name: str = "stlake", master: Optional[str] = None,
                  conf: Optional[dict[str, str]] = None) -> SparkSession:
    """The active session, or a new one: ``master`` > spark-submit's master > ``$STLAKE_SPARK_MASTER`` > local[*].

    Every master retries tasks (:data:`TASK_ATTEMPTS` attempts): a local master without a failure count
    gets one (:func:`with_task_retries`), others ``spark.task.maxFailures`` unless ``conf`` or spark-submit
    set it (:func:`task_retry_conf`).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    submitted = submitted_conf()
    chosen = choose_master(master, submitted.get("spark.master"))
    builder = SparkSession.builder.appName(app_name)
    if chosen != submitted.get("spark.master"):
        builder = builder.master(chosen)
    if master or "spark.master" not in submitted:
        builder = builder.config("spark.driver.memory", os.environ.get("STLAKE_DRIVER_MEMORY", "4g"))
        builder = builder.config("spark.ui.enabled", os.environ.get("STLAKE_SPARK_UI", "false"))
    retries = task_retry_conf(chosen, [*submitted, *(conf or {})])
    for key, value in {**LOCAL_DEFAULTS, **retries, **(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("STLAKE_SPARK_LOG_LEVEL", "WARN"))
    return session


def has_jvm_class(spark: SparkSession, class_name: str) -> bool:
    """True when ``class_name`` is on the driver's classpath (classic Spark; False on Spark Connect)."""
    try:
        jvm = spark.sparkContext._jvm  # Spark Connect has no SparkContext: raises
        if jvm is None:
            return False
        jvm.java.lang.Class.forName(class_name)
        return True
    except Exception:
        return False


def has_delta_spark(spark: SparkSession) -> bool:
    """delta-spark's JVM jars are loaded (e.g. EMR with Delta, or ``--packages io.delta:delta-spark``)."""
    return has_jvm_class(spark, "io.delta.tables.DeltaTable")


def has_s3a(spark: SparkSession) -> bool:
    """Spark can read ``s3a://`` itself (hadoop-aws on the classpath)."""
    return has_jvm_class(spark, "org.apache.hadoop.fs.s3a.S3AFileSystem")


def is_local(spark: SparkSession) -> bool:
    """True when the executors run on this machine (a ``local[...]`` master)."""
    return (spark.sparkContext.master or "").startswith("local")


def forward_storage_environment(spark: SparkSession) -> None:
    """Give Python tasks started from now on the driver's current S3 settings (env of the AWS chain).

    Credentials go only to local executors (same machine, same user); cluster executors use their own
    AWS chain (instance profile / job role), so keys never travel in task definitions.
    """
    names = STORAGE_SETTINGS + (LOCAL_CREDENTIALS if is_local(spark) else ())
    environment = spark.sparkContext.environment
    for name in names:
        if name in os.environ:
            environment[name] = os.environ[name]
        else:
            environment.pop(name, None)
