"""One way to get a SparkSession: ``local[*]`` by default, whatever spark-submit set otherwise.

Spark's conventions choose the kind of session: ``remote`` (``--remote sc://host:port``, or
``$SPARK_REMOTE``) gives a Spark Connect session, ``master`` (``--master``) a classic one. stlake's
jobs use only what Spark Connect supports (DataFrames, ``mapInArrow``, SQL); the few helpers below that
look at the driver's JVM do so only in a classic session (:func:`is_connect`).

Tasks are retried on every master: a crashed Python worker fails one attempt of its task, not the job.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Optional, cast

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from stlake.jvmstart import Workload, driver_java_options
from stlake.lake.storage import LOCAL_CREDENTIALS, STORAGE_SETTINGS

log = logging.getLogger(__name__)

LOCAL_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.python.daemon.module": "stlake.workerdaemon",  # forks workers with the task modules imported
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
}


#: stlake's log4j2 configuration (shipped in the package): Spark's warnings and errors only, no banner.
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
#: Set to a log4j level (``INFO``, ``DEBUG``...; ``stlake -v`` sets INFO) to get Spark's own logging back.
LOG_LEVEL_VARIABLE = "STLAKE_SPARK_LOG_LEVEL"

#: Attempts per task (Spark's cluster default); a local master gets it as its failure count.
TASK_ATTEMPTS = 4
DEFAULT_MASTER = "local[*]"
_JAVA_NAME = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*")  # what has_jvm_class looks up
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
        quiet_running_jvm()
    return dict(SparkConf().getAll())


def spark_log_level() -> Optional[str]:
    """The Spark log level asked for by ``$STLAKE_SPARK_LOG_LEVEL``; None means stlake's quiet configuration."""
    return os.environ.get(LOG_LEVEL_VARIABLE) or None


def _names_log4j_config(java_options: str) -> bool:
    """True when JVM options already choose a log4j configuration (the user's wins)."""
    return "log4j2.configurationFile" in java_options or "log4j.configuration" in java_options


def quiet_logging_conf(configured: Mapping[str, str]) -> dict[str, str]:
    """``spark.driver.extraJavaOptions`` that point log4j2 at :data:`LOG4J_CONFIG` for a JVM about to start.

    Empty when a log level is asked for (:func:`spark_log_level`) or the options already name a log4j
    configuration; other Java options in ``configured`` are kept.
    """
    options = configured.get("spark.driver.extraJavaOptions", "")
    if spark_log_level() or _names_log4j_config(options):
        return {}
    return {"spark.driver.extraJavaOptions": f"{options} -Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}".strip()}


def quiet_running_jvm() -> None:
    """Under spark-submit (the JVM started before Python), switch its log4j2 to :data:`LOG4J_CONFIG`.

    Done before the SparkContext starts, so its ~40 INFO lines never print. Spark reloads its default
    profile when a context starts unless its flag saying that it installed them is cleared (a Spark
    internal: if that ever fails, the logs just stay as they were). Left alone when a log level is asked
    for or the JVM was given a log4j configuration.
    """
    jvm = SparkContext._jvm
    if jvm is None or spark_log_level() or jvm.java.lang.System.getProperty("log4j2.configurationFile"):
        return
    try:
        spark_logging = jvm.java.lang.Class.forName("org.apache.spark.internal.Logging$").getField("MODULE$").get(None)
        getattr(spark_logging, "org$apache$spark$internal$Logging$$defaultSparkLog4jConfig_$eq")(False)
        context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
        context.setConfigLocation(jvm.java.net.URI.create(LOG4J_CONFIG.as_uri()))
    except Exception as error:  # py4j errors: a Spark without that flag
        log.debug("Spark's log4j configuration left as it is: %s", error)


def choose_remote(master: Optional[str], remote: Optional[str]) -> Optional[str]:
    """The Spark Connect URL to use, or None for a classic session: ``remote`` > ``$SPARK_REMOTE``.

    ``ValueError`` when both a master and a remote are asked for (as pyspark refuses them together).
    """
    remote = remote or os.environ.get("SPARK_REMOTE") or None
    if master and remote:
        raise ValueError(f"both a Spark master ({master}) and a Spark Connect remote ({remote}, --remote or "
                         "SPARK_REMOTE) are set: choose one")
    return remote


def start_options_conf(configured: Mapping[str, str], workload: Workload) -> dict[str, str]:
    """``spark.driver.extraJavaOptions`` with :func:`stlake.jvmstart.driver_java_options` for a JVM about to start.

    Empty when this process already has a JVM (spark-submit started it, or a session ran before).
    """
    if "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._active_spark_context is not None:
        return {}
    extra = driver_java_options(workload)
    if not extra:
        return {}
    return {"spark.driver.extraJavaOptions": f"{configured.get('spark.driver.extraJavaOptions', '')} {extra}".strip()}


