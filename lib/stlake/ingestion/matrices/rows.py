"""Which rows of a chunk are the slide's spots: a per-chunk lookup small enough to ship with every task.

A chunk's rows are kept when their spot id is one of the slide's spots (the coordinates, in tissue or
not). The lookup never compares a batch against the slide's whole id list, and a unit never carries it
when it does not have to:

- ``RowMask`` (formats whose row ids the planner can read, the 10x ones): one bit per row of the chunk,
  computed at planning through a hash of the slide's ids; the planner also checks there that every
  spot has exactly one row, so these units return no ids to the driver.
- ``SlideIds`` (delimited text, whose row ids are known only once a chunk is parsed): the slide's ids,
  pickled and zlib-compressed (about 5 bytes per Visium barcode), looked up per batch through a hash
  index built once per task. Text matrices hold at most tens of thousands of spots.
"""
from __future__ import annotations

import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import pandas as pd

from stlake.ingestion.matrices.batch import ExprPlan
from stlake.ingestion.matrices.format import RowIds
from stlake.ingestion.records import ExpressionSource, SlideError


def _preview(ids: pd.Index, limit: int = 5) -> str:
    shown = ", ".join(repr(str(i)) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@dataclass(frozen=True)
class RowMask:
    """One bit per row of the chunk, in row order, zlib-compressed: kept rows are the slide's spots.

    A filtered matrix keeps (nearly) all its rows, so the mask compresses to a few bytes.
    """

    bits: bytes
    n_rows: int
    covered: bool = True  # the planner checked that every slide spot has exactly one row

    @classmethod
    def of(cls, keep: np.ndarray) -> RowMask:
        """The mask of a boolean array."""
        return cls(zlib.compress(np.packbits(keep).tobytes(), 6), len(keep))

    def keep(self, ids: np.ndarray, offset: int) -> np.ndarray:
        """Rows ``offset .. offset + len(ids)`` of the chunk that are the slide's."""
        if offset + len(ids) > self.n_rows:
            raise SlideError("expression_unreadable", f"a chunk has more than the {self.n_rows} rows it was planned "
                                                      "with (the matrix changed during the run?)")
        bits = np.unpackbits(np.frombuffer(zlib.decompress(self.bits), np.uint8), count=self.n_rows)
        return bits[offset:offset + len(ids)].astype(bool)


@dataclass(frozen=True)
class SlideIds:
    """The slide's spot ids, compressed; rows are looked up per batch in a hash index built once."""

    packed: bytes
    covered: bool = False  # the driver checks coverage from the ids the units return
    _index: list[pd.Index] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, spot_ids: np.ndarray) -> SlideIds:
        """The compressed ids of ``spot_ids``."""
        return cls(zlib.compress(pickle.dumps([str(s) for s in spot_ids], protocol=pickle.HIGHEST_PROTOCOL), 6))

    def __getstate__(self) -> dict:
        return {"packed": self.packed, "covered": self.covered}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "packed", state["packed"])
        object.__setattr__(self, "covered", state["covered"])
        object.__setattr__(self, "_index", [])

    def index(self) -> pd.Index:
        """The hash index of the slide's ids (built on first use)."""
        if not self._index:
            self._index.append(pd.Index(pickle.loads(zlib.decompress(self.packed)), dtype=object))
        return self._index[0]

    def keep(self, ids: np.ndarray, offset: int) -> np.ndarray:
        """Which of ``ids`` are the slide's spots (``offset`` is not needed)."""
        return np.asarray(self.index().get_indexer(ids.astype(str)) >= 0)


RowFilter = Union[RowMask, SlideIds]


class SpotsWithoutRows(SlideError):
    """``spots_without_expression`` found at planning, with the chunks' masks and the spots that have no row.

    The masks are valid for the other spots too, so a planner that drops ``missing`` can use them.
    """

    def __init__(self, detail: str, masks: list[RowFilter], missing: list[str]) -> None:
        super().__init__("spots_without_expression", detail)
        self.masks, self.missing = masks, missing


def _slide_index(spot_ids: np.ndarray) -> pd.Index:
    index = pd.Index(spot_ids.astype(str), dtype=object)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise SlideError("duplicate_spot_ids", f"spot id(s) listed twice in the coordinates: {_preview(dup)}")
    return index


def row_masks(chunk_ids: Iterator[np.ndarray], spot_ids: np.ndarray, uri: str) -> list[RowFilter]:
    """One ``RowMask`` per chunk (its row ids given in order); checks every spot has exactly one row.

    ``duplicate_spot_ids`` when a spot has two rows, ``spots_without_expression`` when one has none.
    """
    index = _slide_index(spot_ids)
    seen = np.zeros(len(index), dtype=bool)
    masks: list[RowFilter] = []
    for ids in chunk_ids:
        position = index.get_indexer(ids.astype(str))
        hit = position[position >= 0]
        unique, counts = np.unique(hit, return_counts=True)
        twice = np.concatenate([hit[seen[hit]], unique[counts > 1]])
        if len(twice):
            raise SlideError("duplicate_spot_ids", f"spot id(s) with more than one row in {uri}: "
                                                   f"{_preview(index[np.unique(twice)])}")
        seen[hit] = True
        masks.append(RowMask.of(position >= 0))
    if not seen.all():
        missing = index[~seen]
        raise SpotsWithoutRows(f"{len(missing)} of {len(index)} spots have no row in {uri}: {_preview(missing)}",
                               masks, [str(spot) for spot in missing])
    return masks


def row_filters(src: ExpressionSource, plan: ExprPlan, spot_ids: np.ndarray,
                row_ids: Optional[RowIds]) -> list[RowFilter]:
    """The lookup of each chunk of ``plan``: masks where the format lists row ids, else the compressed ids."""
    if row_ids is None:
        shared = SlideIds.of(spot_ids)
        return [shared] * len(plan.chunks)
    return row_masks((row_ids(src, plan, chunk) for chunk in plan.chunks), spot_ids, src.uri)
