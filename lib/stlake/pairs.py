"""The ``pairs`` table: each spot's tile joined with its expression and its slide's species/tissue.

Joined once by a small Spark job (``spots ⋈ expression ⋈ slides`` on ``(slide_id, spot_id)``), so the
training stream reads one table and never joins per batch. Every output file holds one slide (as in
every stlake table): rows are repartitioned so that each Spark partition holds exactly one slide, and
written with :func:`stlake.sparkwrite.write_dataframe`, which removes the rebuilt slides' previous rows
in the same commit — re-running never duplicates.
"""
from __future__ import annotations

import time
import uuid
from typing import Optional, Sequence

from stlake import schemas

SPOT_COLUMNS = ["slide_id", "spot_id", "technology", "label", "tissue_fraction", "tile", "tile_format"]
EXPRESSION_COLUMNS = ["slide_id", "spot_id", "gene_ids", "counts", "total_counts"]
SLIDE_COLUMNS = ["slide_id", "species", "tissue"]
PARTITION_KEY = "_slide_part"


def partition_keys(spark, n: int) -> list[int]:
    """For each partition ``p < n`` an int key that ``repartition(n, key)`` sends to partition ``p``.

    Spark hash-partitions by ``pmod(murmur3(key, seed 42), n)`` — what SQL's ``hash()`` computes — so
    keys are chosen from ``hash()`` itself: one key per partition, whatever the hashing collisions.
    """
    from pyspark.sql import functions as F
    candidates = spark.range(0, max(64 * n, 1024)).select(F.col("id").cast("int").alias("key"))
    rows = candidates.select("key", F.expr(f"pmod(hash(key), {n})").alias("p")).groupBy("p") \
        .agg(F.min("key").alias("key")).collect()
    keys = {row["p"]: row["key"] for row in rows}
    missing = [p for p in range(n) if p not in keys]
    if missing:
        raise RuntimeError(f"no hash key found for partitions {missing[:5]}")
    return [keys[p] for p in range(n)]


def one_slide_per_partition(frame, slide_ids: Sequence[str]):
    """``frame`` repartitioned into ``len(slide_ids)`` partitions holding exactly one slide each.

    (A plain ``repartition("slide_id")`` hashes several slides into one partition, and the writer
    would then mix them in one file.) An explicit partition count is never coalesced by AQE.
    """
    from pyspark.sql import functions as F
    spark = frame.sparkSession
    keys = partition_keys(spark, len(slide_ids))
    mapping = spark.createDataFrame(list(zip(slide_ids, keys)), f"slide_id string, {PARTITION_KEY} int")
    keyed = frame.join(F.broadcast(mapping), "slide_id")
    return keyed.repartition(len(slide_ids), PARTITION_KEY).drop(PARTITION_KEY)


def pairs_frame(spark, lake: str, slide_ids: Optional[Sequence[str]] = None):
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


def build_pairs(spark, lake: str, run_id: Optional[str] = None, slide_ids: Optional[Sequence[str]] = None) -> int:
    """(Re)build ``pairs`` for ``slide_ids`` (all landed slides when None); returns the table version.

    Only slides listed in ``slides`` (complete ones) are joined. With ``slide_ids=None`` every current
    row is replaced (slides gone from the lake disappear from ``pairs`` too); otherwise the rows of the
    given slides are.
    """
    from stlake import tables
    from stlake.sparkwrite import write_dataframe
    run_id = run_id or f"pairs-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    landed = sorted(set(tables.read_table(lake, "slides", columns=["slide_id"]).column("slide_id").to_pylist()))
    chosen = landed if slide_ids is None else sorted(set(slide_ids) & set(landed))
    if not chosen:
        frame = spark.createDataFrame([], pairs_frame(spark, lake, []).schema)
    else:
        frame = one_slide_per_partition(pairs_frame(spark, lake, None if slide_ids is None else chosen), chosen)
    if slide_ids is None:
        return write_dataframe(frame, lake, "pairs", run_id, replace_all=True)
    return write_dataframe(frame, lake, "pairs", run_id, replace_slides=set(slide_ids))
