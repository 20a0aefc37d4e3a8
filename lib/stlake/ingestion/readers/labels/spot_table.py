"""Spot-id label tables (STimage-1K4M ``annotation/{slide}_anno.csv``): a spot id column and a label column.

The release writes them TAB separated with an unnamed index and the label column ``V2``; a comma-separated
table is read the same way. The label column is ``V2`` when there is one, else the last column.
"""
from __future__ import annotations

import numpy as np

from stlake.ingestion.readers.common import as_ids, read_csv
from stlake.ingestion.readers.labels.sets import Labels, by_spot_id, file_set_name, present
from stlake.ingestion.records import Remark, Spots

LABEL_COLUMN = "V2"


def read(path: str, header: str, slide_id: str, spots: Spots, warnings: list[Remark]) -> list[Labels]:
    """The one set of the table at ``path`` (``header`` is its first line)."""
    frame = read_csv(path, sep="\t" if "\t" in header else ",", index_col=0, dtype=str, keep_default_na=False)
    if frame.shape[1] == 0:
        warnings.append(("annotation_unreadable", f"{path} has no label column"))
        return []
    labels = frame[LABEL_COLUMN if LABEL_COLUMN in frame.columns else frame.columns[-1]]
    keep = present(labels)
    return [by_spot_id(file_set_name(path, slide_id), path, as_ids(frame.index[keep]),
                       np.asarray(labels[keep], dtype=object), spots.spot_id, warnings)]
