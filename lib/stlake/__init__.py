"""stlake: raw spatial-transcriptomics slides -> tiles + sparse expression in Delta tables, on Spark.

The root API (each name is imported on first use, so ``import stlake`` is cheap)::

    from stlake import IngestOptions, ingest, spark_session, register_views, build_pairs, compute_hvg
    from stlake import StreamSpec, make_loader, to_anndata

Packages: ``ingestion`` (raw slides -> lake), ``lake`` (schemas, storage, Delta commits, genes),
``sql`` (Spark over the lake), ``derived`` (pairs, HVG panels), ``stream`` (Petastorm -> PyTorch),
``train`` (reference CLIP training), ``synth`` (synthetic slides), ``testing`` (fixtures). The map is
docs/architecture.md.
"""
from stlake.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "IngestOptions": "stlake.ingestion.options",
    "ingest": "stlake.ingestion.driver",
    "spark_session": "stlake.spark",
    "register_views": "stlake.sql.views",
    "build_pairs": "stlake.derived.pairs",
    "compute_hvg": "stlake.derived.hvg",
    "StreamSpec": "stlake.stream.spec",
    "make_loader": "stlake.stream.reader",
    "to_anndata": "stlake.export.anndata",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
