"""Legacy Spatial Transcriptomics counts (``st_tsv``): a tab-separated spots x genes table, often gzipped.

Rows are spots named ``{x}x{y}`` (array position), columns are genes. The same delimited-text
matrix as a dense CSV (:mod:`.text`, :mod:`.text_parse`: byte ranges and a vectorised parser instead
of pandas, for bounded memory and speed) with a tab as its default separator.
"""
from __future__ import annotations

from collections.abc import Iterator

from stlake.ingestion.matrices.batch import ExprChunk, ExprPlan, SparseBatch
from stlake.ingestion.matrices.format import MatrixFormat
from stlake.ingestion.matrices.text import TEXT_CHUNK_KINDS, plan_text, read_text_chunk
from stlake.ingestion.records import ExpressionSource

SEP = "\t"  # default field separator


def plan(src: ExpressionSource, chunk_bytes: int) -> ExprPlan:
    """Genes from the header; byte-range chunks of the data lines (one chunk when gzipped)."""
    return plan_text(src, chunk_bytes, SEP)


def read(src: ExpressionSource, expr_plan: ExprPlan, chunk: ExprChunk) -> Iterator[SparseBatch]:
    """The rows of one chunk, validated, in bounded batches."""
    return read_text_chunk(src, expr_plan, chunk, SEP)


FORMAT = MatrixFormat("st_tsv", plan, read, TEXT_CHUNK_KINDS)
