"""``stlake vacuum``, ``stlake optimize`` and ``stlake history`` (registered into :mod:`stlake.cli` by ``register``).

None of them starts Spark: delta-rs reads the logs and commits.
"""
from __future__ import annotations

import argparse
import sys

from stlake.lake import schemas
from stlake.lake.upkeep import DEFAULT_RETENTION_HOURS

#: Exit status of a refused or impossible upkeep run (no lake, a retention too short); nothing was changed.
EXIT_REFUSED = 3


def _refuse(command: str, message: str) -> int:
    """Print ``stlake <command>: message`` on stderr; returns :data:`EXIT_REFUSED`."""
    print(f"stlake {command}: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _no_lake(command: str, lake: str) -> int:
    """The error for a path that holds no table."""
    return _refuse(command, f"no Delta table in {lake} (give the lake folder that `stlake ingest --lake` wrote)")


def cmd_vacuum(args: argparse.Namespace) -> int:
    """Delete the files no snapshot newer than the retention needs, in every table."""
    from stlake.lake.upkeep import RetentionTooShort, existing_tables, parse_retention, vacuum_lake
    try:
        hours = parse_retention(args.retention)
    except ValueError as error:
        return _refuse("vacuum", str(error))
    if not existing_tables(args.lake):
        return _no_lake("vacuum", args.lake)
    try:
        results = vacuum_lake(args.lake, hours, force=args.force, dry_run=args.dry_run)
    except RetentionTooShort as error:
        return _refuse("vacuum", str(error))
    verb = "would remove" if args.dry_run else "removed"
    for done in results:
        print(f"{done.table:12s} {verb} {len(done.files):5d} files; versions >= {done.readable_from} stay readable")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    """Compact each slide's small files, one commit per table."""
    from stlake.lake.upkeep import existing_tables, optimize_lake
    if not existing_tables(args.lake):
        return _no_lake("optimize", args.lake)
    for done in optimize_lake(args.lake, args.slide_ids, args.target_bytes):
        if done.version is None:
            print(f"{done.table:12s} nothing to compact")
        else:
            print(f"{done.table:12s} version {done.version}: {len(done.slides)} slides, "
                  f"{done.files_before} -> {done.files_after} files, {done.rows} rows unchanged")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print each table's versions: time, operation, run id, files and rows."""
    from stlake.lake.upkeep import existing_tables, table_history
    found = existing_tables(args.lake)
    if not found:
        return _no_lake("history", args.lake)
    names = [args.table] if args.table else list(found)
    for name in names:
        if name not in found:
            return _refuse("history", f"no table {name!r} in {args.lake} (tables: {', '.join(found)})")
        print(f"{name}:")
        print(f"  {'version':>7s}  {'time (UTC)':19s}  {'operation':16s}  {'run id':32s}  {'files':>6s}  {'rows':>9s}")
        for info in table_history(args.lake, name, args.limit or None):
            vacuum = info.operation.startswith("VACUUM")  # two commits: VACUUM START, VACUUM END
            operation = info.operation.lower() if vacuum or not info.stlake_operation else info.stlake_operation
            print(f"  {info.version:7d}  {info.time:%Y-%m-%d %H:%M:%S}  {operation:16s}  {info.run_id or '-':32s}  "
                  f"{info.files:6d}  {info.rows:9d}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``vacuum``, ``optimize`` and ``history`` to the ``stlake`` command line."""
    vacuum = sub.add_parser("vacuum", help="delete data files no recent snapshot uses (delta-rs, no Spark)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    vacuum.add_argument("--lake", default="./lake", help="the lake folder or s3:// URI")
    vacuum.add_argument("--retention", default=f"{DEFAULT_RETENTION_HOURS // 24}d",
                        help="keep files removed less than this long ago (36h, 7d, 2w, 0)")
    vacuum.add_argument("--force", action="store_true",
                        help="allow a retention shorter than pinned readers need (only while nothing reads or "
                             "writes the lake)")
    vacuum.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    vacuum.set_defaults(run=cmd_vacuum)
    optimize = sub.add_parser("optimize", help="compact each slide's small files (one commit per table, rows "
                              "unchanged)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    optimize.add_argument("--lake", default="./lake", help="the lake folder or s3:// URI")
    optimize.add_argument("--slide", dest="slide_ids", action="append",
                          help="compact only this slide (repeatable; default: every slide)")
    optimize.add_argument("--target-bytes", type=int, default=schemas.FILE_BYTES,
                          help="target size of a compacted file on disk")
    optimize.set_defaults(run=cmd_optimize)
    history = sub.add_parser("history", help="versions of the lake's tables: operations, run ids, rows",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    history.add_argument("--lake", default="./lake", help="the lake folder or s3:// URI")
    history.add_argument("--table", choices=list(schemas.TABLES), help="one table (default: every table)")
    history.add_argument("--limit", type=int, default=20, help="newest versions per table (0 = all)")
    history.set_defaults(run=cmd_history)
