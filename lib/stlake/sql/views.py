"""Spark SQL over the lake: every table registered as a view.

Route per table, best first: delta-spark when its jars are loaded (native Delta reader); otherwise the
files of the table's current Delta snapshot (its active add actions, as delta-rs reads them), handed
to Spark's Parquet reader for local lakes, or, for an ``s3://`` lake when Spark has no ``s3a`` connector,
read by pyarrow in Spark tasks: stlake's Python data source on Spark 4, ``mapInArrow`` over the file
list on Spark 3.5 (which has no Python data source API).
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from stlake.lake import schemas, storage, tables
from stlake.spark import forward_storage_environment, has_delta_spark, has_python_data_sources, has_s3a


def spark_uri(uri: str) -> str:
    """``s3://`` -> ``s3a://`` for Hadoop; local paths as ``file://``."""
    if storage.is_s3(uri):
        return "s3a://" + uri.split("://", 1)[1]
    return "file://" + storage.normalize(uri)


def table_route(spark: SparkSession, lake: str) -> str:
    """How tables of ``lake`` are read here: ``delta-spark``, ``snapshot-parquet`` or ``snapshot-pyarrow``."""
    remote = storage.is_s3(lake)
    if has_delta_spark(spark) and (not remote or has_s3a(spark)):
        return "delta-spark"
    if remote and not has_s3a(spark):
        return "snapshot-pyarrow"
    return "snapshot-parquet"


def read_table(spark: SparkSession, lake: str, name: str, route: Optional[str] = None) -> DataFrame:
    """One table of the lake as a DataFrame (its current snapshot)."""
    route = route or table_route(spark, lake)
    forward_storage_environment(spark)
    uri = tables.table_uri(lake, name)
    if route == "delta-spark":
        return spark.read.format("delta").load(spark_uri(uri))
    schema = from_arrow_schema(schemas.TABLES[name])
    files = tables.active_files(lake, name)
    if not files:
        return spark.createDataFrame([], schema)
    if route == "snapshot-pyarrow":
        return read_snapshot_pyarrow(spark, files, schemas.TABLES[name])
    return spark.read.schema(schema).parquet(*[spark_uri(f) for f in files])


def read_snapshot_pyarrow(spark: SparkSession, files: list[str], schema: pa.Schema) -> DataFrame:
    """``files`` read by pyarrow in Spark tasks: the Python data source on Spark 4, ``mapInArrow`` before."""
    if has_python_data_sources(spark):
        from stlake.sql.datasource import read_snapshot_files
        return read_snapshot_files(spark, files, schema)
    from stlake.sql.filelist import read_files_by_index
    return read_files_by_index(spark, files, schema)


def existing_tables(lake: str) -> list[str]:
    """Names of the lake's tables that exist (have a Delta log)."""
    return [name for name in schemas.TABLES if tables.open_table(lake, name) is not None]


def register_views(spark: SparkSession, lake: str) -> dict[str, str]:
    """Register every existing table of ``lake`` as a temp view; returns {view: route}."""
    route = table_route(spark, lake)
    views = {}
    for name in existing_tables(lake):
        read_table(spark, lake, name, route).createOrReplaceTempView(name)
        views[name] = route
    return views


def run_sql(spark: SparkSession, lake: str, query: str) -> DataFrame:
    """Register the lake's views and run ``query``."""
    register_views(spark, lake)
    return spark.sql(query)
