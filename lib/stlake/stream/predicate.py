"""The stream's row filter as a Petastorm predicate (imported on first use: Petastorm is slow to import)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from petastorm.predicates import PredicateBase

from stlake.stream.snapshot import Selection, row_mask


class RowFilter(PredicateBase):
    """Keeps the rows that pass the filters the file statistics of a :class:`Selection` could not decide.

    ``shard`` ``(cur, count)``: also only the rows of shard ``cur`` (a stable hash of slide and spot id).
    """

    def __init__(self, selection: Selection, shard: Optional[tuple[int, int]] = None) -> None:
        self.selection, self.shard = selection, shard

    def get_fields(self) -> set[str]:
        """Columns the filter reads."""
        return set(self.selection.row_columns) | ({"slide_id", "spot_id"} if self.shard else set())

    def do_include(self, values: pd.DataFrame) -> pd.Series:
        """Per row of one row group: True where the row passes."""
        mask = np.asarray(row_mask(values, self.selection.row_sets, self.selection.row_min_tissue_fraction,
                                   self.selection.label_set), bool)
        if self.shard is not None:
            keys = pd.util.hash_pandas_object(values[["slide_id", "spot_id"]].astype(str), index=False).to_numpy()
            mask = mask & (keys % np.uint64(self.shard[1]) == np.uint64(self.shard[0]))
        return pd.Series(mask, index=values.index)
