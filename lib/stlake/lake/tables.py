"""Delta tables without Delta's JVM jars: Parquet files from the tasks, one delta-rs commit per table.

Tasks write Parquet data files with pyarrow straight into the table location (local or S3) and hand
back ``DataFile`` records (path, size, statistics). The driver commits each table's files in one
transaction with delta-rs; files of slides that are ingested again are removed in the same commit, so
a repeated run replaces rows instead of duplicating them. A commit that loses a race with another
writer is rebuilt from the new snapshot and retried.

No user string shapes a path: data file names are ``part-<token>-<index>-<random>.zstd.parquet``
(:func:`data_file_name`) where the token is a hash of the writer's tag (which may hold slide and run
ids), and names that label rows (run ids, panel names) follow :data:`SAFE_NAME`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Literal, Optional, get_args, get_type_hints

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from stlake.lake import schemas, storage

MAX_COMMIT_ATTEMPTS = 20
_STATS_TYPES = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp)
_ARROW_TYPES: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64()}  # DataFile field types
#: Slide ids, run ids and panel names: a letter or digit, then up to 127 letters, digits, ``.``, ``_`` or ``-``.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Hex digits of a tag's hash in a data file name.
TOKEN_LENGTH = 16
#: What a table's storage and Delta log look like after a failed commit (see :func:`table_health`).
TableHealth = Literal["readable", "unreachable", "log_unreadable"]


def is_safe_name(name: str) -> bool:
    """True when ``name`` follows :data:`SAFE_NAME` (so it could never be a path or a path part)."""
    return SAFE_NAME.fullmatch(name) is not None


def check_name(what: str, name: str) -> str:
    """``name`` when it follows :data:`SAFE_NAME`; ``ValueError`` saying ``what`` it is otherwise."""
    if not is_safe_name(name):
        raise ValueError(f"invalid {what} {name[:80]!r}: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def file_token(tag: str) -> str:
    """A short hash of a writer's tag: what a data file name holds instead of the tag itself."""
    return hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()[:TOKEN_LENGTH]


def data_file_name(tag: str, index: int = 0) -> str:
    """``part-<hash of tag>-<index>-<random>.zstd.parquet``: the files of one tag share the hash."""
    return f"part-{file_token(tag)}-{index:03d}-{uuid.uuid4().hex[:12]}.zstd.parquet"


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's folder, not yet committed."""

    table: str
    path: str  # relative to the table root
    size: int
    num_records: int
    stats: str  # Delta statistics JSON
    modification_time: int  # ms since epoch
    slide_id: Optional[str]  # the one slide whose rows the file holds, None if several

    def add_action(self) -> AddAction:
        """The Delta add action that commits this file."""
        return AddAction(self.path, self.size, {}, self.modification_time, True, self.stats)

    def to_row(self) -> dict[str, Any]:
        """The record as a row of :meth:`arrow_schema`."""
        return asdict(self)

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """An Arrow schema with one field per dataclass field (Spark tasks hand records over as rows of it)."""
        hints = get_type_hints(cls)
        return pa.schema([pa.field(f.name, _arrow_type(hints[f.name])) for f in fields(cls)])


def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a ``DataFile`` field's type hint (``Optional[X]`` as a nullable ``X``)."""
    present = [arg for arg in get_args(hint) if arg is not type(None)]
    return _ARROW_TYPES[present[0] if present else hint]


def table_uri(lake: str, table: str) -> str:
    """The folder of ``table`` in ``lake`` (absolute path or ``s3://`` URI)."""
    return storage.join(storage.normalize(lake), table)


# ---------------------------------------------------------------- writing data files

def _stat_value(value: Any) -> Any:
    """A min/max value as Delta statistics JSON holds it (UTC timestamps as text, no NaN/inf)."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def file_stats(table: pa.Table) -> str:
    """Delta ``stats`` JSON: record count and min/max/null counts of the scalar columns."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, column in zip(table.column_names, table.columns):
        if not any(check(column.type) for check in _STATS_TYPES) and not pa.types.is_boolean(column.type):
            continue
        nulls[name] = column.null_count
        if pa.types.is_boolean(column.type) or column.null_count == len(column):
            continue
        bounds = pc.min_max(column).as_py()
        low, high = _stat_value(bounds["min"]), _stat_value(bounds["max"])
        if low is not None and high is not None:
            mins[name], maxs[name] = low, high
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def rows_per_group(table_name: str, table: pa.Table) -> int:
    """Rows per Parquet row group so one group holds about the table's target bytes."""
    target = schemas.ROW_GROUP_BYTES.get(table_name)
    if not target or table.num_rows == 0:
        return max(table.num_rows, 1)
    per_row = max(table.nbytes / table.num_rows, 1.0)
    return max(64, int(target / per_row))


