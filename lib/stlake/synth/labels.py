"""Pathologist labels of synthetic slides, written as the annotation tools write them, with exact truth.

- Legacy ST: a HER2ST-style ``{slide}_labeled_coordinates.tsv`` (``Row.names x y pixel_x pixel_y label``,
  strings quoted as R's ``write.table`` does, ``NA`` for missing values, array coordinates as decimals).
  Most rows carry their spot's refined array position; some only the pixel position (placed by the nearest
  spot centre); some lie on detector spots without counts or have no position at all (unmatched); one row
  is ``NA`` throughout (no label). Labels use the cohort's words (``invasive cancer``...).
- Visium: Loupe Browser exports ``{category}.csv`` (``Barcode,<category>``), one per annotation set.
- AnnData: categorical ``obs`` columns (``pathology``, ``leiden``), named in the manifest's
  ``annotation_columns``.

The truth of a slide's sets goes to ``Truth.extra``: ``label_sets`` (set names in the order a reader
attaches them) and ``set:{name}`` (the raw label per truth spot, "" for none); ``Truth.labels`` holds
the first set's normalised labels (what lands in ``spots.label`` by default).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from stlake.synth.formats import open_text

#: The words of a HER2ST-like cohort for each synthetic domain (``image.DOMAINS`` order).
ST_WORDS = ("invasive cancer", "connective tissue", "immune infiltrate", "breast glands")
#: Loupe categories of ``visium_1``: a pathologist's regions (capitalised) and clusters.
LOUPE_WORDS = {"Annotation": ("Tumor", "Stroma", "Immune", "Normal"),
               "Graph-Based": ("Cluster 1", "Cluster 2", "Cluster 3", "Cluster 4")}
UNDETERMINED = "undetermined"
ST_SET = "labeled_coordinates"


#: ``obs`` label columns of the ``.h5ad`` slide that has them: a pathologist's regions (some spots left out)
#: and clusters, both categorical as scanpy keeps them.
OBS_WORDS = {"pathology": ("Tumor", "Stroma", "Immune", "Normal"), "leiden": ("0", "1", "2", "3")}
OBS_SET = "pathology"


def write_obs_labels(adata: Any, domain: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Categorical label columns in ``adata.obs`` (a twentieth of the spots without a pathology label)."""
    import pandas as pd
    sets = {}
    for column, words in OBS_WORDS.items():
        raw = np.asarray(words, dtype=object)[domain]
        if column == OBS_SET:
            raw[rng.choice(len(raw), size=max(1, len(raw) // 20), replace=False)] = None
        adata.obs[column] = pd.Categorical(raw)
        sets[column] = raw
    return sets


def normalised(raw: np.ndarray) -> np.ndarray:
    """What a reader's default normalisation makes of ``raw`` (None stays None)."""
    return np.array([None if v is None else " ".join(str(v).split()).casefold() for v in raw], dtype=object)


def truth_extra(sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``Truth.extra`` entries of ``sets`` (name -> raw label per spot, None for none)."""
    extra = {"label_sets": np.array(list(sets), dtype=object)}
    for name, raw in sets.items():
        extra[f"set:{name}"] = np.array(["" if v is None else v for v in raw], dtype=object)
    return extra


def _cell(value: Optional[float], decimals: int) -> str:
    return "NA" if value is None else f"{value:.{decimals}f}"


def write_labelled_coordinates(root: str, slide_id: str, names: np.ndarray, array_x: np.ndarray,
                               array_y: np.ndarray, pixel_x: np.ndarray, pixel_y: np.ndarray, domain: np.ndarray,
                               unmatched: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``{slide}_labeled_coordinates.tsv`` for spots ``0..len(names)`` (+ rows at ``unmatched`` positions).

    ``array_x``/``array_y`` are refined array coordinates, ``pixel_*`` spot centres; the first ``len(names)``
    entries are the slide's spots (in truth order), the rest (``unmatched``) detector spots without counts.
    Returns the raw label per spot and the number of labelled rows that match no spot.
    """
    n = len(names)
    raw = np.asarray(ST_WORDS, dtype=object)[domain[:n]]
    raw[rng.choice(n, size=min(3, n), replace=False)] = UNDETERMINED
    pixel_only = set(rng.choice(n, size=min(2, n), replace=False).tolist())
    rows = []
    for i in range(n):
        x, y = (None, None) if i in pixel_only else (array_x[i], array_y[i])
        rows.append((f'"{names[i]}"', _cell(x, 3), _cell(y, 3), _cell(pixel_x[i], 3), _cell(pixel_y[i], 3),
                     f'"{raw[i]}"'))
    for i in unmatched:
        rows.append(("NA", _cell(array_x[i], 3), _cell(array_y[i], 3), _cell(pixel_x[i], 3), _cell(pixel_y[i], 3),
                     f'"{ST_WORDS[int(domain[i])]}"'))
    rows.append(("NA", "NA", "NA", "NA", "NA", f'"{UNDETERMINED}"'))  # a label with no position: unmatched
    rows.append(("NA",) * 6)  # R's empty row: no label
    with open_text(os.path.join(root, f"{slide_id}_labeled_coordinates.tsv")) as text:
        text.write('"Row.names"\t"x"\t"y"\t"pixel_x"\t"pixel_y"\t"label"\n')
        text.write("".join("\t".join(row) + "\n" for row in rows))
    return raw, len(unmatched) + 1


def write_loupe_exports(root: str, barcodes: np.ndarray, domain: np.ndarray, labelled: np.ndarray
                        ) -> dict[str, np.ndarray]:
    """One ``{category}.csv`` per Loupe category for the ``labelled`` spots; the raw labels per set."""
    sets = {}
    for category, words in LOUPE_WORDS.items():
        raw = np.asarray(words, dtype=object)[domain]
        raw[~np.asarray(labelled, bool)] = None
        with open_text(os.path.join(root, f"{category}.csv")) as text:
            text.write(f"Barcode,{category}\n")
            text.write("".join(f"{b},{v}\n" for b, v in zip(barcodes, raw) if v is not None))
        sets[category] = raw
    return sets
