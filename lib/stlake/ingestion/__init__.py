"""Ingestion: raw slides -> work units -> Parquet files, committed by the driver (see docs/architecture.md).

``discover`` finds slides, ``readers`` (one module per input layout) turn them into records, ``plan``
cuts each slide into units (stage 1), ``units`` runs them (stage 2) with ``images`` (one module per
image format), ``matrices`` (one module per count-matrix format) and ``tiling``; ``driver`` judges
the slides and commits every table once.
"""
from stlake.ingestion.driver import CommitFailed, IngestReport, ingest
from stlake.ingestion.options import IngestOptions

__all__ = ["CommitFailed", "IngestOptions", "IngestReport", "ingest"]
