"""One Spark task per item, with the DataFrame API only (so it runs on classic Spark and Spark Connect alike).

The items (slide refs, work units) are pickled into a small two-column frame (``index``, ``item``) made
with ``createDataFrame``; ``repartitionByRange(n, "index")`` gives each of the ``n`` partitions exactly one
item (every index is a range bound, as the partitioner samples all of a small input), and ``mapInArrow``
runs the work on it and returns the pickled result. No ``sparkContext``, no RDD: Spark Connect clients
have neither. Results should stay small (metadata of what a task wrote), as they travel to the driver.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")
R = TypeVar("R")
#: The frame of items and the frame of results (``index`` ties a result to its item).
ITEMS_SCHEMA = "index long, item binary"
RESULTS_SCHEMA = "index long, result binary"


def _runner(work: Callable[[T], R]) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: ``work`` on each pickled item of a partition, results pickled."""
    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            items = batch.column("item").to_pylist()
            results = [pickle.dumps(work(pickle.loads(item)), protocol=pickle.HIGHEST_PROTOCOL) for item in items]
            yield pa.RecordBatch.from_arrays([batch.column("index"), pa.array(results, pa.binary())],
                                             names=["index", "result"])
    return run


def run_each(spark: SparkSession, items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """``[work(item) for item in items]`` with one Spark task per item; results in the items' order.

    ``work`` and the items are pickled (``work`` by Spark, with cloudpickle), so the executors must be
    able to import the modules they come from.
    """
    if not items:
        return []
    import pandas as pd
    payload = pd.DataFrame({"index": range(len(items)),
                            "item": [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]})
    frame = spark.createDataFrame(payload, ITEMS_SCHEMA).repartitionByRange(len(items), "index")
    results = frame.mapInArrow(_runner(work), RESULTS_SCHEMA).toPandas()
    ordered = results.sort_values("index")
    return [pickle.loads(result) for result in ordered["result"]]
