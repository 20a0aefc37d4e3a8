"""Errors a person can act on, and the exit codes of the ``stlake`` command.

A :class:`UserError` says what is wrong and what to do; :func:`explain` turns it, and the other
errors stlake knows (a run that cannot start, a failed commit, Spark's analysis and parse errors), into
one or two lines and an exit code. Anything else is a bug or an environment problem: one line, and
``--debug`` shows the traceback.
"""
from __future__ import annotations

from typing import Optional

EXIT_OK = 0  # every slide landed (or some were rejected and --allow-rejects was given)
EXIT_FAILED = 1  # an unexpected error (a bug, or the environment): one line; --debug shows the traceback
EXIT_COMMIT_FAILED = 2  # a table commit failed; the message says whether a re-run can help
EXIT_RUN_ERROR = 3  # unusable input: the source, the lake (missing, a file), a table, column, panel, SQL
EXIT_NO_SLIDES = 4  # the source holds no entry at all; nothing was done
EXIT_REJECTS = 5  # the run finished, but some slides were rejected (see the `rejects` table)
EXIT_USAGE = 64  # a bad command line: unknown flag, bad value, options that do not go together
EXIT_INTERRUPTED = 130  # Ctrl-C

#: Exit codes as README documents them (a test compares).
EXIT_CODES = {
    EXIT_OK: "all slides landed (or some rejected with --allow-rejects)",
    EXIT_FAILED: "unexpected error (`--debug` shows the traceback)",
    EXIT_COMMIT_FAILED: "a table commit failed (the message says whether a re-run helps)",
    EXIT_RUN_ERROR: "unusable input: source, lake, table, column, panel or SQL",
    EXIT_NO_SLIDES: "no slides found in the source",
    EXIT_REJECTS: "some slides were rejected (listed in `rejects`)",
    EXIT_USAGE: "bad command line (unknown flag, bad value, options that do not go together)",
}


class UserError(Exception):
    """A problem the user can fix: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_RUN_ERROR) -> None:
        super().__init__(message if not hint else f"{message} ({hint})")
        self.message, self.hint, self.code = message, hint, code


class UsageError(UserError):
    """Options that do not go together, or a value the parser could not judge."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_USAGE)


class MissingLake(UserError, FileNotFoundError):
    """No lake at the given path: none of its tables exist."""


class MissingTable(UserError, FileNotFoundError):
    """A table the command needs is not in the lake (e.g. ``pairs`` before ``stlake pairs``)."""


class MissingPanel(UserError, LookupError):
    """A gene panel named by the stream is not in ``gene_panels``."""


def require_lake(lake: str) -> None:
    """:class:`MissingLake` unless ``lake`` holds at least one of stlake's tables (checked without Spark)."""
    from stlake.lake import schemas, storage, tables
    problem = storage.folder_problem(lake)
    if problem:
        raise MissingLake(f"lake {storage.normalize(lake)} {problem}", "give --lake the folder `stlake ingest` wrote")
    if not any(tables.open_table(lake, name) is not None for name in schemas.TABLES):
        raise MissingLake(f"no lake at {storage.normalize(lake)}",
                          f"build one with `stlake ingest --source <slides> --lake {lake}`, or fix --lake")


def _spark_error(error: BaseException) -> Optional[str]:
    """One line for Spark's analysis / parse errors (unknown table or column, SQL syntax), else None."""
    try:
        from pyspark.errors import AnalysisException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    if not isinstance(error, AnalysisException):
        return None
    condition = error.getCondition() if hasattr(error, "getCondition") else error.getErrorClass()
    message = (error.getMessage() if hasattr(error, "getMessage") else str(error)) or str(error)
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    context = error.getQueryContext() if hasattr(error, "getQueryContext") else []
    where = ""
    if context:
        fragment = context[0].fragment() if hasattr(context[0], "fragment") else ""
        where = f" (at '{fragment}')" if fragment else ""
    hints = {"TABLE_OR_VIEW_NOT_FOUND": "`stlake tables --lake <lake>` lists the tables",
             "UNRESOLVED_COLUMN": "docs/tables.md lists every table's columns",
             "PARSE_SYNTAX_ERROR": "check the SQL near that point"}
    hint = next((text for key, text in hints.items() if condition and condition.startswith(key)), "")
    return f"{first}{where}" + (f"\n  hint: {hint}" if hint else "")


def explain(error: BaseException) -> Optional[tuple[str, int]]:
    """``(message, exit code)`` of an error a person can act on; None for anything else."""
    from stlake.ingestion.records import RunError
    if isinstance(error, UserError):
        return (error.message + (f"\n  hint: {error.hint}" if error.hint else ""), error.code)
    if isinstance(error, RunError):
        return str(error), EXIT_RUN_ERROR
    if type(error).__name__ == "CommitFailed":
        return str(error), EXIT_COMMIT_FAILED
    spark = _spark_error(error)
    return (spark, EXIT_RUN_ERROR) if spark else None
