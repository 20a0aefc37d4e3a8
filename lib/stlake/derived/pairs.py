"""The ``pairs`` table: each spot's tile joined with its expression and its slide's species/tissue.

Joined once by a small Spark job (``spots ⋈ expression ⋈ slides`` on ``(slide_id, spot_id)``), so the
training stream reads one table and never joins per batch. Written with
:func:`stlake.sql.writer.write_dataframe`, which puts one slide in every file (as in every stlake
table) and removes the rebuilt slides' previous rows in the same commit — re-running never duplicates.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from stlake.lake import schemas

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The command that builds ``pairs``, named by every "no pairs table" error.
BUILD_COMMAND = "stlake pairs"
SPOT_COLUMNS = ["slide_id", "spot_id", "technology", "label", "tissue_fraction", "tile", "tile_format"]
EXPRESSION_COLUMNS = ["slide_id", "spot_id", "gene_ids", "counts", "total_counts"]
SLIDE_COLUMNS = ["slide_id", "species", "tissue"]


def missing_table_error(lake: str, table: str) -> FileNotFoundError:
    """The error for a table that is not in ``lake``; for ``pairs`` it says how to build it."""
    hint = f" (build it with `{BUILD_COMMAND}`)" if table == "pairs" else ""
    return FileNotFoundError(f"no Delta table {table!r} in {lake}{hint}")


def pairs_frame(spark: SparkSession, lake: str, slide_ids: Optional[Sequence[str]] = None) -> DataFrame:
    """The joined rows (columns of ``schemas.PAIRS``), optionally for some slides only."""
    from pyspark.sql import functions as F

    from stlake.sql import read_table
    parts = [read_table(spark, lake, "spots").select(*SPOT_COLUMNS),
             read_table(spark, lake, "expression").select(*EXPRESSION_COLUMNS),
             read_table(spark, lake, "slides").select(*SLIDE_COLUMNS)]
    if slide_ids is not None:
        parts = [p.where(F.col("slide_id").isin(list(slide_ids))) for p in parts]
    spots, expression, slides = parts
    joined = spots.join(expression, ["slide_id", "spot_id"]).join(F.broadcast(slides), "slide_id")
    return joined.select(*schemas.PAIRS.names)


def empty_frame(spark: SparkSession) -> DataFrame:
    """No rows, the columns of ``schemas.PAIRS`` (nothing is read from the lake)."""
    from pyspark.sql.pandas.types import from_arrow_schema
    return spark.createDataFrame([], from_arrow_schema(schemas.PAIRS))


def build_pairs(spark: SparkSession, lake: str, run_id: Optional[str] = None,
                slide_ids: Optional[Sequence[str]] = None) -> int:
    """(Re)build ``pairs`` for ``slide_ids`` (all landed slides when None); returns the table version.

    Only slides listed in ``slides`` (complete ones) are joined. With ``slide_ids=None`` every current
    row is replaced (slides gone from the lake disappear from ``pairs`` too); otherwise the rows of the
    given slides are.
    """
    from stlake.lake import tables
    from stlake.sql.writer import write_dataframe
    run_id = run_id or tables.new_run_id("pairs")
    landed = tables.slide_ids(lake, "slides")
    chosen = landed if slide_ids is None else sorted(set(slide_ids) & set(landed))
    frame = pairs_frame(spark, lake, None if slide_ids is None else chosen) if chosen else empty_frame(spark)
    if slide_ids is None:
        return write_dataframe(frame, lake, "pairs", run_id, replace_all=True)
    return write_dataframe(frame, lake, "pairs", run_id, replace_slides=set(slide_ids))
