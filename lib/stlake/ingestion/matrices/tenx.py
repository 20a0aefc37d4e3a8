"""What the two 10x formats (HDF5, matrix folder) share: feature selection and CSC slices -> batches.

10x matrices are features x barcodes in compressed-sparse-column form; a barcode is a spot. Only
``Gene Expression`` features become gene columns (antibody capture and other feature types are
dropped). Slices of consecutive barcodes are mapped, validated and sorted in numpy rather than
through scipy: one pass, no intermediate sparse matrix, and errors that name the place.

Errors name the file, the barcode (1-based column of the matrix, and its spot id), the feature
(1-based row, and its gene name) and the kind of problem, never a value (:mod:`.errors`). Feature and
barcode strings must be UTF-8 (``text_not_utf8`` otherwise).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from stlake.ingestion.matrices.batch import ExprPlan, SparseBatch, batch_from_triplets, to_counts
from stlake.ingestion.records import SlideError

GENE_EXPRESSION = "Gene Expression"


def gene_plan(ids: list[str], names: list[str],
              types: list[str]) -> tuple[list[str], list[Optional[str]], list[Optional[str]], np.ndarray]:
    """Keep Gene Expression features: (names, ids, symbols, source rows)."""
    rows = np.array([i for i, kind in enumerate(types) if kind == GENE_EXPRESSION], dtype=np.int64)
    return ([names[i] for i in rows], [ids[i] or None for i in rows], [names[i] or None for i in rows], rows)


def local_columns(plan: ExprPlan, n_features: int) -> np.ndarray:
    """Local gene column of every source feature row (-1 = not a kept gene)."""
    lookup = np.full(n_features, -1, dtype=np.int64)
    rows = plan.columns if plan.columns is not None else np.arange(len(plan.genes))
    lookup[rows] = np.arange(len(rows))
    return lookup


def csc_batch(ids: np.ndarray, indptr: np.ndarray, features: np.ndarray, values: np.ndarray,
              lookup: np.ndarray, genes: list[str], uri: str, first_barcode: int = 0) -> SparseBatch:
    """One batch from CSC slices of consecutive barcodes: map, drop zeros, sort, validate.

    ``first_barcode`` is the 0-based matrix column of the first barcode (errors name 1-based barcodes).
    """
    rows = np.repeat(np.arange(len(ids)), np.diff(indptr))
    outside = (features < 0) | (features >= len(lookup))
    if outside.any():
        row = int(rows[np.flatnonzero(outside)[0]])
        raise SlideError("expression_unreadable", f"{uri} barcode {first_barcode + row + 1} (spot {ids[row]!r}): "
                                                  f"feature index out of range (the matrix has {len(lookup)} "
                                                  f"features)")
    cols = lookup[features]
    keep = (cols >= 0) & (values != 0)
    rows, cols, values, features = rows[keep], cols[keep], values[keep], features[keep]
    if len(cols) > 1 and ((np.diff(rows) == 0) & (np.diff(cols) <= 0)).any():
        order = np.lexsort((cols, rows))
        rows, cols, values, features = rows[order], cols[order], values[order], features[order]
        twice = (np.diff(rows) == 0) & (np.diff(cols) == 0)
        if twice.any():
            i = int(np.flatnonzero(twice)[0])
            raise SlideError("expression_unreadable", f"{uri} barcode {first_barcode + int(rows[i]) + 1} (spot "
                                                      f"{ids[rows[i]]!r}): gene {genes[cols[i]]!r} listed twice")

    def place(i: int) -> str:
        return (f"{uri} barcode {first_barcode + int(rows[i]) + 1} (spot {ids[rows[i]]!r}), feature "
                f"{int(features[i]) + 1} (gene {genes[cols[i]]!r})")

    counts = to_counts(values, place)
    return batch_from_triplets(ids, rows, cols, counts)
