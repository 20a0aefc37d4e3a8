"""One way to get a SparkSession: ``local[*]`` by default, whatever spark-submit set otherwise."""
from __future__ import annotations

import os
import sys
from typing import Optional

from pyspark import SparkConf
from pyspark.sql import SparkSession

from stlake.lake.storage import LOCAL_CREDENTIALS, STORAGE_SETTINGS

LOCAL_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
}


def spark_session(app_name: str = "stlake", master: Optional[str] = None,
                  conf: Optional[dict[str, str]] = None) -> SparkSession:
    """The active session, or a new one: ``master`` > spark-submit's master > ``$STLAKE_SPARK_MASTER`` > local[*]."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    submitted = SparkConf().get("spark.master")
    if master or not submitted:
        builder = builder.master(master or os.environ.get("STLAKE_SPARK_MASTER", "local[*]"))
        builder = builder.config("spark.driver.memory", os.environ.get("STLAKE_DRIVER_MEMORY", "4g"))
        builder = builder.config("spark.ui.enabled", os.environ.get("STLAKE_SPARK_UI", "false"))
    for key, value in {**LOCAL_DEFAULTS, **(conf or {})}.items():
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