def _single_slide(table: pa.Table) -> Optional[str]:
    """The slide id when every row has the same one, else None."""
    if "slide_id" not in table.column_names or table.num_rows == 0:
        return None
    distinct = pc.unique(table.column("slide_id"))
    return distinct[0].as_py() if len(distinct) == 1 else None


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding (all but the image bytes); list columns by their leaf path."""
    return [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in schema if f.name != "tile"]


def write_data_file(lake: str, table_name: str, table: pa.Table, tag: str, index: int = 0) -> DataFile:
    """Write ``table`` as the ``index``-th Parquet file of ``tag`` in the table folder; its uncommitted record.

    The file name holds a hash of ``tag`` (:func:`data_file_name`), never the tag: tags carry slide ids.
    """
    table = table.cast(schemas.TABLES[table_name])
    name = data_file_name(tag, index)
    uri = storage.join(table_uri(lake, table_name), name)
    with storage.open_output(uri) as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=rows_per_group(table_name, table),
                       use_dictionary=dictionary_columns(table.schema),
                       write_statistics=True)
    return DataFile(table_name, name, storage.size(uri), table.num_rows, file_stats(table),
                    int(time.time() * 1000), _single_slide(table))


def write_data_files(lake: str, table_name: str, table: pa.Table, tag: str) -> list[DataFile]:
    """Write ``table`` as files of at most ``schemas.FILE_BYTES`` each (one file for small tables); all or none."""
    if table.num_rows == 0:
        return []
    per_row = max(table.nbytes / table.num_rows, 1.0)
    step = max(1, int(schemas.FILE_BYTES / per_row))
    written: list[DataFile] = []
    try:
        for start in range(0, table.num_rows, step):
            written.append(write_data_file(lake, table_name, table.slice(start, step), tag, start // step))
    except BaseException:
        discard(lake, written)  # no orphan: a failed write leaves none of its files behind
        raise
    return written


def discard(lake: str, files: Iterable[DataFile]) -> None:
    """Delete uncommitted files (e.g. those of a rejected slide)."""
    for data_file in files:
        storage.delete(storage.join(table_uri(lake, data_file.table), data_file.path))


# ---------------------------------------------------------------- reading snapshots

def open_table(lake: str, table_name: str, version: Optional[int] = None) -> Optional[DeltaTable]:
    """The table's snapshot (the current one, or ``version``), or None when it does not exist yet."""
    try:
        return DeltaTable(table_uri(lake, table_name), version=version,
                          storage_options=storage.delta_storage_options())
    except TableNotFoundError:
        return None


def slide_ids(lake: str, table_name: str, version: Optional[int] = None) -> list[str]:
    """The distinct slide ids with rows in a snapshot of the table (sorted; empty when it does not exist)."""
    table = open_table(lake, table_name, version)
    if table is None:
        return []
    return sorted(pc.unique(table.to_pyarrow_table(columns=["slide_id"]).column("slide_id")).to_pylist())


def active_files(lake: str, table_name: str) -> list[str]:
    """Absolute URIs of the data files in the current snapshot (never a directory listing)."""
    table = open_table(lake, table_name)
    return [] if table is None else _normalize_file_uris(table.file_uris())


def _normalize_file_uris(uris: list[str]) -> list[str]:
    """``file://`` URIs as plain local paths."""
    return [uri[len("file://"):] if uri.startswith("file://") else uri for uri in uris]


def read_table(lake: str, table_name: str, columns: Optional[list[str]] = None) -> pa.Table:
    """The table's current snapshot as a pyarrow Table (empty with the schema when absent)."""
    table = open_table(lake, table_name)
    schema = schemas.TABLES[table_name]
    if table is None:
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.table(table.to_pyarrow_table(columns=columns))


def slide_files(lake: str, table_name: str, slide_id: str) -> list[str]:
    """URIs of the snapshot's files that may hold rows of ``slide_id`` (by their min/max statistics)."""
    table = open_table(lake, table_name)
    if table is None:
        return []
    actions, root = add_actions(table), table_uri(lake, table_name)
    n = actions.num_rows
    lows, highs = ([None] * n if name not in actions.column_names else actions.column(name).to_pylist()
                   for name in ("min.slide_id", "max.slide_id"))
    return [storage.join(root, path) for path, low, high in zip(actions.column("path").to_pylist(), lows, highs)
            if low is None or high is None or low <= slide_id <= high]


