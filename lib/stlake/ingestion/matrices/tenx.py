"""What the two 10x formats (HDF5, matrix folder) share: feature selection and CSC slices -> batches.

10x matrices are features x barcodes in compressed-sparse-column form; a barcode is a spot. Only
``Gene Expression`` features become gene columns (antibody capture and other feature types are
dropped). Slices of consecutive barcodes are mapped, validated and sorted in numpy rather than
through scipy: one pass, no intermediate sparse matrix, and errors that name the spot and gene.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from stlake.ingestion.matrices.batch import ExprPlan, SparseBatch, batch_from_triplets, to_counts
from stlake.ingestion.records import SlideError

GENE_EXPRESSION = "Gene Expression"


def decode(values: np.ndarray) -> list[str]:
    """Byte strings (HDF5) or strings as ``str`` s."""
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]


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
              lookup: np.ndarray, genes: list[str], uri: str) -> SparseBatch:
    """One batch from CSC slices of consecutive barcodes: map, drop zeros, sort, validate."""
    if len(features) and (features.min() < 0 or features.max() >= len(lookup)):
        raise SlideError("expression_unreadable", f"feature index out of range in {uri}")
    rows = np.repeat(np.arange(len(ids)), np.diff(indptr))
    cols = lookup[features]
    keep = (cols >= 0) & (values != 0)
    rows, cols, values = rows[keep], cols[keep], values[keep]
    if len(cols) > 1 and ((np.diff(rows) == 0) & (np.diff(cols) <= 0)).any():
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        twice = (np.diff(rows) == 0) & (np.diff(cols) == 0)
        if twice.any():
            i = int(np.flatnonzero(twice)[0])
            raise SlideError("expression_unreadable", f"gene {genes[cols[i]]!r} listed twice for spot "
                                                      f"{ids[rows[i]]!r} in {uri}")
    counts = to_counts(values, lambda i: (ids[rows[i]], genes[cols[i]]), uri)
    return batch_from_triplets(ids, rows, cols, counts)
