"""The ``pairs`` table: each spot's tile joined with its expression, its slide's species/tissue, its labels.

Joined once by a small Spark job (``spots ⋈ expression ⋈ slides`` on ``(slide_id, spot_id)``, with the
spot's labels of every annotation set from ``annotations`` as two parallel lists), so the
training stream reads one table and never joins per batch. Written with
:func:`stlake.sql.writer.write_dataframe`, which puts one slide in every file (as in every stlake
table) and removes the rebuilt slides' previous rows in the same commit — re-running never duplicates.

Every build records the versions of the tables it joins (:data:`SOURCE_TABLES`) it read (``stlake.sources``
in the commit), so a later build can rebuild only the slides whose rows changed since
(:func:`stale_slides`, ``incremental=True``) and the stream can tell when ``pairs`` is out of date.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from stlake.lake import lineage, schemas, tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The command that builds ``pairs``, named by every "no pairs table" error.
BUILD_COMMAND = "stlake pairs"
SPOT_COLUMNS = ["slide_id", "spot_id", "technology", "label", "tissue_fraction", "tile", "tile_format"]
EXPRESSION_COLUMNS = ["slide_id", "spot_id", "gene_ids", "counts", "total_counts"]
SLIDE_COLUMNS = ["slide_id", "species", "tissue"]
#: The tables ``pairs`` is built from (their versions are recorded in every ``pairs`` commit).
SOURCE_TABLES = ("spots", "expression", "slides", "annotations")
SOURCES_KEY = "sources"


def missing_table_error(lake: str, table: str) -> FileNotFoundError:
    """The error for a table that is not in ``lake`` (a ``MissingTable``); for ``pairs`` it says how to build it."""
    from stlake.errors import MissingTable
    hint = f"build it with `{BUILD_COMMAND} --lake {lake}`" if table == "pairs" else "`stlake tables` lists the tables"
    return MissingTable(f"no Delta table {table!r} in {lake}", hint)


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
    sets = label_sets_frame(spark, lake, slide_ids)
    if sets is not None:
        joined = joined.join(sets, ["slide_id", "spot_id"], "left")
    else:
        joined = joined.withColumn("label_sets", F.lit(None).cast("array<string>")) \
            .withColumn("set_labels", F.lit(None).cast("array<string>"))
    return joined.select(*schemas.PAIRS.names)


def label_sets_frame(spark: SparkSession, lake: str, slide_ids: Optional[Sequence[str]] = None
                     ) -> Optional[DataFrame]:
    """Per labelled spot: its sets' names (sorted) and their normalised labels; None without ``annotations``."""
    from pyspark.sql import functions as F

    from stlake.sql import read_table
    if tables.open_table(lake, "annotations") is None:
        return None
    rows = read_table(spark, lake, "annotations").select("slide_id", "spot_id", "set", "label")
    if slide_ids is not None:
        rows = rows.where(F.col("slide_id").isin(list(slide_ids)))
    grouped = rows.groupBy("slide_id", "spot_id").agg(
        F.sort_array(F.collect_list(F.struct("set", "label"))).alias("sets"))
    return grouped.select("slide_id", "spot_id", F.col("sets.set").alias("label_sets"),
                          F.col("sets.label").alias("set_labels"))


def empty_frame(spark: SparkSession) -> DataFrame:
    """No rows, the columns of ``schemas.PAIRS`` (nothing is read from the lake)."""
    from pyspark.sql.pandas.types import from_arrow_schema
    return spark.createDataFrame([], from_arrow_schema(schemas.PAIRS))


def recorded_sources(lake: str, version: Optional[int] = None) -> Optional[dict[str, int]]:
    """The source table versions the ``pairs`` snapshot (current, or ``version``) was built from, if recorded."""
    table = tables.open_table(lake, "pairs")
    if table is None:
        return None
    newest = table.version() if version is None else version
    for entry in sorted(table.history(), key=lambda e: -e["version"]):
        if entry["version"] <= newest and f"stlake.{SOURCES_KEY}" in entry:
            return {str(k): int(v) for k, v in json.loads(entry[f"stlake.{SOURCES_KEY}"]).items()}
    return None


class StalePairs(RuntimeError):
    """``pairs`` is older than the rows of the tables it joins (a strict stream refuses it)."""


