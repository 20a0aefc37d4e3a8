"""Label sets of one slide: labels read from one source, put onto the slide's spots.

A format module turns its file (or column) into :class:`Labels`: the set's name, where it came from,
and one (spot index, raw label) pair per labelled row it could place. :func:`attach` lays every set
onto the spots as one column of ``Spots.annotations``; a spot placed twice in one set keeps its first
label and is reported (``annotation_duplicate``). Problems with an annotation never reject a slide:
they are ``rejects`` warnings.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from stlake.ingestion.readers.common import preview
from stlake.ingestion.records import LabelSet, Remark, Spots
from stlake.lake import storage

#: The path role of a slide's annotation files; further files of one slide are ``annotation.2``, ``annotation.3``...
ANNOTATION_ROLE = "annotation"
#: Separates several annotation files in one manifest cell.
PATH_SEPARATOR = ";"
#: File name endings left out of a set's name.
NAME_SUFFIXES = (".gz", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Labels:
    """The labels of one set as read: ``spot`` indexes the slide's spots, ``raw`` is the label as written."""

    name: str
    source_uri: str
    spot: np.ndarray  # int64 positions into the slide's spots
    raw: np.ndarray  # object array of str


def annotation_paths(paths: dict[str, str]) -> list[str]:
    """The slide's annotation files in order: ``annotation``, then ``annotation.2``, ``annotation.3``..."""
    keys = [k for k in paths if k == ANNOTATION_ROLE or re.fullmatch(rf"{ANNOTATION_ROLE}\.\d+", k)]
    keys.sort(key=lambda k: 1 if k == ANNOTATION_ROLE else int(k.split(".")[1]))
    return [paths[k] for k in keys]


def annotation_roles(files: list[str]) -> dict[str, str]:
    """``files`` as path roles: the first is ``annotation``, the next ``annotation.2``..."""
    return {ANNOTATION_ROLE if i == 0 else f"{ANNOTATION_ROLE}.{i + 1}": path for i, path in enumerate(files)}


def without_annotations(paths: dict[str, str]) -> dict[str, str]:
    """``paths`` without annotation roles."""
    return {k: v for k, v in paths.items() if k != ANNOTATION_ROLE and not k.startswith(f"{ANNOTATION_ROLE}.")}


def with_annotations(paths: dict[str, str], found: list[str]) -> dict[str, str]:
    """``paths`` with ``found`` annotation files added unless the paths already name some."""
    if annotation_paths(paths) or not found:
        return dict(paths)
    return {**annotation_roles(found), **paths}


def file_set_name(path: str, slide_id: str) -> str:
    """A file's set name: its name without extensions and without the slide id around it.

    ``A1_labeled_coordinates.tsv`` of slide ``A1`` -> ``labeled_coordinates``; ``slideA_anno.csv`` -> ``anno``.
    """
    name = storage.basename(path)
    while name.lower().endswith(NAME_SUFFIXES):
        name = name[: name.rfind(".")]
    for affix in (f"{slide_id}_", f"{slide_id}-", f"{slide_id}."):
        if name.startswith(affix) and len(name) > len(affix):
            name = name[len(affix):]
    for affix in (f"_{slide_id}", f"-{slide_id}", f".{slide_id}"):
        if name.endswith(affix) and len(name) > len(affix):
            name = name[: -len(affix)]
    return name.strip() or ANNOTATION_ROLE


def by_spot_id(name: str, path: str, keys: np.ndarray, raw: np.ndarray, spot_ids: np.ndarray,
               warnings: list[Remark]) -> Labels:
    """Labels keyed by spot id (barcode); ids that are not spots of the slide -> ``annotation_unmatched``."""
    where = pd.Index(spot_ids).get_indexer(keys)
    unmatched = keys[where < 0]
    if len(unmatched):
        warnings.append(("annotation_unmatched", f"{len(unmatched)} labelled spot id(s) of {path} (set {name}) are "
                                                 f"not spots of the slide, e.g. {preview(unmatched)}"))
    return Labels(name, path, where[where >= 0].astype(np.int64), raw[where >= 0])


def present(values: pd.Series) -> np.ndarray:
    """Rows whose label is a non-empty string (NA and blank labels are no label)."""
    text = values.astype("string")
    return (text.notna() & (text.str.strip() != "")).to_numpy(dtype=bool)


def unique_name(name: str, taken: set[str], path: str, slide_id: str) -> str:
    """``name``, or the file's name, or a numbered name when a slide's sets would share it."""
    for candidate in (name, f"{name}:{file_set_name(path, slide_id)}"):
        if candidate not in taken:
            return candidate
    number = 2
    while f"{name}.{number}" in taken:
        number += 1
    return f"{name}.{number}"


def attach(spots: Spots, found: list[Labels], slide_id: str, warnings: list[Remark]) -> tuple[Spots, list[LabelSet]]:
    """``spots`` with one ``annotations`` column per set of ``found``, and the sets' declarations."""
    if not found:
        return spots, []
    columns = np.full((len(spots), len(found)), None, dtype=object)
    sets: list[LabelSet] = []
    for j, labels in enumerate(found):
        name = unique_name(labels.name, {s.name for s in sets}, labels.source_uri, slide_id)
        first = ~pd.Series(labels.spot).duplicated(keep="first").to_numpy()
        if not first.all():
            twice = spots.spot_id[np.unique(labels.spot[~first])]
            warnings.append(("annotation_duplicate", f"{len(twice)} spot(s) have more than one label in set "
                                                     f"{name} ({labels.source_uri}); the first is kept, "
                                                     f"e.g. {preview(twice)}"))
        columns[labels.spot[first], j] = [str(v).strip() for v in labels.raw[first]]
        sets.append(LabelSet(name, labels.source_uri))
    return dataclasses.replace(spots, annotations=columns), sets


def missing_or_none(path: str, warnings: list[Remark]) -> Optional[str]:
    """``path`` when it exists, else None and an ``annotation_missing`` warning."""
    if storage.exists(path):
        return path
    warnings.append(("annotation_missing", f"annotation file not found: {path}"))
    return None
