"""What ``make demo`` shows after ingest: the lake's tables, a few SQL queries, one streamed batch."""
from __future__ import annotations

import argparse

from stlake import queries
from stlake.spark import spark_session
from stlake.sql import register_views


def show_sql(lake: str) -> None:
    spark = spark_session("stlake-demo")
    views = register_views(spark, lake)
    print(f"\nTables registered as Spark SQL views ({sorted(set(views.values()))[0]} route):", ", ".join(sorted(views)))
    slide = spark.sql("SELECT slide_id FROM slides ORDER BY n_spots DESC LIMIT 1").first()[0]
    label = spark.sql("SELECT label FROM annotations GROUP BY label ORDER BY COUNT(*) DESC LIMIT 1").first()
    shown = [("Spots per tissue and technology", queries.SPOTS_PER_TISSUE_AND_TECHNOLOGY),
             (f"Top genes of slide {slide}", queries.TOP_GENES_OF_SLIDE.format(slide_id=slide, limit=10)),
             ("Annotation labels", queries.LABEL_COUNTS),
             ("What was rejected, and why", queries.REJECTS)]
    if label:
        shown.insert(2, (f"Tiles labelled '{label[0]}'", queries.TILES_OF_LABEL.format(label=label[0], limit=5)))
    for title, query in shown:
        print(f"\n== {title}\n{query.strip()}")
        spark.sql(query).show(20, truncate=60)


def show_stream(lake: str) -> None:
    try:
        from stlake.stream.demo import show_batch
    except ImportError as error:
        print(f"(streaming demo skipped: {error})")
        return
    show_batch(lake)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", default="./lake")
    args = parser.parse_args()
    show_sql(args.lake)
    show_stream(args.lake)


if __name__ == "__main__":
    main()
