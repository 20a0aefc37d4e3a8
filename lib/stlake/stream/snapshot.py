"""Which data files of a Delta snapshot a stream reads, and which filters still need a row-level check.

The file list comes from the Delta log's add actions (never a directory listing), so files removed by
a later commit (a re-ingested slide, a rebuilt ``pairs``) are never read even though they stay on disk
until ``VACUUM``. Each file's min/max statistics prune it when no row can match a filter; a filter is
then also checked per row only where some kept file's statistics cannot prove that all rows match.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stlake.derived.pairs import missing_table_error
from stlake.lake import storage, tables
from stlake.stream.spec import StreamSpec

# spec field -> table column, for the set-valued filters
SET_FILTERS = {"technologies": "technology", "species": "species", "tissues": "tissue",
               "labels": "label", "slide_ids": "slide_id"}
TISSUE_COLUMN = "tissue_fraction"
#: ``pairs`` columns holding every annotation set of a spot and its label in each (parallel lists).
SET_COLUMNS = ["label_sets", "set_labels"]


@dataclass
class Selection:
    """The files to read (absolute URIs, sorted) and the row-level checks still needed."""

    version: int
    files: list[str]
    num_records: int  # rows in the kept files (an upper bound of the rows streamed)
    row_sets: dict[str, frozenset[Any]] = field(default_factory=dict)  # column -> allowed values (None = null)
    row_min_tissue_fraction: Optional[float] = None
    label_set: Optional[str] = None  # rows must carry a label of this set; ``label`` filters read it

    @property
    def row_columns(self) -> list[str]:
        """Columns a row-level predicate reads."""
        columns = sorted(c for c in self.row_sets if not (c == "label" and self.label_set is not None))
        columns += SET_COLUMNS if self.label_set is not None else []
        return columns + ([TISSUE_COLUMN] if self.row_min_tissue_fraction is not None else [])


def snapshot_files(spec: StreamSpec) -> tuple[int, pa.Table, list[str]]:
    """(version, add actions, absolute URIs of their files) of the spec's snapshot of its table."""
    snapshot = tables.open_table(spec.lake, spec.table, spec.version)
    if snapshot is None:
        raise missing_table_error(spec.lake, spec.table)
    actions, root = tables.add_actions(snapshot), tables.table_uri(spec.lake, spec.table)
    uris = [storage.join(root, path) for path in _column(actions, "path", actions.num_rows)]
    return snapshot.version(), actions, uris


def _column(actions: pa.Table, name: str, n: int) -> list[Any]:
    """A column of the add actions as a list (``n`` Nones when the log has no such statistic)."""
    return actions.column(name).to_pylist() if name in actions.column_names else [None] * n


