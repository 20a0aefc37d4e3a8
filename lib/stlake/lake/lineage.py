"""Which slides' rows changed between two versions of the lake's tables (what a derived table must rebuild).

A slide's rows are identified without reading them: every ingest stamps its rows with its run id, and a
re-ingest replaces the slide's rows, so the run ids of a slide's files (from the Delta statistics) and
its row count change with its rows, while commits that do not change rows (``optimize``, ``vacuum``)
keep them. Files holding several slides (e.g. ``slides``) are read, two columns only.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Optional

import pyarrow.parquet as pq

from stlake.lake import storage, tables

#: A slide's rows in one table: (run ids, row count).
Fingerprint = tuple[tuple[str, ...], int]


def slide_fingerprints(lake: str, table_name: str, version: Optional[int] = None) -> dict[str, Fingerprint]:
    """Each slide's :data:`Fingerprint` in a snapshot of a table (empty when the table does not exist)."""
    table = tables.open_table(lake, table_name, version)
    if table is None:
        return {}
    actions = tables.add_actions(table)
    runs: dict[str, set[str]] = defaultdict(set)
    rows: dict[str, int] = defaultdict(int)
    if actions.num_rows == 0:
        return {}
    columns = ("path", "num_records", "min.slide_id", "max.slide_id", "min.run_id", "max.run_id")
    root = tables.table_uri(lake, table_name)
    for path, count, low, high, run_low, run_high in zip(*(actions.column(c).to_pylist() for c in columns)):
        if low is not None and low == high and run_low is not None:
            runs[low].update({run_low, run_high})
            rows[low] += count or 0
            continue
        fs, local = storage.filesystem(storage.join(root, path))
        part = pq.read_table(local, columns=["slide_id", "run_id"], filesystem=fs)
        for slide, run in zip(part.column("slide_id").to_pylist(), part.column("run_id").to_pylist()):
            runs[slide].add(run or "")
            rows[slide] += 1
    return {slide: (tuple(sorted(runs[slide])), rows[slide]) for slide in rows}


def changed_slides(lake: str, versions: Mapping[str, int]) -> Optional[set[str]]:
    """Slides whose rows in any of ``versions``' tables differ between that version and now.

    None when a recorded version can no longer be read (its log was cleaned up): treat every slide as changed.
    """
    changed: set[str] = set()
    for table_name, version in versions.items():
        try:
            before = slide_fingerprints(lake, table_name, version)
        except Exception:  # delta-rs raises its own error types for a version it cannot load
            return None
        now = slide_fingerprints(lake, table_name)
        changed |= {slide for slide in before.keys() | now.keys() if before.get(slide) != now.get(slide)}
    return changed


def current_versions(lake: str, table_names: tuple[str, ...]) -> dict[str, int]:
    """The current version of each existing table of ``table_names``."""
    opened = {name: tables.open_table(lake, name) for name in table_names}
    return {name: table.version() for name, table in opened.items() if table is not None}