def slide_rows(lake: str, table_name: str, slide_id: str, columns: Optional[list[str]] = None) -> pa.Table:
    """One slide's rows of the table's current snapshot: only files whose statistics may hold it are read."""
    schema = schemas.TABLES[table_name]
    wanted = pa.schema([schema.field(c) for c in columns]) if columns else schema
    parts = [wanted.empty_table()]
    for uri in slide_files(lake, table_name, slide_id):
        fs, local = storage.filesystem(uri)
        part = pq.read_table(local, filesystem=fs, columns=list(set(wanted.names) | {"slide_id"}),
                             filters=pc.field("slide_id") == slide_id)
        parts.append(part.select(wanted.names).cast(wanted))
    return pa.concat_tables(parts)


def add_actions(table: DeltaTable) -> pa.Table:
    """The snapshot's add actions with flattened statistics, as a pyarrow Table."""
    return pa.table(table.get_add_actions(flatten=True))


# ---------------------------------------------------------------- committing

def _removal(path: str, size: int) -> RemoveAction:
    """The Delta remove action of a committed file."""
    return RemoveAction(path, True, int(time.time() * 1000), size, {})


def _all_files(table: DeltaTable) -> list[tuple[str, int]]:
    """(path, size) of every file in the snapshot."""
    return list(zip(*(add_actions(table).column(c).to_pylist() for c in ("path", "size_bytes"))))


