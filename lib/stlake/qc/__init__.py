"""QC pictures of a lake (``stlake qc``).

A slide's thumbnail with its spots coloured by total counts, label and tissue fraction, a grid of
random tiles with their spot ids, a histogram of counts per spot, and one page per ingest run listing
its rejects. matplotlib is imported on first use.

    from stlake.qc import write_qc
    paths = write_qc("./lake", "visium_1", "qc/")   # PNG paths, also shown by the notebooks
"""
from stlake.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {"write_qc": "stlake.qc.report", "slide_pictures": "stlake.qc.report",
                                      "reject_pages": "stlake.qc.report"})

__all__ = ["reject_pages", "slide_pictures", "write_qc"]
