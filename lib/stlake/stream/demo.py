"""What ``make demo`` streams: build ``pairs`` and ``hvg256`` when missing, then show one batch.

Part of the demo entry point (:mod:`stlake.demo`): :func:`show_batch` prints what it shows; building
the missing tables is logged (``stlake.stream.demo`` logger).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from stlake.lake import tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEMO_PANEL_K = 256
logger = logging.getLogger(__name__)


def ensure_pairs_and_panel(lake: str, k: int = DEMO_PANEL_K, spark: Optional[SparkSession] = None) -> str:
    """Build the ``pairs`` table and the ``hvg{k}`` panel with Spark unless they exist; the panel name."""
    from stlake.derived.hvg import panel_names
    name = f"hvg{k}"
    need_pairs = tables.open_table(lake, "pairs") is None
    need_panel = name not in panel_names(lake)
    if need_pairs or need_panel:
        from stlake.spark import spark_session
        spark = spark or spark_session("stlake-demo-stream")
        if need_pairs:
            from stlake.derived.pairs import build_pairs
            logger.info("building pairs: version %d", build_pairs(spark, lake))
        if need_panel:
            from stlake.derived.hvg import compute_hvg
            logger.info("computing %s: %d genes", name, compute_hvg(spark, lake, k=k).num_rows)
    return name


def show_batch(lake: str, batch_size: int = 8, image_size: Optional[int] = 224,
               spark: Optional[SparkSession] = None) -> dict[str, Any]:
    """Stream one batch of ``pairs``; print its shapes, one row and that row's top-5 panel genes."""
    from stlake.stream import StreamSpec, make_loader
    panel_name = ensure_pairs_and_panel(lake, spark=spark)
    spec = StreamSpec(lake=lake, panel_name=panel_name, normalize="normalize_total_log1p", image_size=image_size,
                      batch_size=batch_size, seed=0)
    with make_loader(spec) as loader:
        batch = next(iter(loader), None)
        symbols = loader.panel.symbols
    if batch is None:
        print("\n== One training batch: the pairs table is empty")
        return {}
    print(f"\n== One training batch from `pairs` (Petastorm over the Delta snapshot, panel {panel_name}, "
          f"normalize_total + log1p)")
    print(f"image      {tuple(batch['image'].shape)} {batch['image'].dtype} (RGB)")
    print(f"expression {tuple(batch['expression'].shape)} {batch['expression'].dtype}")
    row = batch["expression"][0]
    top = row.argsort(descending=True)[:5].tolist()
    print(f"row 0: slide {batch['slide_id'][0]}, spot {batch['spot_id'][0]}, label {batch['label'][0]}")
    print("top-5 panel genes: " + ", ".join(f"{symbols[i]}={row[i]:.2f}" for i in top))
    return batch
