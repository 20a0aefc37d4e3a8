"""``stlake`` command line: synth, ingest, sql, tables, pairs, hvg, stream, train.

Results go to stdout; the library's log records (progress, rejected slides) go to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers import layout_names
from stlake.lake.cli import register as register_upkeep_commands
from stlake.qc.cli import register as register_qc_command
from stlake.stream.cli import register as register_stream_commands
from stlake.train.job import register as register_train_command

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: ``stlake ingest`` exit codes besides 0 (the report printed; some entries may have been rejected).
EXIT_COMMIT_FAILED = 2  # a table commit failed; the message says whether a re-run can help
EXIT_RUN_ERROR = 3  # the source cannot be opened, or the lake path cannot hold a lake; nothing was done
EXIT_NO_SLIDES = 4  # the source holds no entry at all; nothing was done


def parse_size(text: str) -> int:
    """'4G', '512M', '64k' or a plain number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().rstrip("b")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def format_size(size: int) -> str:
    """4294967296 -> '4G' (the largest unit that divides it)."""
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _flag_arguments(field: dataclasses.Field, hint: Any) -> tuple[str, dict[str, Any]]:
    """The argparse flag and keyword arguments of one ``IngestOptions`` field (from its type and metadata)."""
    meta = field.metadata
    flag = meta.get("flag") or "--" + field.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": field.name, "help": meta.get("help", ""),
                              "metavar": flag.lstrip("-").upper().replace("-", "_")}
    if field.default is dataclasses.MISSING:
        return flag, {**kwargs, "required": True}
    if meta.get("kind") == "negated":
        return flag, {"dest": field.name, "help": kwargs["help"], "action": "store_false"}
    base = next((a for a in get_args(hint) if a is not type(None)), hint) if get_origin(hint) is Union else hint
    if get_origin(base) is Literal:
        kwargs.update(choices=get_args(base), metavar=None)
        base = type(get_args(base)[0])
    elif get_origin(base) is tuple:  # a repeatable flag, e.g. --layout
        kwargs.update(action="append", choices=layout_names(), metavar=None)
        base = str
    kwargs["type"] = parse_size if meta.get("kind") == "size" else base
    kwargs["default"] = field.default
    if field.default is not None:
        shown = format_size(field.default) if meta.get("kind") == "size" else field.default
        kwargs["help"] += f" (default: {shown})"
    return flag, kwargs


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """``--master`` (a classic session) and ``--remote`` (Spark Connect), one or the other."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--master", help="Spark master of a classic session (default: spark-submit's, else "
                                        "$STLAKE_SPARK_MASTER, else local[*])")
    group.add_argument("--remote", help="Spark Connect server, sc://host:port, or local[N] to start one here "
                                        "(default: $SPARK_REMOTE)")


def session_from_args(args: argparse.Namespace, app_name: str) -> SparkSession:
    """The session that ``--master`` / ``--remote`` ask for; a conflict with ``$SPARK_REMOTE`` ends in one line."""
    from stlake.spark import spark_session
    try:
        return spark_session(app_name, master=args.master, remote=args.remote)
    except ValueError as error:
        print(f"stlake: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`IngestOptions` field, plus ``--master`` / ``--remote``."""
    hints = get_type_hints(IngestOptions)
    for field in dataclasses.fields(IngestOptions):
        flag, kwargs = _flag_arguments(field, hints[field.name])
        parser.add_argument(flag, **kwargs)
    add_session_arguments(parser)


