"""Expression matrices -> bounded batches of sparse rows (local gene columns, raw integer counts).

``plan_expression`` reads only headers and small metadata and cuts the matrix into chunks, each one
Spark task; ``read_chunk`` turns one chunk into ``SparseBatch`` es of at most ``MAX_BATCH_ROWS`` rows; ``plan_rows``
gives each chunk its lookup of the slide's spots (:mod:`.rows`).

One module per format (``ExpressionSource.kind``), each declaring ``FORMAT`` (see :mod:`.format`):
``dense_csv`` and ``st_tsv`` (delimited text cut into byte ranges, :mod:`.text` / :mod:`.text_parse`),
``tenx_h5`` (10x HDF5, barcode-range chunks), ``tenx_mtx`` (10x matrix folder, one chunk) and ``h5ad``
(AnnData ``X`` / ``layers/counts`` / ``raw/X``, dense, CSR or CSC, obs-row chunks);
:mod:`.batch` holds the types and count validation they share. ``FORMATS`` below is the registry.

Counts are validated: non-integral -> ``non_integer_counts``, negative -> ``negative_counts``,
empty/NA or beyond int32 -> ``expression_unreadable``, a spot twice in a chunk -> ``duplicate_spot_ids``;
gene names and spot ids that are not UTF-8 -> ``text_not_utf8``. Every detail names the file, the line
(or barcode / dataset entry), the column and the kind of problem, and never quotes a value or a line:
``rejects`` is readable by everyone who reads the lake (:mod:`.errors` states the rule).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from stlake.ingestion.matrices import dense_csv, h5ad, st_tsv, tenx_h5, tenx_mtx
from stlake.ingestion.matrices.batch import (
    INT32_MAX,
    MAX_BATCH_NNZ,
    MAX_BATCH_ROWS,
    ExprChunk,
    ExprPlan,
    SparseBatch,
    check_unique,
)
from stlake.ingestion.matrices.errors import unreadable
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.rows import RowFilter, RowMask, SlideIds, SpotsWithoutRows, row_filters
from stlake.ingestion.matrices.tenx import GENE_EXPRESSION
from stlake.ingestion.matrices.text_parse import parse_text_block
from stlake.ingestion.records import ExpressionSource, SlideError

log = logging.getLogger(__name__)

#: The registry: ``ExpressionSource.kind`` -> its format's declaration.
FORMATS: dict[str, MatrixFormat] = {fmt.kind: fmt for fmt in (
    dense_csv.FORMAT,
    st_tsv.FORMAT,
    tenx_h5.FORMAT,
    tenx_mtx.FORMAT,
    h5ad.FORMAT,
)}

__all__ = ["FORMATS", "GENE_EXPRESSION", "INT32_MAX", "MAX_BATCH_NNZ", "MAX_BATCH_ROWS", "ExprChunk", "ExprPlan",
           "MatrixFormat", "RowFilter", "RowMask", "SlideIds", "SparseBatch", "SpotsWithoutRows", "get_format",
           "parse_text_block", "plan_expression", "plan_rows", "read_chunk"]


def get_format(src: ExpressionSource) -> MatrixFormat:
    """The format of ``src``; ``SlideError('expression_unreadable')`` for an unknown kind."""
    fmt = FORMATS.get(src.kind)
    if fmt is None:
        raise SlideError("expression_unreadable", f"unknown expression source kind {src.kind!r} ({src.uri}); "
                                                  f"known: {', '.join(FORMATS)}")
    return fmt


def plan_expression(src: ExpressionSource, chunk_bytes: int = 64 << 20) -> ExprPlan:
    """Genes and chunks of ``src``, from headers / metadata only."""
    fmt = get_format(src)
    with unreadable(src.uri):
        plan = fmt.plan(src, max(1, int(chunk_bytes)))
    log.debug("%s (%s): %d genes, %d chunk(s)", src.uri, src.kind, len(plan.genes), len(plan.chunks))
    return plan


def plan_rows(src: ExpressionSource, plan: ExprPlan, spot_ids: np.ndarray) -> list[RowFilter]:
    """Per chunk of ``plan``, which rows are the slide's spots (see :mod:`.rows`)."""
    with unreadable(src.uri):
        return row_filters(src, plan, spot_ids, get_format(src).row_ids)


def read_chunk(src: ExpressionSource, plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The sparse rows of one chunk, in batches of at most ``MAX_BATCH_ROWS`` rows, validated."""
    fmt = get_format(src)
    if chunk.kind not in fmt.chunk_kinds:
        raise SlideError("expression_unreadable", f"unknown chunk kind {chunk.kind!r} for a {src.kind} "
                                                  f"matrix ({src.uri})")
    seen: set[str] = set()
    with unreadable(src.uri):
        for batch in fmt.read(src, plan, chunk):
            check_unique(batch.spot_ids, seen, src.uri)
            yield batch
