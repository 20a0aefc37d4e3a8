"""Ingestion: raw slides -> work units -> Parquet files, committed by the driver (see docs/architecture.md).

``discover`` finds slides, ``readers`` (one module per input layout) turn them into records, ``plan``
cuts each slide into units (stage 1), ``units`` runs them (stage 2) with ``images`` (one module per
image format), ``matrices`` (one module per count-matrix format) and ``tiling``; ``driver`` judges
the slides and commits every table once.
"""
from stlake.lazy import lazy_exports

# Lazy, so that a Spark task importing ``stlake.ingestion.images`` (say) does not import the driver.
_EXPORTS = {"CommitFailed": "stlake.ingestion.driver", "IngestReport": "stlake.ingestion.driver",
            "ingest": "stlake.ingestion.driver", "IngestOptions": "stlake.ingestion.options"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
