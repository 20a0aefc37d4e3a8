"""stlake: spatial-transcriptomics slides -> a Delta lake on Spark, then SQL, pairs, gene panels, streaming, training.

Results go to stdout; progress, warnings and errors go to stderr. An error ends in one or two lines
(--debug shows the traceback). Exit codes: see README ("Exit codes") and stlake/errors.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import textwrap
import traceback
from typing import TYPE_CHECKING, Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

from stlake.errors import (
    EXIT_COMMIT_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_SLIDES,
    EXIT_OK,
    EXIT_REJECTS,
    EXIT_RUN_ERROR,
    EXIT_USAGE,
    UsageError,
    UserError,
    explain,
    require_lake,
)
from stlake.export.cli import register as register_export_command
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers import layout_names
from stlake.lake.cli import register as register_upkeep_commands
from stlake.progress import PROGRESS_MODES
from stlake.qc.cli import register as register_qc_command
from stlake.stream.cli import register as register_stream_commands
from stlake.train.job import register as register_train_command

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from stlake.jvmstart import Workload

__all__ = ["EXIT_COMMIT_FAILED", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NO_SLIDES", "EXIT_OK", "EXIT_REJECTS",
           "EXIT_RUN_ERROR", "EXIT_USAGE", "build_parser", "main"]


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
    if meta.get("kind") in ("negated", "switch"):
        action = "store_false" if meta["kind"] == "negated" else "store_true"
        return flag, {"dest": field.name, "help": kwargs["help"], "action": action}
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


def session_from_args(args: argparse.Namespace, app_name: str, workload: Workload = "query") -> SparkSession:
    """The session that ``--master`` / ``--remote`` ask for; a conflict with ``$SPARK_REMOTE`` ends in one line."""
    from stlake.spark import spark_session
    try:
        return spark_session(app_name, master=args.master, remote=args.remote, workload=workload)
    except ValueError as error:  # a master and a remote (e.g. $SPARK_REMOTE) together
        raise UsageError(str(error)) from error


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`IngestOptions` field, plus ``--master`` / ``--remote``."""
    hints = get_type_hints(IngestOptions)
    for field in dataclasses.fields(IngestOptions):
        flag, kwargs = _flag_arguments(field, hints[field.name])
        parser.add_argument(flag, **kwargs)
    add_session_arguments(parser)
    parser.add_argument("--allow-rejects", action="store_true",
                        help=f"exit 0 when some slides were rejected (default: exit {EXIT_REJECTS}) as long as "
                             "one landed")
    parser.add_argument("--json", action="store_true", help="print the run's JSON report instead of the summary")
    parser.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")


def options_from_args(args: argparse.Namespace) -> IngestOptions:
    """The :class:`IngestOptions` of parsed ``ingest`` flags."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(IngestOptions)}
    if values.get("layouts"):
        values["layouts"] = tuple(values["layouts"])
    return IngestOptions(**values)


def cmd_ingest(args: argparse.Namespace) -> int:
    """``stlake ingest``: run the ingest job, show its progress and summary (exit codes: ``stlake.errors``).

    The lake path and the source are checked, and slides discovered, before Spark starts: a run that
    cannot start ends with one line on stderr.
    """
    from stlake.ingestion.discover import no_slides_message
    from stlake.ingestion.driver import ingest, prepare_run
    from stlake.progress import ConsoleProgress
    options = options_from_args(args)
    found = prepare_run(options)
    if found.empty:
        raise UserError(no_slides_message(found.source), code=EXIT_NO_SLIDES)
    progress = ConsoleProgress(args.progress)
    progress.status(f"starting Spark for {len(found.refs)} slide(s)")
    report = ingest(session_from_args(args, "stlake-ingest", "ingest"), options, found=found, progress=progress)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            handle.write(report.to_json() + "\n")
    print(report.to_json() if args.json else ingest_summary(report))
    if report.rejected and (not args.allow_rejects or not report.landed):
        return EXIT_REJECTS
    return EXIT_OK


def ingest_summary(report: Any) -> str:
    """A short human table of an :class:`~stlake.ingestion.driver.IngestReport`."""
    reasons: dict[str, int] = {}
    for reason in report.rejected.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    lines = [f"run {report.run_id}: {len(report.landed)} landed, {len(report.rejected)} rejected "
             f"in {report.seconds:.1f} s"]
    if reasons:
        lines.append("rejected: " + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) +
                     " (details: stlake sql \"SELECT * FROM rejects\")")
    rows = {**report.rows, "slides": len(report.landed)}
    lines.append(f"{'table':12s} {'rows written':>12s}  version")
    for table, version in report.versions.items():
        written = f"{rows[table]:,}" if table in rows else ""
        lines.append(f"{table:12s} {written:>12s}  v{version}")
    return "\n".join(lines)


def cmd_sql(args: argparse.Namespace) -> int:
    """``stlake sql``: show the first rows of a Spark SQL query over the lake's views."""
    require_lake(args.lake)
    from stlake.sql import run_sql
    frame = run_sql(session_from_args(args, "stlake-sql"), args.lake, args.query)
    frame.show(args.limit, truncate=args.truncate)
    return EXIT_OK


