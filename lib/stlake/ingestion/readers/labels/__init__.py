"""Pathologist annotations of every layout: label files and columns -> label sets on a slide's spots.

One module per annotation format, each turning its source into :class:`~.sets.Labels`:

- :mod:`.spot_table`: spot id + label tables (STimage-1K4M ``annotation/{slide}_anno.csv``);
- :mod:`.loupe`: Loupe Browser ``Barcode,<category>`` CSVs (Visium, VisiumHD);
- :mod:`.labelled_coords`: HER2ST-style ``*_labeled_coordinates.tsv`` (legacy ST), matched by array
  position, else by the nearest spot centre within half the pitch;
- :mod:`.obs`: ``obs`` columns of an AnnData file named in the manifest (``annotation_columns``).

A reader calls :func:`read_files` with its slide's spots; the format of each file is recognised from its
first line. :mod:`.sets` lays the sets onto the spots; :mod:`.mapping` normalises them (and applies a
label map) once the record is read. Nothing here ever rejects a slide: problems are warnings.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from stlake.ingestion.readers.common import first_line
from stlake.ingestion.readers.labels import labelled_coords, loupe, spot_table
from stlake.ingestion.readers.labels import obs as obs_labels
from stlake.ingestion.readers.labels.mapping import check_label_map, finish, load_label_map, normalise
from stlake.ingestion.readers.labels.sets import (
    ANNOTATION_ROLE,
    PATH_SEPARATOR,
    Labels,
    annotation_paths,
    annotation_roles,
    attach,
    missing_or_none,
    with_annotations,
    without_annotations,
)
from stlake.ingestion.records import LabelSet, Remark, SlideRef, Spots, describe_input_error

__all__ = ["ANNOTATION_ROLE", "PATH_SEPARATOR", "LabelSet", "Labels", "annotation_paths", "annotation_roles",
           "attach", "check_label_map", "finish", "load_label_map", "normalise", "read_file", "read_files",
           "with_annotations",
           "without_annotations"]


def read_file(path: str, slide_id: str, spots: Spots, pitch_px: Optional[float], warnings: list[Remark]
              ) -> list[Labels]:
    """The sets of one annotation file, its format recognised from its first line; problems -> warnings."""
    if missing_or_none(path, warnings) is None:
        return []
    try:
        header = first_line(path)
        if labelled_coords.is_labelled_coords_header(header):
            return labelled_coords.read(path, slide_id, spots, pitch_px, warnings)
        if loupe.is_loupe_header(header):
            return loupe.read(path, spots, warnings)
        return spot_table.read(path, header, slide_id, spots, warnings)
    except Exception as error:  # an annotation problem never sinks the slide
        warnings.append(("annotation_unreadable", f"{path}: {describe_input_error(error)}"))
        return []


def read_files(ref: SlideRef, spots: Spots, warnings: list[Remark], pitch_px: Optional[float] = None,
               obs: Optional[pd.DataFrame] = None, obs_path: str = "") -> tuple[Spots, list[LabelSet]]:
    """``spots`` with the sets of every annotation file of ``ref`` attached (see :func:`.sets.attach`).

    ``pitch_px`` (the spot pitch in pixels of ``spots``) lets labelled coordinates fall back on pixel positions;
    ``obs`` (an AnnData ``obs`` frame read from ``obs_path``) adds the columns the manifest names
    (``annotation_columns``), after the files.
    """
    found = [labels for path in annotation_paths(ref.paths)
             for labels in read_file(path, ref.slide_id, spots, pitch_px, warnings)]
    if obs is not None:
        found += obs_labels.read(obs, obs_labels.label_columns(ref), obs_path, spots, warnings)
    return attach(spots, found, ref.slide_id, warnings)