def _set_filter(actions: pa.Table, column: str, allowed: frozenset[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(keep, decided): a file may hold a match / every row of the file is known to match."""
    n = actions.num_rows
    lows, highs = _column(actions, f"min.{column}", n), _column(actions, f"max.{column}", n)
    nulls, records = _column(actions, f"null_count.{column}", n), _column(actions, "num_records", n)
    values = sorted(v for v in allowed if v is not None)
    keep, decided = np.ones(n, bool), np.zeros(n, bool)
    for i, (low, high, null, rows) in enumerate(zip(lows, highs, nulls, records)):
        if null is not None and rows is not None and null == rows:  # only nulls in this file
            keep[i] = decided[i] = None in allowed
        elif low is None or high is None:  # no statistics: read it, check rows
            keep[i] = True
        else:
            hit = any(low <= v <= high for v in values)
            keep[i] = hit or (None in allowed and bool(null))
            decided[i] = low == high and low in allowed and null == 0
    return keep, decided


def _tissue_filter(actions: pa.Table, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(keep, decided) of the ``min_tissue_fraction`` filter, from the tissue fraction's min/max."""
    n = actions.num_rows
    lows, highs = _column(actions, f"min.{TISSUE_COLUMN}", n), _column(actions, f"max.{TISSUE_COLUMN}", n)
    nulls = _column(actions, f"null_count.{TISSUE_COLUMN}", n)
    keep = np.array([h is None or h >= threshold for h in highs], bool)
    decided = np.array([lo is not None and lo >= threshold and nl == 0 for lo, nl in zip(lows, nulls)], bool)
    return keep, decided


def select_files(spec: StreamSpec) -> Selection:
    """Prune the snapshot's files with the spec's filters; list the filters left for rows."""
    version, actions, uris = snapshot_files(spec)
    keep = np.ones(actions.num_rows, bool)
    row_sets: dict[str, frozenset[Any]] = {}
    for name, column in SET_FILTERS.items():
        allowed = getattr(spec, name)
        if allowed is None:
            continue
        allowed = frozenset(allowed)
        if column == "label" and spec.label_set is not None:  # the set's label is in lists: rows decide
            row_sets[column] = allowed
            continue
        file_keep, decided = _set_filter(actions, column, allowed)
        keep &= file_keep
        if not decided[keep].all():
            row_sets[column] = allowed
    row_tissue = None
    if spec.min_tissue_fraction is not None:
        file_keep, decided = _tissue_filter(actions, spec.min_tissue_fraction)
        keep &= file_keep
        if not decided[keep].all():
            row_tissue = float(spec.min_tissue_fraction)
    records = _column(actions, "num_records", actions.num_rows)
    chosen = sorted(np.flatnonzero(keep).tolist(), key=lambda i: uris[i])
    return Selection(version, [uris[i] for i in chosen], int(sum(records[i] or 0 for i in chosen)),
                     row_sets, row_tissue, spec.label_set)


def streamed_labels(frame: Union[pd.DataFrame, pa.Table], label_set: Optional[str]) -> pd.Series:
    """Each row's label: ``label``, or with ``label_set`` that set's label from the set lists (None: none)."""
    if label_set is None:
        return _series(frame, "label").astype(object)
    labels: list[Optional[str]] = []
    for sets, values in zip(_series(frame, "label_sets"), _series(frame, "set_labels")):
        names = [] if sets is None else list(sets)
        labels.append(values[names.index(label_set)] if label_set in names else None)
    return pd.Series(labels, dtype=object)


def row_mask(frame: Union[pd.DataFrame, pa.Table], row_sets: Mapping[str, Iterable[Any]],
             min_tissue_fraction: Optional[float], label_set: Optional[str] = None) -> np.ndarray:
    """Boolean mask of the rows of a pandas DataFrame or pyarrow Table that pass the row-level filters.

    With ``label_set``, rows without a label of that set fail, and a ``label`` filter reads that label.
    """
    mask = np.ones(len(frame), bool)
    labels = streamed_labels(frame, label_set) if label_set is not None else None
    if labels is not None:
        mask &= labels.notna().to_numpy()
    for column, allowed in row_sets.items():
        values = labels if labels is not None and column == "label" else _series(frame, column)
        allowed_values = set(allowed)
        hit = values.isin([v for v in allowed_values if v is not None]).to_numpy()
        if None in allowed_values:
            hit |= values.isna().to_numpy()
        mask &= hit
    if min_tissue_fraction is not None:
        tissue = _series(frame, TISSUE_COLUMN)
        mask &= (tissue.to_numpy(dtype=np.float64, na_value=np.nan) >= min_tissue_fraction)
    return mask


def _series(frame: Union[pd.DataFrame, pa.Table], column: str) -> pd.Series:
    """One column of a pandas DataFrame or pyarrow Table as a pandas Series."""
    return frame.column(column).to_pandas() if isinstance(frame, pa.Table) else frame[column]


def read_columns(files: list[str], columns: list[str]) -> pa.Table:
    """Some columns of the given files (e.g. ``total_counts`` for the median), read with pyarrow."""
    parts = []
    for uri in files:
        fs, path = storage.filesystem(uri)
        parts.append(pq.read_table(path, columns=columns, filesystem=fs))
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.null()) for c in columns})


def median_total_counts(selection: Selection) -> float:
    """Scanpy's default ``target_sum``: the median of the positive total counts of the selected rows."""
    columns = ["total_counts", *selection.row_columns]
    rows = read_columns(selection.files, columns)
    if rows.num_rows == 0:
        return 1.0
    mask = row_mask(rows, selection.row_sets, selection.row_min_tissue_fraction, selection.label_set)
    totals = rows.column("total_counts").to_numpy(zero_copy_only=False)[mask]
    totals = totals[totals > 0]
    return float(np.median(totals)) if totals.size else 1.0


def label_counts(selection: Selection) -> dict[str, int]:
    """How many selected rows carry each (streamed) label."""
    columns = list(dict.fromkeys(["label", *selection.row_columns]))
    rows = read_columns(selection.files, columns)
    if rows.num_rows == 0:
        return {}
    mask = row_mask(rows, selection.row_sets, selection.row_min_tissue_fraction, selection.label_set)
    labels = streamed_labels(rows, selection.label_set)[mask]
    return {str(k): int(v) for k, v in labels.dropna().value_counts().sort_index().items()}


__all__ = ["Selection", "label_counts", "select_files", "row_mask", "median_total_counts", "streamed_labels"]
