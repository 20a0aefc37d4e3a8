"""Normalised labels: trimmed and case-folded, optionally mapped onto one vocabulary by a label map.

A label map is a CSV with a header and the columns ``raw`` and ``label``: each row maps a raw label
(compared after normalisation, so ``Invasive cancer`` and ``invasive cancer `` are one) onto a label
of the shared vocabulary, e.g. ``invasive cancer,tumor`` and ``tumour,tumor``; an empty ``label`` maps
the raw label to none (e.g. ``undetermined,``). Labels the map does not name stay as normalised, or,
with a strict map, get no label and are reported (``label_unmapped``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import numpy as np

from stlake.ingestion.readers.common import read_csv
from stlake.ingestion.records import LabelSet, Remark, RunError, SlideRecord
from stlake.lake import storage

MAP_COLUMNS = ("raw", "label")


def normalise(raw: str) -> str:
    """Trimmed, inner white space collapsed to one space, case-folded."""
    return " ".join(str(raw).split()).casefold()


@functools.lru_cache(maxsize=8)
def load_label_map(path: str) -> dict[str, Optional[str]]:
    """The label map at ``path`` (normalised raw label -> normalised label or None); ``ValueError`` when unusable."""
    if not storage.exists(path):
        raise ValueError(f"label map {path} does not exist")
    try:
        frame = read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:
        raise ValueError(f"label map {path} is not a readable CSV ({type(error).__name__})") from None
    columns = [str(c).strip().lower() for c in frame.columns]
    if not set(MAP_COLUMNS) <= set(columns):
        raise ValueError(f"label map {path} needs the columns raw,label (has {', '.join(columns)})")
    frame.columns = columns
    mapping: dict[str, Optional[str]] = {}
    for raw, label in zip(frame["raw"], frame["label"]):
        key, value = normalise(raw), normalise(label) or None
        if key in mapping and mapping[key] != value:
            raise ValueError(f"label map {path} maps {key!r} twice, to different labels")
        mapping[key] = value
    return mapping


def check_label_map(path: Optional[str]) -> None:
    """``RunError`` (one line) when the label map at ``path`` cannot be used; checked before a run starts."""
    if path:
        try:
            load_label_map(path)
        except ValueError as error:
            raise RunError(str(error)) from None


def vocabulary(raw: np.ndarray, mapping: Optional[dict[str, Optional[str]]], strict: bool
               ) -> tuple[dict[str, Optional[str]], list[str]]:
    """Each distinct raw label's normalised label, and the normalised labels a strict map does not know."""
    result: dict[str, Optional[str]] = {}
    unknown: list[str] = []
    for value in dict.fromkeys(v for v in raw if v is not None):
        key = normalise(value)
        if mapping is not None and key in mapping:
            result[value] = mapping[key]
        elif mapping is not None and strict:
            result[value] = None
            unknown.append(key)
        else:
            result[value] = key or None
    return result, list(dict.fromkeys(unknown))


def finish(record: SlideRecord, label_set: Optional[str], label_map: Optional[str], strict: bool) -> SlideRecord:
    """The record with each set's vocabulary and ``spots.label`` = the chosen set's normalised labels.

    The chosen set is ``label_set`` when given, else the first; a slide with sets but not the chosen one
    lands without ``spots.label`` and a ``label_set_missing`` warning.
    """
    if not record.label_sets:
        return record
    mapping = load_label_map(label_map) if label_map else None
    columns = record.spots.label_columns()
    warnings: list[Remark] = list(record.warnings)
    sets: list[LabelSet] = []
    for j, label_set_ in enumerate(record.label_sets):
        words, unknown = vocabulary(columns[:, j], mapping, strict)
        if unknown:
            hits = sum(v is not None and normalise(v) in unknown for v in columns[:, j])
            warnings.append(("label_unmapped", f"{len(unknown)} distinct label(s) of set {label_set_.name} "
                                               f"({label_set_.source_uri}), on {hits} spot(s), are not in the "
                                               f"label map {label_map}: those spots get no label (their raw "
                                               "labels are in annotations.raw_label where label is null)"))
        sets.append(dataclasses.replace(label_set_, vocabulary=words))
    names = [s.name for s in sets]
    chosen = names.index(label_set) if label_set in names else (0 if label_set is None else None)
    label = np.full(len(record.spots), None, dtype=object)
    if chosen is None:
        warnings.append(("label_set_missing", f"the slide has no annotation set {label_set} (it has "
                                              f"{', '.join(names)}); spots.label stays empty"))
    else:
        words = sets[chosen].vocabulary
        label[:] = [None if v is None else words[v] for v in columns[:, chosen]]
    spots = dataclasses.replace(record.spots, label=label)
    return dataclasses.replace(record, spots=spots, label_sets=sets, warnings=warnings)
