"""``stlake export``'s Spark job: one task per slide, each writing ``<out>/<slide_id>.h5ad``.

Only DataFrame APIs are used (``spark.range`` with one partition per slide, ``mapInArrow``), so the job
runs on a classic session and on Spark Connect alike. Slide ids follow ``SAFE_NAME``, so they are safe
file names. A slide that fails is reported in its result row (``error``); the others are written.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

import pyarrow as pa

from stlake.export.anndata import ExportError, to_anndata, write_h5ad
from stlake.lake import storage, tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What one slide's task wrote (or why it could not)."""

    slide_id: str
    path: str
    n_obs: int = 0
    n_vars: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: Optional[str] = None


RESULT_SCHEMA = pa.schema([("slide_id", pa.string()), ("path", pa.string()), ("n_obs", pa.int64()),
                           ("n_vars", pa.int64()), ("bytes", pa.int64()), ("seconds", pa.float64()),
                           ("error", pa.string())])


def output_uri(out: str, slide_id: str) -> str:
    """``<out>/<slide_id>.h5ad`` (slide ids are safe names, see ``tables.SAFE_NAME``)."""
    return storage.join(storage.normalize(out), f"{tables.check_name('slide id', slide_id)}.h5ad")


def export_slide(lake: str, slide_id: str, out: str) -> ExportResult:
    """Write one slide's ``.h5ad``; never raises (a failure is the result's ``error``)."""
    started, uri = time.perf_counter(), output_uri(out, slide_id)
    try:
        adata = to_anndata(lake, slide_id)
        size = write_h5ad(adata, uri)
    except Exception as error:  # one slide's failure must not stop the others
        log.warning("export of slide %s failed", slide_id, exc_info=error)
        return ExportResult(slide_id, uri, seconds=time.perf_counter() - started,
                            error=f"{type(error).__name__}: {storage.describe_error(error)}")
    return ExportResult(slide_id, uri, adata.n_obs, adata.n_vars, size, round(time.perf_counter() - started, 3))


def select_slides(spark: Optional[SparkSession], lake: str, slide_ids: Sequence[str] = (),
                  where: Optional[str] = None) -> list[str]:
    """The slides to export: ``slide_ids``, else those of ``slides`` matching ``where`` (Spark SQL), else all.

    ``ExportError`` when the lake has no ``slides`` table, a named slide is not in it, or nothing matches.
    """
    if tables.open_table(lake, "slides") is None:
        raise ExportError(f"no lake at {storage.normalize(lake)} (it has no 'slides' table)")
    known = set(tables.read_table(lake, "slides", columns=["slide_id"]).column("slide_id").to_pylist())
    if slide_ids:
        unknown = sorted(set(slide_ids) - known)
        if unknown:
            raise ExportError(f"not in the lake's slides table: {', '.join(map(repr, unknown[:5]))}"
                              + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        chosen = sorted(set(slide_ids))
    elif where:
        if spark is None:
            raise ValueError("--where needs a Spark session")
        from stlake.sql import read_table
        chosen = sorted({row.slide_id for row in read_table(spark, lake, "slides").where(where)
                         .select("slide_id").collect()})
    else:
        chosen = sorted(known)
    if not chosen:
        raise ExportError(f"no slide of the lake matches {where!r}" if where else "the lake holds no slide")
    return chosen


def export_anndata(spark: SparkSession, lake: str, out: str, slide_ids: Sequence[str] = (),
                   where: Optional[str] = None) -> list[ExportResult]:
    """Spark job: one ``.h5ad`` per selected slide in ``out`` (local folder or ``s3://`` prefix), a task each."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from stlake.spark import forward_storage_environment
    chosen = select_slides(spark, lake, slide_ids, where)
    problem = storage.folder_problem(out)
    if problem:
        raise ExportError(f"output {storage.normalize(out)} {problem}")
    forward_storage_environment(spark)

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                result = export_slide(lake, chosen[index], out)
                yield pa.RecordBatch.from_pylist([asdict(result)], schema=RESULT_SCHEMA)

    frame = spark.range(0, len(chosen), 1, numPartitions=len(chosen))
    rows = frame.mapInArrow(run, from_arrow_schema(RESULT_SCHEMA)).collect()
    return sorted((ExportResult(**row.asDict()) for row in rows), key=lambda r: r.slide_id)