def options_from_args(args: argparse.Namespace) -> IngestOptions:
    """The :class:`IngestOptions` of parsed ``ingest`` flags."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(IngestOptions)}
    if values.get("layouts"):
        values["layouts"] = tuple(values["layouts"])
    return IngestOptions(**values)


def cmd_ingest(args: argparse.Namespace) -> int:
    """``stlake ingest``: run the ingest job and print its report as JSON (exit codes: ``EXIT_*``).

    The lake path and the source are checked, and slides discovered, before Spark starts: a run that
    cannot start ends with one line on stderr and no traceback.
    """
    from stlake.ingestion.discover import no_slides_message
    from stlake.ingestion.driver import CommitFailed, ingest, prepare_run
    from stlake.ingestion.records import RunError
    options = options_from_args(args)
    try:
        found = prepare_run(options)
        if found.empty:
            return fail(no_slides_message(found.source), EXIT_NO_SLIDES)
        report = ingest(session_from_args(args, "stlake-ingest"), options, found=found)
    except RunError as error:
        return fail(str(error), EXIT_RUN_ERROR)
    except CommitFailed as error:
        return fail(str(error), EXIT_COMMIT_FAILED)
    print(report.to_json())
    return 0


def fail(message: str, code: int) -> int:
    """Print ``stlake ingest: message`` on stderr; returns the exit ``code``."""
    print(f"stlake ingest: {message}", file=sys.stderr)
    return code


def cmd_sql(args: argparse.Namespace) -> int:
    """``stlake sql``: show the first rows of a Spark SQL query over the lake's views."""
    from stlake.sql import run_sql
    frame = run_sql(session_from_args(args, "stlake-sql"), args.lake, args.query)
    frame.show(args.limit, truncate=args.truncate)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    """``stlake tables``: print each existing table's version, file count and row count."""
    from stlake.lake import schemas, tables
    for name in schemas.TABLES:
        table = tables.open_table(args.lake, name)
        if table is not None:
            actions = tables.add_actions(table)
            rows = sum(actions.column("num_records").to_pylist()) if actions.num_rows else 0
            print(f"{name:12s} version {table.version():4d}  files {actions.num_rows:5d}  rows {rows}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """``stlake synth``: write a synthetic dataset and print how many slides it has."""
    from stlake.synth import generate
    from stlake.synth.specs import get_sizes
    sizes = get_sizes(args.size)
    if args.hd_bins:
        sizes = dataclasses.replace(sizes, hd_bins=args.hd_bins)
    summary = generate(args.out, size=sizes, seed=args.seed, layouts=tuple(args.layouts), corrupt=args.corrupt)
    print(f"wrote {sum(len(v) for k, v in summary.get('slides', {}).items())} slides to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``stlake`` parser with every subcommand; each sets ``run`` to its handler."""
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
    add_session_arguments(sql)
    sql.set_defaults(run=cmd_sql)
    tbl = sub.add_parser("tables", help="list the lake's tables, versions and row counts")
    tbl.add_argument("--lake", default="./lake")
    tbl.set_defaults(run=cmd_tables)
    synth = sub.add_parser("synth", help="write a synthetic dataset in every layout")
    synth.add_argument("--out", required=True)
    synth.add_argument("--size", choices=("small", "full"), default="small")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--layouts", nargs="+", choices=layout_names(), default=list(layout_names()),
                       help="layouts to write (default: all)")
    synth.add_argument("--corrupt", action="store_true", help="also write broken slides")
    synth.add_argument("--hd-bins", type=int, default=0, metavar="N",
                       help="VisiumHD: 8 µm bins per side (the 2 µm level has 4N x 4N bins); default: the size's")
    synth.set_defaults(run=cmd_synth)
    register_stream_commands(sub)
    register_train_command(sub)
    register_upkeep_commands(sub)
    register_qc_command(sub)
    return parser


def configure_logging() -> None:
    """Log records to stderr: stlake's from INFO up as ``stlake: message``, other libraries' from WARNING up.

    Does nothing when logging is already configured (the root logger has a handler), e.g. by an
    application that calls :func:`main` or by a previous call.
    """
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(levelname)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stlake: %(message)s"))
    package = logging.getLogger("stlake")
    package.setLevel(logging.INFO)
    package.addHandler(handler)
    package.propagate = False


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the chosen command; its exit status."""
    configure_logging()
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
