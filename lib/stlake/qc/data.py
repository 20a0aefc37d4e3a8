"""What the QC pictures show, read from the lake: one slide's spots, tiles and counts, and the rejects."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stlake.lake import tables

SPOT_COLUMNS = ["spot_id", "x", "y", "label", "tissue_fraction", "tile", "tile_x0", "tile_y0", "tile_size_px"]
REJECT_COLUMNS = ["run_id", "slide_id", "stage", "severity", "reason", "detail", "rejected_at"]


class NoSuchSlide(LookupError):
    """The slide is not listed in the lake's ``slides`` table."""


@dataclass
class SlideData:
    """One landed slide: its spots (with tiles) and each spot's total counts, in the same order."""

    slide_id: str
    spots: pa.Table  # SPOT_COLUMNS
    total_counts: np.ndarray  # int64 per spot, -1 where the spot has no expression row
    spot_diameter_px: Optional[float]  # in pixels of the tiled image (None when unknown)

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return self.spots.num_rows

    def column(self, name: str) -> np.ndarray:
        """One spot column as a numpy array (objects for strings)."""
        return self.spots.column(name).to_numpy(zero_copy_only=False)


def read_slide(lake: str, slide_id: str) -> SlideData:
    """The slide's spots and total counts; ``NoSuchSlide`` when it has not landed in ``lake``."""
    slide = tables.slide_rows(lake, "slides", slide_id, ["slide_id", "spot_diameter_px"])
    if slide.num_rows == 0:
        landed = tables.slide_ids(lake, "slides")
        shown = ", ".join(landed[:8]) + (", ..." if len(landed) > 8 else "")
        raise NoSuchSlide(f"no slide {slide_id[:80]!r} in {lake} (slides: {shown or 'none'})")
    spots = tables.slide_rows(lake, "spots", slide_id, SPOT_COLUMNS).sort_by("spot_id")
    expression = tables.slide_rows(lake, "expression", slide_id, ["spot_id", "total_counts"])
    index = pc.index_in(spots.column("spot_id"), value_set=expression.column("spot_id"))
    totals = expression.column("total_counts").to_numpy(zero_copy_only=False)
    where = index.to_numpy(zero_copy_only=False)
    found = ~np.isnan(where.astype(float))
    counts = np.full(spots.num_rows, -1, np.int64)
    counts[found] = totals[where[found].astype(np.int64)]
    return SlideData(slide_id, spots, counts, slide.column("spot_diameter_px")[0].as_py())


def read_rejects(lake: str) -> dict[str, pa.Table]:
    """The ``rejects`` rows grouped by run (runs in the order they happened)."""
    rows = tables.read_table(lake, "rejects", columns=REJECT_COLUMNS)
    if rows.num_rows == 0:
        return {}
    rows = rows.sort_by([("rejected_at", "ascending"), ("slide_id", "ascending")])
    runs = list(dict.fromkeys(rows.column("run_id").to_pylist()))
    return {run or "": rows.filter(pc.equal(rows.column("run_id"), run)) if run is not None
            else rows.filter(pc.is_null(rows.column("run_id"))) for run in runs}
