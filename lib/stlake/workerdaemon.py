"""PySpark's Python worker daemon: stlake's task modules imported once before it forks workers, zips kept listed.

Spark starts one daemon per executor (``spark.python.daemon.module``); the daemon forks a worker
process per concurrent task slot, and each worker imports what its first task unpickles: numpy,
pyarrow, scipy, OpenCV, tifffile, h5py and stlake's ingestion modules, about 1.2 CPU-seconds a
worker. Imported here, in the daemon, the workers inherit them (copy-on-write) and start ready.

Only imports happen before the fork: no thread pool is started and no file is opened, which is what
makes forking after them safe (the same rule as Python's ``multiprocessing`` fork start method).
A module that fails to import is skipped; the task that needs it reports the error as usual.
"""
from __future__ import annotations

import importlib

#: What stage-1 and stage-2 tasks import (their closures come from these modules).
PRELOADED = ("numpy", "pyarrow", "pyarrow.parquet", "scipy.sparse", "cv2", "stlake.tasks",
             "stlake.ingestion.plan", "stlake.ingestion.units")


def keep_zip_directories() -> None:
    """Zip importers keep their directory listing when ``importlib.invalidate_caches()`` runs.

    PySpark's worker calls ``invalidate_caches()`` before every task (``setup_spark_files``); since
    Python 3.10 that re-reads the directory of every zip on ``sys.path``, and ``pyspark.zip`` holds
    1,220 files: ~0.2 CPU-seconds a task, measured with py-spy on the corpus benchmark. A Spark
    application's zips (pyspark, py4j, ``--py-files``) do not change while it runs; a file added later
    is a new path, which gets a new importer.
    """
    import zipimport

    if hasattr(zipimport.zipimporter, "invalidate_caches"):
        zipimport.zipimporter.invalidate_caches = lambda self: None  # type: ignore[method-assign]


def preload() -> list[str]:
    """Import :data:`PRELOADED`; returns the modules that could not be imported."""
    missing = []
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except Exception:  # a worker without an optional library still serves other tasks
            missing.append(name)
    return missing


if __name__ == "__main__":
    keep_zip_directories()
    preload()
    from pyspark.daemon import manager

    manager()