def cmd_tables(args: argparse.Namespace) -> int:
    """``stlake tables``: print each existing table's version, file count and row count."""
    require_lake(args.lake)
    from stlake.lake import schemas, tables
    for name in schemas.TABLES:
        table = tables.open_table(args.lake, name)
        if table is not None:
            actions = tables.add_actions(table)
            rows = sum(actions.column("num_records").to_pylist()) if actions.num_rows else 0
            print(f"{name:12s} version {table.version():4d}  files {actions.num_rows:5d}  rows {rows:,}")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    """``stlake synth``: write a synthetic dataset and print how many slides it has."""
    from stlake.synth import generate
    from stlake.synth.specs import get_sizes
    sizes = get_sizes(args.size)
    if args.hd_bins:
        sizes = dataclasses.replace(sizes, hd_bins=args.hd_bins)
    summary = generate(args.out, size=sizes, seed=args.seed, layouts=tuple(args.layouts), corrupt=args.corrupt)
    print(f"wrote {sum(len(v) for k, v in summary.get('slides', {}).items())} slides to {args.out}")
    return EXIT_OK


# ---------------------------------------------------------------- the parser

class HelpFormatter(argparse.HelpFormatter):
    """Help that fits the terminal (at most 100 columns), shows every default, and keeps example lines.

    Descriptions are filled paragraph by paragraph; a paragraph with indented lines (commands) is kept
    as written. An option's help gets ``(default: X)`` unless it names its default already or is a switch.
    """

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size((100, 24)).columns, 100) - 2
        super().__init__(prog, max_help_position=30, width=width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = textwrap.dedent(text).strip().split("\n\n")
        out = []
        for paragraph in paragraphs:
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.nargs == 0 or default is None or default == argparse.SUPPRESS
                or "default" in text or default in ([], ())):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line plus a hint, with the usage exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs["formatter_class"] is argparse.RawDescriptionHelpFormatter:
            kwargs["formatter_class"] = HelpFormatter  # registered commands: keep their examples, fit the width
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        """``stlake ingest: error: ...`` and where to look; exits with ``EXIT_USAGE``."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n  hint: `{self.prog} --help` lists the options\n")


#: Flags every command accepts (added after the commands are registered, so registered ones get them too).
COMMON_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-v", "--verbose"), {"action": "store_true",
                           "help": "more detail: stlake's debug lines and Spark's INFO logs (as "
                                   "STLAKE_SPARK_LOG_LEVEL=INFO)"}),
    (("--debug",), {"action": "store_true", "help": "show the Python traceback of an error"}),
    (("--progress",), {"choices": PROGRESS_MODES, "default": "auto",
                       "help": "progress on stderr: a live line on a terminal, plain lines otherwise"}),
)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """:data:`COMMON_FLAGS` on ``parser``, except those it defines itself."""
    taken = parser._option_string_actions
    for flags, kwargs in COMMON_FLAGS:
        free = [flag for flag in flags if flag not in taken]
        if free and flags[-1] in free:
            parser.add_argument(*free, **kwargs)


def version_text() -> str:
    """``stlake 0.1.0 (pyspark 4.0.5, deltalake 1.6.6, Python 3.11.2)``, from the installed metadata."""
    from importlib import metadata
    versions = []
    for name in ("stlake", "pyspark", "deltalake"):
        try:
            versions.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            versions.append("?")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"stlake {versions[0]} (pyspark {versions[1]}, deltalake {versions[2]}, Python {python})"


def build_parser() -> argparse.ArgumentParser:
    """The ``stlake`` parser with every subcommand; each sets ``run`` to its handler."""
    parser = Parser(prog="stlake", description=__doc__)
    parser.add_argument("--version", action="version", version=version_text(), help="print versions and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    synth = sub.add_parser("synth", help="write a synthetic dataset in every layout (with ground truth)",
                           description="Write synthetic slides in every input layout, with their ground truth.")
    synth.add_argument("--out", required=True, help="folder to write (created)")
    synth.add_argument("--size", choices=("small", "full"), default="small",
                       help="small: tiny slides for tests; full: real-sized images")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    synth.add_argument("--layouts", nargs="+", choices=layout_names(), default=list(layout_names()),
                       metavar="LAYOUT", help=f"layouts to write, of: {', '.join(layout_names())}")
    synth.add_argument("--corrupt", action="store_true", help="also write broken slides (rejected by ingest)")
    synth.add_argument("--hd-bins", type=int, default=0, metavar="N",
                       help="VisiumHD: 8 µm bins per side (the 2 µm level has 4N x 4N bins); 0: the size's")
    synth.set_defaults(run=cmd_synth)
    ingest = sub.add_parser("ingest", help="raw slides -> Delta tables (Spark job)",
                            description="Discover slides, tile and read their counts on Spark, commit the lake's "
                                        "Delta tables. Progress on stderr, a summary (or --json) on stdout.")
    add_ingest_arguments(ingest)
    ingest.set_defaults(run=cmd_ingest)
    sql = sub.add_parser("sql", help="run Spark SQL over the lake's tables",
                         description="Run Spark SQL over the lake's tables (each one a view: spots, expression, "
                                     "genes, slides, rejects, ...).")
    sql.add_argument("query", help="the SQL, e.g. \"SELECT COUNT(*) FROM spots\"")
    sql.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    sql.add_argument("--limit", type=int, default=20, help="rows to show")
    sql.add_argument("--truncate", type=int, default=60, help="cut cells to this many characters (0: never)")
    add_session_arguments(sql)
    sql.set_defaults(run=cmd_sql)
    tbl = sub.add_parser("tables", help="list the lake's tables, versions and row counts",
                         description="List the lake's tables with their Delta version, files and rows (no Spark).")
    tbl.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    tbl.set_defaults(run=cmd_tables)
    register_stream_commands(sub)
    register_train_command(sub)
    register_upkeep_commands(sub)
    register_qc_command(sub)
    register_export_command(sub)
    for command in sub.choices.values():
        add_common_flags(command)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Stlake's log records to stderr as ``stlake: message`` (INFO up, DEBUG with ``verbose``); others' WARNING up.

    The root logger is configured only when nothing configured it (an application that calls
    :func:`main`, or spark-submit's Python, may have); stlake's own handler is added once.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(levelname)s: %(message)s")
    package = logging.getLogger("stlake")
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(handler, "_stlake", False) for handler in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("stlake: %(message)s"))
        handler._stlake = True  # type: ignore[attr-defined]
        package.addHandler(handler)
    package.propagate = False
    for name in () if verbose else PYSPARK_ERROR_LOGGERS:  # stlake prints the error once, briefly
        logging.getLogger(name).setLevel(logging.CRITICAL)  # (a plain logger: PySpark's then finds it disabled)


#: PySpark's loggers that repeat an analysis error as a JSON line (with the whole stack) before it is raised.
PYSPARK_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; errors a person can act on end in one or two lines and their exit code."""
    name = f"stlake {args.command}"
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        explained = explain(error)
        if explained is None:
            first = (str(error).strip().splitlines() or [""])[0][:300]
            explained = (f"unexpected {type(error).__name__}: {first}\n  hint: `--debug` shows the traceback; "
                         "please report it if the input looks right", EXIT_FAILED)
        message, code = explained
        print(f"{name}: {message}", file=sys.stderr)
        return code


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the chosen command; its exit status."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    configure_logging(verbose)
    if verbose:
        from stlake.spark import LOG_LEVEL_VARIABLE
        os.environ.setdefault(LOG_LEVEL_VARIABLE, "INFO")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
