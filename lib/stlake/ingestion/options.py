"""Options of an ingest run (CLI flags map one to one)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


#: Bytes of decoded image / parsed matrix one task may hold, unless ``--memory-budget`` says otherwise.
DEFAULT_MEMORY_BUDGET = 4 << 30


@dataclass(frozen=True)
class IngestOptions:
    """What to ingest, where to, and how to cut tiles and split work."""

    source: str  # a root folder / s3:// prefix to scan, or a manifest (.csv/.yaml)
    lake: str  # the lake root: ./lake or s3://bucket/lake
    tile_px: Optional[int] = None  # side of the cut square in pixels (default: the spot diameter)
    tile_um: Optional[float] = None  # ... or in micrometres (needs microns_per_pixel)
    resize_px: Optional[int] = None  # resize every tile to this side (e.g. 224)
    border: str = "pad"  # "pad" or "drop" spots whose square leaves the image
    encoding: str = "jpeg"  # "jpeg" or "png"
    quality: int = 90  # JPEG quality
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of decoded image / parsed matrix one task may hold
    expr_chunk_bytes: int = 64 << 20  # dense-CSV byte range per expression task
    max_spots_per_task: int = 20_000  # split a slide's tiles into tasks of at most this many spots
    bin_size_um: int = 8  # VisiumHD bin size
    in_tissue_only: bool = True
    layouts: Optional[tuple[str, ...]] = None  # only these layouts when scanning
