"""What ``make demo`` shows after ingest: the lake's tables, a few SQL queries, one streamed batch.

``--s3 DATA_DIR`` (``make demo-s3``) runs the whole demo against a local S3 server (SeaweedFS): the
synthetic slides in ``DATA_DIR`` are uploaded to ``s3://lake/raw``, ingested into ``s3://lake/lake``,
queried and streamed from the bucket. A command-line entry point: it prints what it shows, and the
progress of building the streamed tables (logged by :mod:`stlake.stream.demo`) goes to stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile

from stlake.spark import spark_session
from stlake.sql import queries, register_views


def show_sql(lake: str) -> None:
    """Register the lake's tables as Spark SQL views and print a few example queries with their results."""
    spark = spark_session("stlake-demo")
    views = register_views(spark, lake)
    routes = sorted(set(views.values()))
    print(f"\nTables registered as Spark SQL views ({routes[0]} route):", ", ".join(sorted(views)))
    biggest = spark.sql("SELECT slide_id FROM slides ORDER BY n_spots DESC LIMIT 1").first()
    if biggest is None:
        raise ValueError(f"no slides in {lake}: ingest some first")
    slide = biggest[0]
    label = spark.sql(queries.LABEL_COUNTS).first()
    shown = [("Spots per tissue and technology", queries.SPOTS_PER_TISSUE_AND_TECHNOLOGY),
             (f"Top genes of slide {slide}", queries.TOP_GENES_OF_SLIDE.format(slide_id=slide, limit=10)),
             ("Annotation labels (spots.label)", queries.LABEL_COUNTS),
             ("Labels per cohort and annotation set", queries.LABEL_COUNTS_PER_COHORT),
             ("What was rejected, and why", queries.REJECTS)]
    if label:
        shown.insert(2, (f"Tiles labelled '{label[0]}'", queries.TILES_OF_LABEL.format(label=label[0], limit=5)))
    for title, query in shown:
        print(f"\n== {title}\n{query.strip()}")
        spark.sql(query).show(20, truncate=60)


def show_stream(lake: str) -> None:
    """Stream and print one training batch (skipped when torch / Petastorm are not installed)."""
    try:
        from stlake.stream.demo import show_batch
    except ImportError as error:
        print(f"(streaming demo skipped: {error})")
        return
    show_batch(lake)


def upload_folder(local_dir: str, uri: str) -> int:
    """Copy a local folder to an ``s3://`` prefix, one object per file; returns the number of files."""
    from stlake.lake import storage
    count = 0
    for folder, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                storage.write_bytes(storage.join(uri, os.path.relpath(path, local_dir)), handle.read())
            count += 1
    return count


def run_s3_demo(data_dir: str) -> None:
    """Start SeaweedFS on 127.0.0.1, upload ``data_dir``, ingest into the bucket, query and stream from it."""
    from stlake.ingestion.driver import ingest
    from stlake.ingestion.options import IngestOptions
    from stlake.testing.s3server import S3Server
    with tempfile.TemporaryDirectory(prefix="stlake-s3-") as server_dir, \
            S3Server(server_dir, buckets=["lake"]) as server:
        os.environ.update(server.env())
        print(f"S3 server (SeaweedFS) at {server.endpoint}; uploading {data_dir} to s3://lake/raw")
        print(f"uploaded {upload_folder(data_dir, 's3://lake/raw')} files")
        report = ingest(spark_session("stlake-demo-s3"),
                        IngestOptions(source="s3://lake/raw/manifest.csv", lake="s3://lake/lake"))
        print(f"landed {len(report.landed)} slides, rejected {len(report.rejected)}; rows {report.rows}")
        show_sql("s3://lake/lake")
        show_stream("s3://lake/lake")


def show_progress_logs() -> None:
    """Show the demo's progress lines (INFO of ``stlake.stream.demo``) as plain messages on stderr."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("stlake.stream.demo").setLevel(logging.INFO)


def main() -> None:
    """``python -m stlake.demo [--lake LAKE | --s3 DATA_DIR]``."""
    show_progress_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", default="./lake")
    parser.add_argument("--s3", metavar="DATA_DIR", help="run the demo on a local S3 server with these raw slides")
    args = parser.parse_args()
    if args.s3:
        run_s3_demo(args.s3)
        return
    show_sql(args.lake)
    show_stream(args.lake)


if __name__ == "__main__":
    main()