def _files_of_slides(table: DeltaTable, slide_ids: set[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Files holding only rows of ``slide_ids`` (remove them) and mixed files to rewrite."""
    actions = add_actions(table)
    if not slide_ids or actions.num_rows == 0 or "min.slide_id" not in actions.column_names:
        return [], []
    whole, mixed = [], []
    for path, size, low, high in zip(*(actions.column(c).to_pylist() for c in
                                       ("path", "size_bytes", "min.slide_id", "max.slide_id"))):
        if low is not None and low == high and low in slide_ids:
            whole.append((path, size))
        elif low is not None and any(low <= slide <= high for slide in slide_ids):
            mixed.append((path, size))
    return whole, mixed


def _rows_without(lake: str, table_name: str, path: str, column: str, values: Iterable[str]) -> tuple[pa.Table, int]:
    """A data file's rows without those whose ``column`` is in ``values``, and how many were left out."""
    uri = storage.join(table_uri(lake, table_name), path)
    fs, fs_path = storage.filesystem(uri)
    rows = pq.read_table(fs_path, filesystem=fs)
    keep = rows.filter(pc.invert(pc.is_in(rows.column(column), value_set=pa.array(sorted(set(values)), pa.string()))))
    return keep, rows.num_rows - keep.num_rows


def rewrite_without(lake: str, table_name: str, path: str, column: str, values: Iterable[str],
                    tag: str) -> Optional[list[DataFile]]:
    """Copy a data file without the rows whose ``column`` is in ``values``; None when it holds no such row.

    The copy is new files (none when no row is left, all or none written); the original is left as it is.
    """
    keep, dropped = _rows_without(lake, table_name, path, column, values)
    return write_data_files(lake, table_name, keep, tag) if dropped else None


def _rewrite_without(lake: str, table_name: str, path: str, slide_ids: set[str]) -> list[DataFile]:
    """Copy a file holding several slides without the rows of ``slide_ids``."""
    keep, _ = _rows_without(lake, table_name, path, "slide_id", slide_ids)
    return write_data_files(lake, table_name, keep, f"rewrite-{uuid.uuid4().hex[:8]}") if keep.num_rows else []


def _create(lake: str, table_name: str, files: list[DataFile], props: CommitProperties) -> int:
    """Create the table with ``files`` as version 0."""
    create_table_with_add_actions(table_uri(lake, table_name), Schema.from_arrow(schemas.TABLES[table_name]),
                                  [f.add_action() for f in files], mode="error", name=table_name,
                                  storage_options=storage.delta_storage_options(), commit_properties=props)
    return 0


def _append(table: DeltaTable, table_name: str, adds: list[DataFile], removes: list[tuple[str, int]],
            props: CommitProperties) -> int:
    """Commit adds and removes on ``table`` (nothing to commit: no new version); the version after it."""
    actions = [f.add_action() for f in adds] + [_removal(path, size) for path, size in removes]
    if actions:
        table.create_write_transaction(actions, "append", schemas.TABLES[table_name], commit_properties=props)
        return table.version() + 1
    return table.version()


def _retryable(error: Exception) -> bool:
    """A lost race: another writer committed first (or created the table first)."""
    return isinstance(error, CommitFailedError) or "already exists" in str(error).lower()


def _with_retries(table_name: str, attempt_commit: Callable[[int], int]) -> int:
    """``attempt_commit(attempt)`` until it wins its race (backing off), at most MAX_COMMIT_ATTEMPTS times."""
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        try:
            return attempt_commit(attempt)
        except Exception as error:
            if not _retryable(error):
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
    raise CommitFailedError(f"{table_name}: gave up after {MAX_COMMIT_ATTEMPTS} conflicting commits")


def commit_properties(run_id: str, operation: str, metadata: Optional[dict[str, str]] = None) -> CommitProperties:
    """Commit metadata naming the run, the operation (and ``stlake.<key>`` extras); delta-rs does not retry (we do)."""
    if run_id:
        check_name("run id", run_id)
    extra = {f"stlake.{key}": value for key, value in (metadata or {}).items()}
    return CommitProperties(custom_metadata={"stlake.run_id": run_id, "stlake.operation": operation, **extra},
                            max_commit_retries=0)


def commit(lake: str, table_name: str, files: list[DataFile], replace_slides: Iterable[str] = (),
           run_id: str = "", operation: str = "ingest", replace_all: bool = False,
           metadata: Optional[dict[str, str]] = None) -> int:
    """Commit ``files`` to a table in one transaction; creates the table when missing.

    The rows of ``replace_slides`` (or every current row with ``replace_all``) are replaced in the same
    commit. Returns the new table version. A lost race is rebuilt on the new snapshot and retried.
    ``metadata`` goes into the commit's ``commitInfo`` as ``stlake.<key>`` entries.
    """
    replace, props = set(replace_slides), commit_properties(run_id, operation, metadata)

    def attempt_commit(attempt: int) -> int:
        table = open_table(lake, table_name)
        if table is None:
            return _create(lake, table_name, files, props)
        if replace_all:
            return _append(table, table_name, files, _all_files(table), props)
        whole, mixed = _files_of_slides(table, replace)
        rewritten = [new for path, _ in mixed for new in _rewrite_without(lake, table_name, path, replace)]
        try:
            return _append(table, table_name, files + rewritten, whole + mixed, props)
        except Exception:
            discard(lake, rewritten)
            raise

    return _with_retries(table_name, attempt_commit)


def overwrite_small_table(lake: str, table_name: str, build: Callable[[Optional[pa.Table]], pa.Table],
                          run_id: str = "") -> int:
    """Replace a small table by ``build(current_rows)`` in one commit, retried on conflicts.

    Used for ``genes``: every writer merges its genes into the current snapshot and rewrites it.
    """
    props = commit_properties(run_id, "merge")

    def attempt_commit(attempt: int) -> int:
        table = open_table(lake, table_name)
        current = None if table is None else pa.table(table.to_pyarrow_table())
        merged = build(current)
        if table is not None and current is not None and merged.equals(current.cast(merged.schema)):
            return table.version()
        files = write_data_files(lake, table_name, merged, f"{run_id or 'merge'}-{attempt}")
        try:
            if table is None:
                return _create(lake, table_name, files, props)
            return _append(table, table_name, files, _all_files(table), props)
        except Exception:
            discard(lake, files)
            raise

    return _with_retries(table_name, attempt_commit)


def commit_changes(lake: str, table_name: str,
                   plan: Callable[[DeltaTable], tuple[list[DataFile], list[tuple[str, int]]]],
                   run_id: str = "", operation: str = "") -> int:
    """One commit of the (adds, removes) that ``plan(current snapshot)`` returns, retried on conflicts.

    ``plan`` runs again on the new snapshot after a lost race, so it can drop what is no longer valid.
    The table must exist; nothing to commit makes no new version. Returns the version after it.
    """
    props = commit_properties(run_id, operation)

    def attempt_commit(attempt: int) -> int:
        table = open_table(lake, table_name)
        if table is None:
            raise FileNotFoundError(f"no Delta table {table_name!r} in {lake}")
        adds, removes = plan(table)
        return _append(table, table_name, adds, removes, props)

    return _with_retries(table_name, attempt_commit)


def table_health(lake: str, table_name: str) -> tuple[TableHealth, str]:
    """After a failed commit: does the table's storage answer, and can its Delta log be read? And why not.

    ``unreachable``: listing the table's ``_delta_log`` fails (storage down, bucket gone, no access);
    ``log_unreadable``: storage answers but the snapshot cannot be built (e.g. a corrupt commit file),
    which a re-run does not repair; ``readable``: both work now (the failure was transient).
    """
    try:
        storage.list_dir(storage.join(table_uri(lake, table_name), "_delta_log"))
    except OSError as error:
        return "unreachable", storage.describe_error(error)
    try:
        open_table(lake, table_name)
    except Exception as error:  # delta-rs raises its own error types for an unreadable log
        return "log_unreadable", storage.describe_error(error)
    return "readable", ""


def new_run_id(kind: str = "") -> str:
    """A sortable, unique run id: ``[kind-]20261201T101500Z-1a2b3c`` (UTC time + 6 random hex digits)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    return f"{kind}-{stamp}" if kind else stamp