def check_fresh(lake: str, version: Optional[int] = None, slide_ids: Optional[Sequence[str]] = None) -> str:
    """"" when ``pairs`` (at ``version``) is up to date for ``slide_ids`` (all when None), else why it is not.

    A missing ``pairs`` is not judged here (its readers say how to build it).
    """
    if tables.open_table(lake, "pairs") is None:
        return ""
    stale = stale_slides(lake, version)
    if stale is None:
        return (f"`pairs` in {lake} does not record the table versions it was built from; "
                f"rebuild it with `{BUILD_COMMAND}`")
    if slide_ids is not None:
        stale &= set(slide_ids)
    if not stale:
        return ""
    shown = ", ".join(sorted(stale)[:5]) + (", ..." if len(stale) > 5 else "")
    return (f"`pairs` in {lake} is older than {'/'.join(SOURCE_TABLES)} for {len(stale)} slides ({shown}); "
            f"rebuild it with `{BUILD_COMMAND}`")


def stale_slides(lake: str, version: Optional[int] = None) -> Optional[set[str]]:
    """Slides whose rows in the :data:`SOURCE_TABLES` changed since ``pairs`` was built.

    None when ``pairs`` does not say what it was built from (or that can no longer be read): all are stale.
    """
    sources = recorded_sources(lake, version)
    return None if sources is None else lineage.changed_slides(lake, sources)


def _sources_after(lake: str, rebuilt: Optional[set[str]], versions: dict[str, int]) -> dict[str, int]:
    """The sources to record after rebuilding ``rebuilt`` slides (None = all) from ``versions``.

    A partial rebuild may claim the new versions only when no other slide was stale before it.
    """
    if rebuilt is None:
        return versions
    stale = stale_slides(lake)
    if stale is not None and stale <= rebuilt:
        return versions
    return recorded_sources(lake) or {}


def build_pairs(spark: SparkSession, lake: str, run_id: Optional[str] = None,
                slide_ids: Optional[Sequence[str]] = None, incremental: bool = False) -> int:
    """(Re)build ``pairs`` for ``slide_ids`` (all landed slides when None); returns the table version.

    Only slides listed in ``slides`` (complete ones) are joined. With ``slide_ids=None`` every current
    row is replaced (slides gone from the lake disappear from ``pairs`` too); otherwise the rows of the
    given slides are. ``incremental`` (with ``slide_ids=None``) rebuilds only the slides whose rows
    changed since the last build, and commits nothing when none did.
    """
    if incremental and slide_ids is None:
        slide_ids = incremental_plan(lake)
        if slide_ids == []:
            return pairs_version(lake)
    return _write_pairs(spark, lake, run_id or tables.new_run_id("pairs"), slide_ids)


def incremental_plan(lake: str) -> Optional[list[str]]:
    """The slides an incremental build rebuilds (empty: ``pairs`` is up to date); None: all of them."""
    if tables.open_table(lake, "pairs") is None:
        return None
    stale = stale_slides(lake)
    return None if stale is None else sorted(stale)


def pairs_version(lake: str) -> int:
    """The current version of ``pairs`` (which exists)."""
    table = tables.open_table(lake, "pairs")
    if table is None:
        raise missing_table_error(lake, "pairs")
    return table.version()


def _write_pairs(spark: SparkSession, lake: str, run_id: str, slide_ids: Optional[Sequence[str]]) -> int:
    """Join and commit the rows of ``slide_ids`` (all when None), recording the source versions read."""
    from stlake.sql.writer import write_dataframe
    versions = lineage.current_versions(lake, SOURCE_TABLES)  # before reading: a race only over-rebuilds later
    landed = tables.slide_ids(lake, "slides")
    chosen = landed if slide_ids is None else sorted(set(slide_ids) & set(landed))
    frame = pairs_frame(spark, lake, None if slide_ids is None else chosen) if chosen else empty_frame(spark)
    sources = _sources_after(lake, None if slide_ids is None else set(slide_ids), versions)
    metadata = {SOURCES_KEY: json.dumps(sources, sort_keys=True)} if sources else None
    if slide_ids is None:
        return write_dataframe(frame, lake, "pairs", run_id, replace_all=True, metadata=metadata)
    return write_dataframe(frame, lake, "pairs", run_id, replace_slides=set(slide_ids), metadata=metadata)
