"""Lake upkeep without Spark: vacuum old files, compact a slide's small files, list a table's history.

- **vacuum**: delta-rs ``DeltaTable.vacuum`` (full: also files no commit ever added, e.g. those of a
  crashed run) on every table. A stream, and every rank of a training job, pins the table version it
  opens and reads that snapshot's files for as long as it runs; files a later commit removes must
  outlive the longest run. The retention therefore may not be shorter than the table's
  ``delta.deletedFileRetentionDuration`` (Delta's default, 7 days) unless forced.
- **optimize**: per table, the files of each slide are rewritten into as few files as the target size
  allows (row groups copied in order, rows unchanged) and swapped in one commit per table. A slide whose
  files changed meanwhile (a re-ingest) is left out of the commit, so a slide's rows are still replaced
  atomically and every file still holds one slide.
- **history**: each version's time, operation, stlake run id and operation, file and row counts.
"""
from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from stlake.lake import schemas, storage, tables

#: Delta's default ``delta.deletedFileRetentionDuration``: what a pinned stream may need at least.
DEFAULT_RETENTION_HOURS = 7 * 24
_UNIT_HOURS = {"h": 1, "d": 24, "w": 7 * 24}
_DELTA_INTERVAL = re.compile(r"interval\s+(\d+)\s+(hour|day|week)s?", re.IGNORECASE)


class RetentionTooShort(ValueError):
    """A vacuum retention shorter than what pinned readers need (pass ``force`` to vacuum anyway)."""


def parse_retention(text: str) -> int:
    """``'7d'``, ``'36h'``, ``'2w'`` or ``'0'`` as whole hours (a bare number is hours)."""
    match = re.fullmatch(r"\s*(\d+)\s*([hdw]?)\s*", text.lower())
    if match is None:
        raise ValueError(f"invalid retention {text[:40]!r}: use hours, days or weeks, e.g. 36h, 7d, 2w, 0")
    return int(match.group(1)) * _UNIT_HOURS[match.group(2) or "h"]


def required_retention_hours(table: DeltaTable) -> int:
    """The table's ``delta.deletedFileRetentionDuration`` in hours (default 7 days)."""
    setting = table.metadata().configuration.get("delta.deletedFileRetentionDuration") or ""
    match = _DELTA_INTERVAL.fullmatch(setting.strip())
    return int(match.group(1)) * _UNIT_HOURS[match.group(2)[0].lower()] if match else DEFAULT_RETENTION_HOURS


def existing_tables(lake: str) -> dict[str, DeltaTable]:
    """The lake's tables that exist, by name (in ``schemas.TABLES`` order)."""
    found = {name: tables.open_table(lake, name) for name in schemas.TABLES}
    return {name: table for name, table in found.items() if table is not None}


# ---------------------------------------------------------------- vacuum

@dataclass
class Vacuumed:
    """What vacuum removed (or would remove, in a dry run) from one table."""

    table: str
    files: list[str]
    dry_run: bool
    readable_from: int  # the oldest version whose files all remain after this vacuum


def oldest_readable_version(table: DeltaTable, retention_hours: int) -> int:
    """The oldest version still complete after a vacuum of ``retention_hours`` (commits older may lose files)."""
    cutoff_ms = (time.time() - retention_hours * 3600) * 1000
    older = [entry["version"] for entry in table.history() if entry.get("timestamp", 0) < cutoff_ms]
    return max(older, default=0)


def check_retention(lake: str, retention_hours: int) -> None:
    """``RetentionTooShort`` when any table needs a longer retention than ``retention_hours``."""
    for name, table in existing_tables(lake).items():
        needed = required_retention_hours(table)
        if retention_hours < needed:
            raise RetentionTooShort(
                f"retention {retention_hours} h is shorter than the {needed} h ({needed / 24:g} d) that `{name}` "
                "keeps for pinned readers (a stream or training job reads the version it opened until it ends); "
                "pass --force to vacuum anyway")


