"""Loupe Browser category exports: ``Barcode,<category>`` CSVs (Visium and VisiumHD).

Loupe Browser exports a category (a manual annotation or a clustering) as a CSV whose header is
``Barcode`` and the category's name, one row per assigned barcode. The set is named after the category;
a file with several category columns gives one set per column. Barcodes without a value are unlabelled.
"""
from __future__ import annotations

import numpy as np

from stlake.ingestion.readers.common import as_ids, first_line, read_csv
from stlake.ingestion.readers.labels.sets import Labels, by_spot_id, present
from stlake.ingestion.records import Remark, Spots
from stlake.lake import storage

BARCODE = "barcode"


def is_loupe_header(header: str) -> bool:
    """A Loupe export's first line: ``Barcode`` and at least one category, comma separated."""
    fields = [f.strip().strip('"').lower() for f in header.split(",")]
    return len(fields) >= 2 and fields[0] == BARCODE and all(fields[1:])


def read(path: str, spots: Spots, warnings: list[Remark]) -> list[Labels]:
    """One set per category column of the export at ``path``."""
    frame = read_csv(path, dtype=str, keep_default_na=False)
    barcodes = as_ids(frame[frame.columns[0]].str.strip())
    found = []
    for column in frame.columns[1:]:
        keep = present(frame[column])
        raw = np.asarray(frame[column][keep], dtype=object)
        found.append(by_spot_id(str(column).strip(), path, barcodes[keep], raw, spots.spot_id, warnings))
    return found


def find_exports(folder: str) -> list[str]:
    """The Loupe exports (CSVs whose first line is ``Barcode,<category>``) in ``folder`` (and above ``outs``)."""
    folders = [folder, storage.parent(folder)] if storage.basename(folder) == "outs" else [folder]
    found = []
    for place in folders:
        for name in sorted(storage.list_dir(place)):
            if not name.lower().endswith(".csv") or name.startswith("."):
                continue
            path = storage.join(place, name)
            try:
                header = first_line(path)
            except (OSError, UnicodeError, EOFError):
                continue
            if is_loupe_header(header):
                found.append(path)
    return found
