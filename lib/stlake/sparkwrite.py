"""Write a Spark DataFrame into a lake table without Delta's jars.

Each Spark task turns its partition's Arrow batches into Parquet files in the table folder
(``mapInArrow``) and returns one small row per file; the driver commits them in one delta-rs
transaction (``tables.commit``), replacing the rows of the given slides.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import pyarrow as pa
from pyspark.sql import DataFrame

from stlake import schemas, tables

FILE_ROW = pa.schema([("table", pa.string()), ("path", pa.string()), ("size", pa.int64()),
                      ("num_records", pa.int64()), ("stats", pa.string()), ("modification_time", pa.int64()),
                      ("slide_id", pa.string())])


def _file_rows(files: list[tables.DataFile]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([f.__dict__ for f in files], schema=FILE_ROW)


def _writer(lake: str, table_name: str, run_id: str):
    schema = schemas.TABLES[table_name]

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext
        part = TaskContext.get().partitionId() if TaskContext.get() else 0
        buffered, files = [], []
        for batch in batches:
            buffered.append(batch)
            if sum(b.nbytes for b in buffered) >= schemas.FILE_BYTES:
                files += _flush(lake, table_name, schema, buffered, f"{run_id}-p{part:05d}-{len(files):03d}")
                buffered = []
        if buffered:
            files += _flush(lake, table_name, schema, buffered, f"{run_id}-p{part:05d}-{len(files):03d}")
        yield _file_rows(files)

    return write_partition


def _flush(lake: str, table_name: str, schema: pa.Schema, batches: list[pa.RecordBatch], tag: str):
    table = pa.Table.from_batches(batches).select(schema.names).cast(schema)
    return tables.write_data_files(lake, table_name, table, tag) if table.num_rows else []


def write_dataframe(frame: DataFrame, lake: str, table_name: str, run_id: str,
                    replace_slides: Optional[Iterable[str]] = None, replace_all: bool = False) -> int:
    """Write ``frame`` (columns of the table's schema) as the table's new rows; returns the new version.

    Partition the frame by slide (e.g. ``repartition("slide_id")``) beforehand so files hold one
    slide each. ``replace_all`` drops every current row of the table in the same commit.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    from stlake.spark import forward_storage_environment
    forward_storage_environment(frame.sparkSession)
    rows = frame.mapInArrow(_writer(lake, table_name, run_id), from_arrow_schema(FILE_ROW)).collect()
    files = [tables.DataFile(**row.asDict()) for row in rows]
    return tables.commit(lake, table_name, files, replace_slides or (), run_id, operation=f"write {table_name}",
                         replace_all=replace_all)


__all__ = ["write_dataframe"]
