"""A driver program for the standalone-cluster tests (run by ``python`` or ``spark-submit``); prints JSON.

``--source``: ingest it into ``--lake`` with the public API (``stlake.ingest``). ``--queries``: SQL over the
lake's views, then ``pairs`` and an HVG panel, all as Spark jobs on the cluster. ``--probe N``: N tasks
that record which Python and which ``stlake`` the executors run, and the ``PYTHONPATH`` they see.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional


def probe(spark: Any, tasks: int) -> list[dict[str, Any]]:
    """What the executors' Python workers import: one record per task (its executor's view)."""
    import pandas as pd

    def record(frames: Any) -> Any:
        import os
        import sys

        from pyspark import SparkFiles, TaskContext

        import stlake
        for frame in frames:
            yield pd.DataFrame({
                "partition": frame["id"], "stlake": stlake.__file__, "python": sys.executable,
                "prefix": sys.prefix, "pythonpath": os.environ.get("PYTHONPATH", ""), "cwd": os.getcwd(),
                "stage": TaskContext.get().stageId(), "spark_files": SparkFiles.getRootDirectory()})

    schema = ("partition long, stlake string, python string, prefix string, pythonpath string, cwd string, "
              "stage int, spark_files string")
    frame = spark.range(tasks, numPartitions=tasks).mapInPandas(record, schema)
    return [row.asDict() for row in frame.collect()]


def main(argv: Optional[list[str]] = None) -> int:
    """Run what the flags ask for on ``--master`` (or spark-submit's master); print the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--master")
    parser.add_argument("--source")
    parser.add_argument("--layout", action="append", default=[], help="ingest only these layouts")
    parser.add_argument("--queries", action="store_true")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--probe", type=int, default=0)
    args = parser.parse_args(argv)

    from stlake import IngestOptions, ingest, spark_session
    spark = spark_session("stlake-cluster-job", args.master)
    out: dict[str, Any] = {"app_id": spark.sparkContext.applicationId, "spark_version": spark.version}
    if args.source:
        report = ingest(spark, IngestOptions(source=args.source, lake=args.lake, layouts=tuple(args.layout)))
        out["report"] = json.loads(report.to_json())
    if args.queries:
        from stlake.sql import run_sql, table_route
        from stlake.stream.demo import ensure_pairs_and_panel
        out["route"] = table_route(spark, args.lake)
        rows = run_sql(spark, args.lake, "SELECT technology, COUNT(*) AS n FROM spots GROUP BY technology")
        out["spots_per_technology"] = {r.technology: r.n for r in rows.collect()}
        rows = run_sql(spark, args.lake, "SELECT slide_id, reason FROM rejects WHERE severity = 'error'")
        out["errors"] = {r.slide_id: r.reason for r in rows.collect()}
        out["panel"] = ensure_pairs_and_panel(args.lake, k=args.k, spark=spark)
    if args.probe:
        out["probe"] = probe(spark, args.probe)
    spark.stop()
    print("RESULT " + json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
