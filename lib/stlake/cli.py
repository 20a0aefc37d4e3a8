"""``stlake`` command line: synth, ingest, sql, tables, pairs, hvg, stream, train."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from stlake.ingestion.options import IngestOptions
from stlake.stream.cli import register as register_stream_commands
from stlake.train.job import register as register_train_command


def _size(text: str) -> int:
    """'4G', '512M', '64k' or a plain number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().rstrip("b")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="root folder / s3:// prefix to scan, or a manifest .csv/.yaml")
    parser.add_argument("--lake", default="./lake", help="lake root (local folder or s3://bucket/prefix)")
    parser.add_argument("--tile-px", type=int, help="side of the cut square in pixels (default: spot diameter)")
    parser.add_argument("--tile-um", type=float, help="side of the cut square in micrometres")
    parser.add_argument("--resize", type=int, dest="resize_px", help="resize tiles to this side, e.g. 224")
    parser.add_argument("--border", choices=("pad", "drop"), default="pad")
    parser.add_argument("--encoding", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--memory-budget", type=_size, default=4 << 30, help="per task, e.g. 4G")
    parser.add_argument("--expr-chunk", type=_size, default=64 << 20, dest="expr_chunk_bytes")
    parser.add_argument("--max-spots-per-task", type=int, default=20_000)
    parser.add_argument("--bin-size", type=int, default=8, dest="bin_size_um", choices=(2, 8, 16))
    parser.add_argument("--all-spots", action="store_false", dest="in_tissue_only",
                        help="keep spots outside tissue too")
    parser.add_argument("--layout", action="append", dest="layouts",
                        choices=("stimage", "visium", "visiumhd", "st"), help="only these layouts (repeatable)")
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")


def options_from_args(args: argparse.Namespace) -> IngestOptions:
    fields = IngestOptions.__dataclass_fields__
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    if values.get("layouts"):
        values["layouts"] = tuple(values["layouts"])
    return IngestOptions(**values)


def cmd_ingest(args: argparse.Namespace) -> int:
    from stlake.ingestion.driver import CommitFailed, ingest
    from stlake.spark import spark_session
    try:
        report = ingest(spark_session("stlake-ingest", args.master), options_from_args(args))
    except CommitFailed as error:
        print(f"stlake ingest: {error}", file=sys.stderr)
        return 2
    print(report.to_json())
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from stlake.spark import spark_session
    from stlake.sql import run_sql
    frame = run_sql(spark_session("stlake-sql", args.master), args.lake, args.query)
    frame.show(args.limit, truncate=args.truncate)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from stlake.lake import schemas, tables
    for name in schemas.TABLES:
        table = tables.open_table(args.lake, name)
        if table is not None:
            actions = tables.add_actions(table)
            rows = sum(actions.column("num_records").to_pylist()) if actions.num_rows else 0
            print(f"{name:12s} version {table.version():4d}  files {actions.num_rows:5d}  rows {rows}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from stlake.synth import generate
    summary = generate(args.out, size=args.size, seed=args.seed, layouts=tuple(args.layouts),
                       corrupt=args.corrupt)
    print(f"wrote {sum(len(v) for k, v in summary.get('slides', {}).items())} slides to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stlake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="raw slides -> Delta tables (Spark job)")
    add_ingest_arguments(ingest)
    ingest.set_defaults(run=cmd_ingest)
    sql = sub.add_parser("sql", help="run Spark SQL over the lake's tables")
    sql.add_argument("query")
    sql.add_argument("--lake", default="./lake")
    sql.add_argument("--limit", type=int, default=20)
    sql.add_argument("--truncate", type=int, default=60)
    sql.add_argument("--master")
    sql.set_defaults(run=cmd_sql)
    tbl = sub.add_parser("tables", help="list the lake's tables, versions and row counts")
    tbl.add_argument("--lake", default="./lake")
    tbl.set_defaults(run=cmd_tables)
    synth = sub.add_parser("synth", help="write a synthetic dataset in all four layouts")
    synth.add_argument("--out", required=True)
    synth.add_argument("--size", choices=("small", "full"), default="small")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--layouts", nargs="+", default=["stimage", "visium", "visiumhd", "st"])
    synth.add_argument("--corrupt", action="store_true", help="also write broken slides")
    synth.set_defaults(run=cmd_synth)
    register_stream_commands(sub)
    register_train_command(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
