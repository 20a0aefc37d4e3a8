"""A Spark Python data source over a Delta snapshot's files, read with pyarrow (local or S3); Spark 4 only.

Used for SQL over an ``s3://`` lake when Spark has no ``s3a`` connector: the driver lists the
snapshot's active files from the Delta log (delta-rs); each Spark task reads one file through
pyarrow's S3 filesystem and yields Arrow record batches. Credentials and the endpoint come from the
executors' environment (the standard AWS chain), never from the query plan.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from stlake.sql.filelist import file_batches


class FilePartition(InputPartition):
    """One Parquet file of the snapshot."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.uri = uri


class SnapshotReader(DataSourceReader):
    """Reads some columns of the snapshot's files, one Spark partition per file."""

    def __init__(self, files: list[str], columns: list[str]) -> None:
        self.files, self.columns = files, columns

    def partitions(self) -> Sequence[InputPartition]:
        """One :class:`FilePartition` per file."""
        return [FilePartition(uri) for uri in self.files]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """The record batches of one file (a :class:`FilePartition`)."""
        if not isinstance(partition, FilePartition):
            raise TypeError(f"expected a FilePartition, got {type(partition).__name__}")
        yield from file_batches(partition.uri, self.columns)


class SnapshotSource(DataSource):
    """``spark.read.format("stlake_snapshot").option("files", json).option("schema", ddl).load()``."""

    @classmethod
    def name(cls) -> str:
        """The format name of ``spark.read.format``."""
        return "stlake_snapshot"

    def schema(self) -> str:
        """The table's schema (DDL), as given in the options."""
        return self.options["schema"]

    def reader(self, schema: StructType) -> DataSourceReader:
        """A reader of the files listed in the options, for the columns of ``schema``."""
        return SnapshotReader(json.loads(self.options["files"]), [field.name for field in schema.fields])


def read_snapshot_files(spark: SparkSession, files: list[str], schema: pa.Schema) -> DataFrame:
    """A DataFrame over ``files`` (the snapshot's active files) with the table's ``schema``."""
    spark.dataSource.register(SnapshotSource)
    return (spark.read.format(SnapshotSource.name()).option("files", json.dumps(files))
            .option("schema", ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in from_arrow_schema(schema)))
            .load())