def vacuum_lake(lake: str, retention_hours: int = DEFAULT_RETENTION_HOURS, force: bool = False,
                dry_run: bool = False, run_id: Optional[str] = None) -> list[Vacuumed]:
    """Vacuum every table; refuses (before touching any) a retention shorter than needed unless ``force``.

    With ``force`` and a short retention, files that a running ingest wrote but has not committed yet
    are deleted too: vacuum with ``force`` only while nothing writes to the lake.
    """
    if not force:
        check_retention(lake, retention_hours)
    props = tables.commit_properties(run_id or tables.new_run_id("vacuum"), "vacuum")
    done = []
    for name, table in existing_tables(lake).items():
        readable = oldest_readable_version(table, retention_hours)
        removed = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False,
                               full=True, commit_properties=props)
        done.append(Vacuumed(name, sorted(removed), dry_run, readable))
    return done


# ---------------------------------------------------------------- optimize

@dataclass
class SourceFile:
    """A committed data file of one slide."""

    path: str
    size: int
    rows: int


@dataclass
class Compaction:
    """What optimize did to one table."""

    table: str
    version: Optional[int]  # the commit's version, None when nothing was compacted
    slides: list[str] = field(default_factory=list)
    files_before: int = 0
    files_after: int = 0
    rows: int = 0


def slide_files(table: DeltaTable) -> dict[str, list[SourceFile]]:
    """The snapshot's one-slide files, by slide (files holding several slides, or none, are left out)."""
    actions = tables.add_actions(table)
    if actions.num_rows == 0 or "min.slide_id" not in actions.column_names:
        return {}
    columns = ("path", "size_bytes", "num_records", "min.slide_id", "max.slide_id", "null_count.slide_id")
    grouped: dict[str, list[SourceFile]] = defaultdict(list)
    for path, size, rows, low, high, nulls in zip(*(actions.column(c).to_pylist() for c in columns)):
        if low is not None and low == high and not nulls:
            grouped[low].append(SourceFile(path, size, rows or 0))
    return {slide: sorted(files, key=lambda f: f.path) for slide, files in grouped.items()}


def needs_compaction(files: Sequence[SourceFile], target_bytes: int) -> bool:
    """More files than ``target_bytes`` per file would need."""
    return len(files) > max(1, math.ceil(sum(f.size for f in files) / target_bytes))


def _row_group_chunks(lake: str, table_name: str, files: Sequence[SourceFile],
                      target_bytes: int) -> Iterable[pa.Table]:
    """The files' row groups in order, gathered into tables of about ``target_bytes`` (on disk) each."""
    chunk: list[pa.Table] = []
    chunk_bytes = 0.0
    for source in files:
        fs, path = storage.filesystem(storage.join(tables.table_uri(lake, table_name), source.path))
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            total = max(parquet.metadata.num_rows, 1)
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group)
                group_bytes = source.size * rows.num_rows / total
                if chunk and chunk_bytes + group_bytes > target_bytes:
                    yield pa.concat_tables(chunk)
                    chunk, chunk_bytes = [], 0.0
                chunk.append(rows)
                chunk_bytes += group_bytes
    if chunk:
        yield pa.concat_tables(chunk)


def rewrite_slide(lake: str, table_name: str, slide_id: str, files: Sequence[SourceFile], target_bytes: int,
                  run_id: str) -> list[tables.DataFile]:
    """The slide's rows copied into files of about ``target_bytes``, uncommitted; all or none."""
    written: list[tables.DataFile] = []
    try:
        for index, chunk in enumerate(_row_group_chunks(lake, table_name, files, target_bytes)):
            written.append(tables.write_data_file(lake, table_name, chunk, f"{run_id}-{slide_id}", index))
    except BaseException:
        tables.discard(lake, written)
        raise
    return written


