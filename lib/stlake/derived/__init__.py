"""Derived tables built by Spark jobs from the ingested ones: ``pairs`` and HVG gene panels (``hvg``)."""
