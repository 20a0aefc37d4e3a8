"""stlake: raw spatial-transcriptomics slides -> tiles + sparse expression in Delta tables, on Spark."""

__version__ = "0.1.0"
