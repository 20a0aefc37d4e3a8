"""The declaration every count-matrix module makes once: ``FORMAT = MatrixFormat(...)``.

A format is one ``ExpressionSource.kind`` (``MatrixKind``). Its declaration says how a matrix of that
kind is planned (headers / metadata only -> genes and chunks) and how one chunk is read (-> validated
``SparseBatch`` es), which chunk kinds its planner makes, and (10x) how a chunk's row ids are listed
without reading counts (the planner turns them into per-chunk row masks, :mod:`.rows`). The registry in
:mod:`stlake.ingestion.matrices` is built from these declarations.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np

from stlake.ingestion.matrices.batch import ExprChunk, ExprPlan, SparseBatch
from stlake.ingestion.records import ExpressionSource, MatrixKind

#: A source and the chunk size in bytes -> its genes and chunks, from headers / metadata only.
Plan = Callable[[ExpressionSource, int], ExprPlan]
#: A source, its plan and one of its chunks -> the chunk's rows in batches of validated counts.
ReadChunk = Callable[[ExpressionSource, ExprPlan, ExprChunk], Iterator[SparseBatch]]
#: A source, its plan and one chunk -> the chunk's row (spot) ids in the order ``read`` yields them.
RowIds = Callable[[ExpressionSource, ExprPlan, ExprChunk], np.ndarray]


@dataclass(frozen=True)
class MatrixFormat:
    """One count-matrix format, declared by its module."""

    kind: MatrixKind
    plan: Plan
    read: ReadChunk
    chunk_kinds: tuple[str, ...]  # the ``ExprChunk.kind`` s its planner makes
    row_ids: Optional[RowIds] = None  # formats whose row ids can be listed without reading counts
