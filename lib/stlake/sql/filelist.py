"""A Delta snapshot's files as a DataFrame on any Spark >= 3.3: ``mapInArrow`` over the file list.

The route for SQL over an ``s3://`` lake without ``s3a`` where Spark has no Python data source API
(Spark 3.5: EMR 7.x, Databricks runtimes before 15): the driver lists the snapshot's active files from the
Delta log (delta-rs), ``spark.range(n)`` makes one partition per file, and each task reads its file with
pyarrow (local or S3, credentials from the executor's environment). Spark 4 uses the data source
(:mod:`stlake.sql.datasource`), which reads the same files with the same function.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

BATCH_ROWS = 1024


def file_batches(uri: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The record batches of one Parquet file of the lake, ``BATCH_ROWS`` rows at a time."""
    from stlake.lake import storage
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def read_files_by_index(spark: SparkSession, files: list[str], schema: pa.Schema) -> DataFrame:
    """A DataFrame over ``files`` (the snapshot's active files) with the table's ``schema``, one task per file."""
    columns = schema.names

    def read(ids: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in ids:
            for index in batch.column(0).to_pylist():
                for part in file_batches(files[index], columns):
                    yield pa.RecordBatch.from_arrays(part.columns, schema=schema)

    return spark.range(len(files), numPartitions=len(files)).mapInArrow(read, from_arrow_schema(schema))
