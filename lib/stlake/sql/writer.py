"""Write a Spark DataFrame into a lake table without Delta's jars.

Each Spark task turns its partition's Arrow batches into Parquet files in the table folder
(``mapInArrow``) and returns one small row per file; the driver commits them in one delta-rs
transaction (``tables.commit``), replacing the rows of the given slides.

Every file of a table with a ``slide_id`` column holds one slide: the frame is repartitioned by
``slide_id`` and sorted within partitions, and the writer starts a new file whenever ``slide_id``
changes (a hash partition may hold several slides).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from stlake.lake import schemas, tables

SLIDE_COLUMN = "slide_id"
FILE_ROW = tables.DataFile.arrow_schema()  # what each task returns: one row per file it wrote
PartitionWriter = Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def _file_rows(files: list[tables.DataFile]) -> pa.RecordBatch:
    """The records of the files a task wrote, as one Arrow batch of ``FILE_ROW`` rows."""
    return pa.RecordBatch.from_pylist([f.to_row() for f in files], schema=FILE_ROW)


def slide_runs(batch: pa.RecordBatch) -> Iterator[tuple[Optional[str], pa.RecordBatch]]:
    """(slide_id, rows) of each run of consecutive rows with one slide_id (the whole batch without the column)."""
    if SLIDE_COLUMN not in batch.schema.names or batch.num_rows == 0:
        yield None, batch
        return
    values = batch.column(SLIDE_COLUMN).to_numpy(zero_copy_only=False)
    bounds = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), batch.num_rows]
    for start, stop in zip(bounds, bounds[1:]):
        yield values[start], batch.slice(start, stop - start)


def _partition_id() -> int:
    """The Spark partition this task writes (0 outside a Spark task)."""
    from pyspark import TaskContext
    context = TaskContext.get()
    return context.partitionId() if context else 0


def _writer(lake: str, table_name: str, run_id: str) -> PartitionWriter:
    """The ``mapInArrow`` function of a table: writes a partition's rows, returns its file records."""
    schema = schemas.TABLES[table_name]

    def write_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        part = _partition_id()
        buffered: list[pa.RecordBatch] = []
        files: list[tables.DataFile] = []
        current: Optional[str] = None
        size = 0

        def flush() -> None:
            """Write the buffered rows as the partition's next file(s)."""
            nonlocal buffered, size
            files.extend(_flush(lake, table_name, schema, buffered, f"{run_id}-p{part:05d}-{len(files):03d}"))
            buffered, size = [], 0

        for batch in batches:
            for slide, rows in slide_runs(batch):
                if buffered and slide != current:  # a new slide: a new file
                    flush()
                buffered.append(rows)
                current, size = slide, size + rows.nbytes
                if size >= schemas.FILE_BYTES:
                    flush()
        if buffered:
            flush()
        yield _file_rows(files)

    return write_partition


def _flush(lake: str, table_name: str, schema: pa.Schema, batches: list[pa.RecordBatch],
           tag: str) -> list[tables.DataFile]:
    """Write ``batches`` (cast to the table's schema) as data files; none when they hold no rows."""
    table = pa.Table.from_batches(batches).select(schema.names).cast(schema)
    return tables.write_data_files(lake, table_name, table, tag) if table.num_rows else []


def by_slide(frame: DataFrame, table_name: str) -> DataFrame:
    """``frame`` repartitioned by slide and sorted within partitions, so each slide's rows are consecutive."""
    if SLIDE_COLUMN not in schemas.TABLES[table_name].names:
        return frame
    return frame.repartition(SLIDE_COLUMN).sortWithinPartitions(SLIDE_COLUMN)


def write_dataframe(frame: DataFrame, lake: str, table_name: str, run_id: str,
                    replace_slides: Optional[Iterable[str]] = None, replace_all: bool = False,
                    metadata: Optional[dict[str, str]] = None) -> int:
    """Write ``frame`` (columns of the table's schema) as the table's new rows; returns the new version.

    Files hold one slide each (see the module docstring). ``replace_all`` drops every current row of
    the table in the same commit; ``metadata`` goes into the commit (see ``tables.commit``).
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    from stlake.spark import forward_storage_environment
    forward_storage_environment(frame.sparkSession)
    rows = by_slide(frame, table_name).mapInArrow(_writer(lake, table_name, run_id),
                                                  from_arrow_schema(FILE_ROW)).collect()
    files = [tables.DataFile(**row.asDict()) for row in rows]
    return tables.commit(lake, table_name, files, replace_slides or (), run_id, operation=f"write {table_name}",
                         replace_all=replace_all, metadata=metadata)


__all__ = ["write_dataframe"]
