"""Label columns of an AnnData ``obs`` frame (``.h5ad`` and HEST samples), named in the manifest.

A manifest's ``annotation_columns`` cell names the ``obs`` columns that hold labels (several separated by
``,`` or ``;``); each is one set, named after the column. Categorical, string and numeric columns are
read as text; missing values (NaN, empty strings) are no label. A named column the file lacks is reported
(``annotation_missing``).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from stlake.ingestion.readers.common import as_ids
from stlake.ingestion.readers.labels.sets import Labels, by_spot_id, present
from stlake.ingestion.records import Remark, SlideRef, Spots

#: The manifest column (in ``SlideRef.meta``) naming the label columns of ``obs``.
COLUMNS_KEY = "annotation_columns"


def label_columns(ref: SlideRef) -> list[str]:
    """The ``obs`` columns the manifest names as labels (none when it names none)."""
    return [name.strip() for name in re.split(r"[,;]", ref.meta.get(COLUMNS_KEY, "")) if name.strip()]


def read(obs: pd.DataFrame, columns: list[str], path: str, spots: Spots, warnings: list[Remark]) -> list[Labels]:
    """One set per named column of ``obs`` (index = spot ids), in the order named."""
    found = []
    ids = as_ids(obs.index)
    for column in columns:
        if column not in obs.columns:
            warnings.append(("annotation_missing", f"{path} has no obs column '{column}' (named in "
                                                   f"{COLUMNS_KEY})"))
            continue
        values = obs[column].astype(object).where(obs[column].notna(), None)
        text = pd.Series([None if v is None else str(v) for v in values], dtype=object)
        keep = present(text)
        found.append(by_spot_id(column, f"{path}#obs/{column}", ids[keep], np.asarray(text[keep], dtype=object),
                                spots.spot_id, warnings))
    return found