def optimize_table(lake: str, table_name: str, slide_ids: Optional[Iterable[str]] = None,
                   target_bytes: int = schemas.FILE_BYTES, run_id: Optional[str] = None) -> Compaction:
    """Compact the small files of each slide (or of ``slide_ids``) of one table in one commit."""
    run_id = run_id or tables.new_run_id("optimize")
    table = tables.open_table(lake, table_name)
    result = Compaction(table_name, None)
    if table is None:
        return result
    wanted = None if slide_ids is None else set(slide_ids)
    chosen = {slide: files for slide, files in slide_files(table).items()
              if (wanted is None or slide in wanted) and needs_compaction(files, target_bytes)}
    rewritten = {slide: rewrite_slide(lake, table_name, slide, files, target_bytes, run_id)
                 for slide, files in sorted(chosen.items())}
    kept: list[str] = []

    def plan(current: DeltaTable) -> tuple[list[tables.DataFile], list[tuple[str, int]]]:
        now = slide_files(current)
        kept[:] = [s for s in rewritten if {f.path for f in now.get(s, [])} == {f.path for f in chosen[s]}]
        return ([new for s in kept for new in rewritten[s]],
                [(f.path, f.size) for s in kept for f in chosen[s]])

    try:
        version = tables.commit_changes(lake, table_name, plan, run_id, "optimize") if rewritten else None
    except BaseException:
        tables.discard(lake, [new for files in rewritten.values() for new in files])
        raise
    tables.discard(lake, [new for s, files in rewritten.items() if s not in kept for new in files])
    if kept:
        result.version, result.slides = version, kept
        result.files_before = sum(len(chosen[s]) for s in kept)
        result.files_after = sum(len(rewritten[s]) for s in kept)
        result.rows = sum(f.rows for s in kept for f in chosen[s])
    return result


def optimize_lake(lake: str, slide_ids: Optional[Iterable[str]] = None, target_bytes: int = schemas.FILE_BYTES,
                  run_id: Optional[str] = None) -> list[Compaction]:
    """:func:`optimize_table` on every existing table with a ``slide_id`` column (one run id for all)."""
    run_id = run_id or tables.new_run_id("optimize")
    wanted = None if slide_ids is None else sorted(set(slide_ids))
    return [optimize_table(lake, name, wanted, target_bytes, run_id) for name in existing_tables(lake)
            if "slide_id" in schemas.TABLES[name].names]


# ---------------------------------------------------------------- history

@dataclass
class VersionInfo:
    """One version of a table, from its commit's ``commitInfo`` and its snapshot."""

    table: str
    version: int
    time: datetime
    operation: str  # Delta's: WRITE, CREATE TABLE, VACUUM START, ...
    stlake_operation: str  # stlake's: ingest, merge, write pairs, optimize, vacuum ("" when not stlake's)
    run_id: str
    files: int
    rows: int


def _snapshot_counts(table: DeltaTable, version: int) -> tuple[int, int]:
    """(files, rows) of ``table`` at ``version``."""
    table.load_as_version(version)
    actions = tables.add_actions(table)
    return actions.num_rows, int(sum(actions.column("num_records").to_pylist())) if actions.num_rows else 0


def table_history(lake: str, table_name: str, limit: Optional[int] = 20) -> list[VersionInfo]:
    """The newest ``limit`` versions of a table (all with None), oldest first; empty when it does not exist."""
    table = tables.open_table(lake, table_name)
    if table is None:
        return []
    entries: list[dict[str, Any]] = sorted(table.history(limit), key=lambda e: e["version"])
    infos = []
    for entry in entries:
        files, rows = _snapshot_counts(table, entry["version"])
        infos.append(VersionInfo(table_name, entry["version"],
                                 datetime.fromtimestamp(entry.get("timestamp", 0) / 1000, timezone.utc),
                                 entry.get("operation", ""), entry.get("stlake.operation", ""),
                                 entry.get("stlake.run_id", ""), files, rows))
    return infos


__all__ = ["vacuum_lake", "optimize_lake", "optimize_table", "table_history", "parse_retention",
           "RetentionTooShort", "DEFAULT_RETENTION_HOURS"]
