"""Export from the lake: one AnnData ``.h5ad`` per slide (scanpy / squidpy), written by a Spark job.

``anndata`` builds the object of one slide (:func:`to_anndata`), ``image`` rebuilds the slide's tissue
image from its tiles, ``job`` runs one Spark task per slide, ``cli`` is ``stlake export``.
"""
