"""``stlake export`` (registered into :mod:`stlake.cli` by ``register``)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

#: Exit codes: some slides could not be written / the lake, a slide or the output cannot be used.
EXIT_SLIDES_FAILED = 1
EXIT_RUN_ERROR = 3


def _ids(values: list[list[str]]) -> list[str]:
    """Slide ids of repeated, space- or comma-separated ``--slides`` values."""
    return [part.strip() for group in values or [] for value in group for part in value.split(",") if part.strip()]


def cmd_export(args: argparse.Namespace) -> int:
    """Write one ``.h5ad`` per slide with Spark; print the results as JSON (one line on stderr on errors)."""
    from pyspark.errors import AnalysisException

    from stlake.export.anndata import ExportError
    from stlake.export.job import export_anndata, select_slides
    try:
        select_slides(None, args.lake, _ids(args.slides), None)  # a missing lake or slide: before Spark starts
        from stlake.spark import spark_session
        results = export_anndata(spark_session("stlake-export", args.master), args.lake, args.out, _ids(args.slides),
                                 args.where)
    except (ExportError, ValueError) as error:
        print(f"stlake export: {error}", file=sys.stderr)
        return EXIT_RUN_ERROR
    except AnalysisException as error:  # a --where that Spark cannot parse or resolve: one line, no traceback
        print(f"stlake export: --where {args.where!r}: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_RUN_ERROR
    print(json.dumps([asdict(r) for r in results], indent=2))
    return EXIT_SLIDES_FAILED if any(r.error for r in results) else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``stlake`` command line."""
    export = sub.add_parser("export", help="slides of the lake -> one AnnData .h5ad each (Spark job)")
    export.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    export.add_argument("--out", required=True, help="folder or s3:// prefix for <slide_id>.h5ad files")
    export.add_argument("--slides", action="append", nargs="+", help="slide ids (default: every slide)")
    export.add_argument("--where", help="Spark SQL condition on the slides table, e.g. \"technology = 'Visium'\"")
    export.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    export.set_defaults(run=cmd_export)