def spark_session(app_name: str = "stlake", master: Optional[str] = None,
                  conf: Optional[dict[str, str]] = None, remote: Optional[str] = None,
                  workload: Workload = "query") -> SparkSession:
    """The active session, or a new one.

    ``remote`` or ``$SPARK_REMOTE`` (``sc://host:port``, or ``local[N]`` for a local Connect server):
    a Spark Connect session (:func:`connect_session`). Otherwise a classic one on ``master`` >
    spark-submit's master > ``$STLAKE_SPARK_MASTER`` > local[*]. Every master retries tasks
    (:data:`TASK_ATTEMPTS` attempts): a local master without a failure count gets one
    (:func:`with_task_retries`), others ``spark.task.maxFailures`` unless ``conf`` or spark-submit set
    it (:func:`task_retry_conf`). Spark logs only warnings and errors (:data:`LOG4J_CONFIG`) unless
    ``$STLAKE_SPARK_LOG_LEVEL`` asks for a level. A driver JVM started here gets
    :mod:`stlake.jvmstart`'s options for ``workload`` (a class archive; C1 only for an ingest).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    remote = choose_remote(master, remote)
    if remote:
        return connect_session(app_name, remote, conf)
    submitted = submitted_conf()
    chosen = choose_master(master, submitted.get("spark.master"))
    builder = SparkSession.builder.appName(app_name)
    if chosen != submitted.get("spark.master"):
        builder = builder.master(chosen)
    if master or "spark.master" not in submitted:
        builder = builder.config("spark.driver.memory", os.environ.get("STLAKE_DRIVER_MEMORY", "4g"))
        builder = builder.config("spark.ui.enabled", os.environ.get("STLAKE_SPARK_UI", "false"))
    retries = task_retry_conf(chosen, [*submitted, *(conf or {})])
    given = {**(conf or {}), **start_options_conf({**submitted, **(conf or {})}, workload)}
    quiet = quiet_logging_conf({**submitted, **given})
    for key, value in {**LOCAL_DEFAULTS, **retries, **given, **quiet}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(spark_log_level() or "WARN")
    return session


def connect_session(app_name: str, remote: str, conf: Optional[dict[str, str]] = None) -> SparkSession:
    """A Spark Connect session: to a server at ``sc://host:port``, or a local one started here (``local[N]``).

    A local server gets every setting (and a task failure count, as local masters do). A remote server
    owns its configuration: only runtime SQL settings (``spark.sql.*``) are set from here, and its
    Python workers run in the server's environment (S3 settings, ``PYSPARK_PYTHON``), not this process's.
    """
    settings = {**LOCAL_DEFAULTS, **(conf or {})}
    if is_local_master(remote):
        builder = SparkSession.builder.remote(with_task_retries(remote)).appName(app_name)
        local = {"spark.driver.memory": os.environ.get("STLAKE_DRIVER_MEMORY", "4g"),
                 "spark.ui.enabled": os.environ.get("STLAKE_SPARK_UI", "false"), **settings}
        local.update(quiet_logging_conf(local))
        for key, value in local.items():
            builder = builder.config(key, value)
        with warnings.catch_warnings():  # pyspark re-applies the server's static settings to the session, and warns
            warnings.filterwarnings("ignore", "Failed to set spark", UserWarning)
            return builder.getOrCreate()
    from pyspark.sql.connect.session import SparkSession as ConnectSession
    # What pyspark's own builder does for a remote: pyspark.sql.functions follow this process-wide switch.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    remote_builder = ConnectSession.builder.remote(remote)
    for key, value in settings.items():
        if key.startswith("spark.sql."):  # runtime settings; the rest is the server's
            remote_builder = remote_builder.config(key, value)
    session = remote_builder.getOrCreate()
    return cast(SparkSession, session)


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (no ``sparkContext``, no JVM on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks the cluster runs at once (``defaultParallelism``; over Spark Connect, measured by a range)."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    from pyspark.sql import functions as F
    # spark.range without a partition count is split into defaultParallelism partitions (all non-empty).
    parts = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()
    return int(parts[0]) + 1 if parts and parts[0] is not None else 1


def has_jvm_class(spark: SparkSession, class_name: str) -> bool:
    """True when ``class_name`` is on Spark's classpath: the driver's JVM, or over Spark Connect the server's."""
    if not _JAVA_NAME.fullmatch(class_name):
        raise ValueError(f"not a Java class name: {class_name!r}")
    try:
        if is_connect(spark):  # the server looks the class up (try_reflect: null when it is not found)
            found = spark.sql(f"SELECT try_reflect('java.lang.Class', 'forName', '{class_name}') AS c").first()
            return bool(found and found[0])
        jvm = spark.sparkContext._jvm
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


def has_python_data_sources(spark: SparkSession) -> bool:
    """Spark's Python data source API is there (Spark 4; not 3.5)."""
    return hasattr(spark, "dataSource")


def is_local(spark: SparkSession) -> bool:
    """True when the executors run on this machine (a ``local[...]`` master)."""
    try:
        return (spark.conf.get("spark.master", None) or "").startswith("local")
    except Exception:  # a Connect server may refuse to tell: treat it as remote
        return False


def forward_storage_environment(spark: SparkSession) -> None:
    """Give Python tasks started from now on the driver's current S3 settings (env of the AWS chain).

    Credentials go only to local executors (same machine, same user); cluster executors use their own
    AWS chain (instance profile / job role), so keys never travel in task definitions. Over Spark
    Connect nothing is forwarded: the server's Python workers have the server's environment.
    """
    if is_connect(spark):
        return
    names = STORAGE_SETTINGS + (LOCAL_CREDENTIALS if is_local(spark) else ())
    environment = spark.sparkContext.environment
    for name in names:
        if name in os.environ:
            environment[name] = os.environ[name]
        else:
            environment.pop(name, None)
