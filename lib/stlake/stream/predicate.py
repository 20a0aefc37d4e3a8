"""The stream's row filter as a Petastorm predicate (imported on first use: Petastorm is slow to import)."""
from __future__ import annotations

import pandas as pd
from petastorm.predicates import PredicateBase

from stlake.stream.snapshot import Selection, row_mask


class RowFilter(PredicateBase):
    """Keeps the rows that pass the filters the file statistics of a :class:`Selection` could not decide."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def get_fields(self) -> set[str]:
        """Columns the filter reads."""
        return set(self.selection.row_columns)

    def do_include(self, values: pd.DataFrame) -> pd.Series:
        """Per row of one row group: True where the row passes."""
        mask = row_mask(values, self.selection.row_sets, self.selection.row_min_tissue_fraction,
                        self.selection.label_set)
        return pd.Series(mask, index=values.index)
