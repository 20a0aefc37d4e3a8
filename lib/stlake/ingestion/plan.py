"""Stage 1, one Spark task per slide: read a slide's small inputs and split its work into units.

A unit is either a region of the image to tile (``TileUnit``) or a part of the expression matrix
(``ExprUnit``). Nothing big is read here: coordinates, image headers, matrix headers.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree

from stlake.ingestion import images, matrices, resolution, tiling
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers import ReaderOptions, read_slide
from stlake.ingestion.records import (
    ExpressionSource,
    LabelSet,
    Rejection,
    Remark,
    SlideError,
    SlideRecord,
    SlideRef,
    Spots,
)
from stlake.lake import genes

#: A spot diameter below this many pixels of the tiled image cannot be a spot (tiles of 1 px).
MIN_SPOT_DIAMETER_PX = 1.0
#: A spot diameter above this share of the image's shorter side cannot be a spot of a capture area.
MAX_DIAMETER_SHARE = 0.25
#: Plausible spot diameter / median nearest-neighbour spacing (Visium 0.55, ST 0.5, VisiumHD bins 1).
DIAMETER_PITCH_RANGE = (0.1, 3.0)
#: Spots whose spacing is measured on a large slide (a central run of columns holding this many).
PITCH_SPOTS = 100_000


log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TileUnit:
    """Cut the tiles of ``spots`` (a region of one slide's image)."""

    slide_id: str
    technology: str
    image_uri: str
    spots: Spots
    spec: tiling.TileSpec
    budget: int
    label_sets: tuple[LabelSet, ...]  # the columns of ``spots.annotations``
    index: int
    level: int = 0  # pyramid level read; ``spots`` stay in level-0 pixels
    downsample: tuple[float, float] = (1.0, 1.0)  # level-0 pixels per level pixel (x, y)
    threads: int = 1  # threads cutting and encoding the tiles (an image decoded whole: ``--tile-threads``)


@dataclass(frozen=True)
class ExprUnit:
    """Turn one chunk of a slide's expression matrix into sparse rows."""

    slide_id: str
    technology: str
    source: ExpressionSource
    plan: matrices.ExprPlan  # genes and chunks (``ExprPlan.for_tasks``)
    chunk: matrices.ExprChunk
    gene_ids: np.ndarray  # global gene id per source column, -1 = dropped
    rows: matrices.RowFilter  # which of the chunk's rows are the slide's spots (others are not kept)
    index: int
    species: str = genes.UNKNOWN_SPECIES  # the slide's (normalised): a gene id hashes (species, key)
    gene_keys: Optional[bytes] = None  # ``gene_ids`` as keys (:func:`stlake.lake.genes.pack_gene_ids`)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled without ``gene_ids`` when ``gene_keys`` holds them (~1 byte a column instead of 8).

        An unpickled unit hashes its ids back on first use of ``gene_ids`` (the task; the driver only
        when it re-keys the slide's genes).
        """
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "gene_ids" or self.gene_keys is None}
        return (_rebuilt_expr_unit, (state,))

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            if name != "gene_ids" or "gene_keys" not in self.__dict__:
                raise AttributeError(name)
            ids = genes.unpack_gene_ids(self.species, self.plan.genes, self.gene_keys)
            object.__setattr__(self, "gene_ids", ids)
            return ids


def _rebuilt_expr_unit(state: dict[str, Any]) -> ExprUnit:
    """An unpickled ``ExprUnit``; ``gene_ids`` left to ``__getattr__`` when they travelled as keys."""
    unit = object.__new__(ExprUnit)
    for name, value in state.items():
        object.__setattr__(unit, name, value)
    return unit


Unit = Union[TileUnit, ExprUnit]


@dataclass
class SlidePlan:
    """A slide ready for stage 2, or the reason it cannot be ingested."""

    ref: SlideRef
    record: Optional[SlideRecord] = None
    image: Optional[images.ImageInfo] = None
    tile_size_px: int = 0
    resolution: Optional[resolution.Resolution] = None
    gene_rows: Optional[pa.Table] = None
    units: list[Unit] = field(default_factory=list)
    warnings: list[Remark] = field(default_factory=list)
    error: Optional[Rejection] = None

    def ready(self) -> tuple[SlideRecord, images.ImageInfo]:
        """The record and image of a slide that was planned; raises ``ValueError`` when planning failed."""
        if self.record is None or self.image is None:
            reason = self.error.reason if self.error is not None else "not planned"
            raise ValueError(f"slide {self.ref.slide_id} has no plan ({reason})")
        return self.record, self.image


def check_coords_inside(spots: Spots, image: images.ImageInfo) -> None:
    """Every spot centre must lie inside the image."""
    outside = (spots.x < 0) | (spots.y < 0) | (spots.x >= image.width) | (spots.y >= image.height)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise SlideError("coords_outside_image",
                         f"{int(outside.sum())} of {len(spots)} spot centres lie outside the "
                         f"{image.width}x{image.height} image, e.g. spot {spots.spot_id[first]} at "
                         f"(x={spots.x[first]:.1f}, y={spots.y[first]:.1f})")


def spot_pitch(spots: Spots) -> Optional[float]:
    """Median distance from a spot to its nearest neighbour in pixels; None with fewer than two spots.

    A large slide is measured on the ``PITCH_SPOTS`` spots of a central band of columns.
    """
    if len(spots) < 2:
        return None
    points = np.column_stack([spots.x, spots.y])
    if len(points) > PITCH_SPOTS:
        order = np.argsort(spots.x, kind="stable")
        start = (len(order) - PITCH_SPOTS) // 2
        points = points[order[start:start + PITCH_SPOTS]]
    distance, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distance[:, 1]))


def check_geometry(record: SlideRecord, image: images.ImageInfo) -> None:
    """Raise ``implausible_geometry`` unless the spot diameter fits the image and the spots' spacing."""
    diameter, size = record.spot_diameter_px, f"{image.width}x{image.height} image {record.image_uri}"
    if not (math.isfinite(diameter) and diameter >= MIN_SPOT_DIAMETER_PX):
        raise SlideError("implausible_geometry", f"the spot diameter is {diameter:.3g} px of the {size}, below "
                                                 f"{MIN_SPOT_DIAMETER_PX:g} px")
    if diameter > MAX_DIAMETER_SHARE * min(image.width, image.height):
        raise SlideError("implausible_geometry", f"the spot diameter of {diameter:.0f} px is more than "
                                                 f"{MAX_DIAMETER_SHARE:g} of the shorter side of the {size}")
    pitch = spot_pitch(record.spots)
    if pitch is None:
        return
    if pitch == 0:
        raise SlideError("implausible_geometry", f"most of the {len(record.spots)} spots lie exactly on another "
                                                 f"spot (median distance to the nearest spot: 0 px in the {size})")
    low, high = DIAMETER_PITCH_RANGE
    if not low <= diameter / pitch <= high:
        raise SlideError("implausible_geometry", f"the spot diameter ({diameter:.3g} px) is {diameter / pitch:.3g} "
                                                 f"times the median spot spacing ({pitch:.3g} px) in the {size}; "
                                                 f"expected {low:g} to {high:g} times")


def tile_spec(res: resolution.Resolution, options: IngestOptions) -> tiling.TileSpec:
    """How a slide's tiles are cut (``res.size_px`` pixels of the level read) and encoded."""
    return tiling.TileSpec(size_px=res.size_px, resize_px=res.resize_px, border=options.border,
                           encoding=options.encoding, quality=options.quality)


def level_info(image: images.ImageInfo, res: resolution.Resolution) -> images.ImageInfo:
    """The header of the pyramid level read (level 0: ``image`` itself)."""
    if res.level == 0:
        return image
    return dataclasses.replace(image, width=res.level_size[0], height=res.level_size[1])


def tile_units(record: SlideRecord, image: images.ImageInfo, res: resolution.Resolution,
               options: IngestOptions) -> list[TileUnit]:
    """One unit per region of the level read; random-access images split into bands, sequential codecs stay whole.

    A sequential codec's one unit cuts its tiles on ``options.tile_threads`` threads (a random-access
    image's units run in parallel as tasks instead).
    """
    spec = tile_spec(res, options)
    if image.random_access:
        x, y = (resolution.to_level(v, f) for v, f in ((record.spots.x, res.downsample[0]),
                                                      (record.spots.y, res.downsample[1])))
        groups = tiling.split_spots_into_regions(y, spec.size_px, image.width, image.height,
                                                 options.memory_budget, options.max_spots_per_task, x=x)
    else:
        groups = [np.arange(len(record.spots))]
    return [TileUnit(record.ref.slide_id, record.ref.technology, record.image_uri, record.spots.take(group),
                     spec, options.memory_budget, tuple(record.label_sets), index, res.level,
                     res.downsample, 1 if image.random_access else options.tile_threads)
            for index, group in enumerate(groups) if len(group)]


# A tile task below this many spots costs more in start-up than it saves by running in parallel.
MIN_SPOTS_PER_TILE_TASK = 500


def split_tile_unit(unit: TileUnit, image: images.ImageInfo) -> list[TileUnit]:
    """Two (or a few) regions of a random-access image in place of one; indices are renumbered later."""
    half = math.ceil(len(unit.spots) / 2)
    groups = tiling.split_spots_into_regions(unit.spots.y, unit.spec.size_px, image.width, image.height,
                                             unit.budget, half, x=unit.spots.x)
    return [dataclasses.replace(unit, spots=unit.spots.take(group)) for group in groups if len(group)]


@dataclass(frozen=True)
class _Splittable:
    """A tile unit big enough to split, where it is in ``plans`` and the image it cuts."""

    spots: int
    plan_index: int
    unit_index: int
    unit: TileUnit
    image: images.ImageInfo


def _splittable(plans: list[SlidePlan]) -> list[_Splittable]:
    """Every tile unit of a random-access image big enough to split."""
    return [_Splittable(len(unit.spots), p, i, unit, plan.image) for p, plan in enumerate(plans)
            if plan.error is None and plan.image is not None and plan.image.random_access
            for i, unit in enumerate(plan.units)
            if isinstance(unit, TileUnit) and len(unit.spots) >= 2 * MIN_SPOTS_PER_TILE_TASK]


def _renumber_tiles(plan: SlidePlan) -> None:
    """Tile units numbered 0, 1, ... in order; expression units keep their index."""
    tiles = itertools.count()
    plan.units = [dataclasses.replace(u, index=next(tiles)) if isinstance(u, TileUnit) else u for u in plan.units]


def fill_cores(plans: list[SlidePlan], cores: int) -> None:
    """Split the largest random-access tile units until there are ``cores`` tile units (or none is big enough).

    Tiling is the heavy part, so a run of few large slides still keeps every core busy. Changes ``plans`` in place.
    """
    count = sum(isinstance(unit, TileUnit) for plan in plans if plan.error is None for unit in plan.units)
    changed: set[int] = set()
    while count < cores:
        candidates = _splittable(plans)
        if not candidates:
            break
        largest = max(candidates, key=lambda c: c.spots)
        pieces = split_tile_unit(largest.unit, largest.image)
        if len(pieces) < 2:
            break
        plans[largest.plan_index].units[largest.unit_index:largest.unit_index + 1] = pieces
        count += len(pieces) - 1
        changed.add(largest.plan_index)
    for p in changed:
        _renumber_tiles(plans[p])


#: Rough CPU nanoseconds per unit of work (bench/README.md's figures), only to start long units first.
NS_PER_DECODED_PIXEL = 20.0  # PNG inflate + unfilter; TIFF tiles are cheaper, which ordering does not need
NS_PER_TILE_PIXEL = 30.0  # cut, resize and JPEG-encode a tile's pixels
NS_PER_MATRIX_BYTE = 10.5  # dense-CSV parse; 10x / h5ad chunks are counted by the bytes or rows they cover
NS_PER_MATRIX_ROW = 2_000.0  # a 10x barcode range: one row of counts


def unit_cost(unit: Unit, image: Optional[images.ImageInfo]) -> float:
    """Estimated CPU nanoseconds of a unit: what it decodes, cuts and encodes, or the matrix it parses."""
    if isinstance(unit, ExprUnit):
        span = max(0, unit.chunk.stop - unit.chunk.start)
        return span * (NS_PER_MATRIX_ROW if unit.chunk.kind == "barcodes" else NS_PER_MATRIX_BYTE)
    tile_pixels = len(unit.spots) * float(unit.spec.size_px) ** 2
    decoded = tile_pixels if image is None or image.random_access else float(image.width) * image.height
    return decoded * NS_PER_DECODED_PIXEL + tile_pixels * NS_PER_TILE_PIXEL


def longest_first(plans: list[SlidePlan]) -> list[Unit]:
    """The planned slides' units, the costliest first (:func:`unit_cost`), so the last tasks are short ones.

    Spark starts a stage's tasks in partition order; a large PNG started last would run alone at the end.
    """
    costed = [(unit_cost(unit, plan.image), number, unit) for plan in plans if plan.error is None
              for number, unit in enumerate(plan.units)]
    return [unit for _, _, unit in sorted(costed, key=lambda item: -item[0])]


def row_filters(record: SlideRecord, plan: matrices.ExprPlan, options: IngestOptions) -> list[matrices.RowFilter]:
    """The chunks' row lookups; spots the matrix has no row for are dropped from ``record`` (like scanpy).

    Where the planner sees the matrix's row ids (10x), such spots are removed here, before any tile is cut,
    with a ``spots_without_expression`` warning; the slide is rejected when no spot has a row, or with
    ``require_expression``.
    """
    try:
        return matrices.plan_rows(record.expression, plan, record.spots.spot_id)
    except matrices.SpotsWithoutRows as error:
        if options.require_expression or len(error.missing) == len(record.spots):
            raise
        record.spots = record.spots.take(~np.isin(record.spots.spot_id.astype(str), error.missing))
        record.warnings.append(("spots_without_expression", f"{error.detail}; dropped"))
        record.unexpressed = error.missing
        return error.masks


def expression_units(record: SlideRecord, options: IngestOptions) -> tuple[list[ExprUnit], genes.GeneMap]:
    """One unit per chunk of the matrix, with the slide's columns mapped onto global gene ids."""
    plan = matrices.plan_expression(record.expression, options.expr_chunk_bytes)
    gene_map = genes.harmonise(plan.genes, plan.ensembl_ids, plan.symbols, record.ref.species)
    rows = row_filters(record, plan, options)
    shipped = plan.for_tasks()  # one object shared by the units: pickled once per slide plan
    species = genes.normalise_species(record.ref.species)
    keys = genes.pack_gene_ids(gene_map.gene_ids, species, plan.genes, gene_map.rows)
    units = [ExprUnit(record.ref.slide_id, record.ref.technology, record.expression, shipped, chunk,
                      gene_map.gene_ids, chunk_rows, index, species, keys)
             for index, (chunk, chunk_rows) in enumerate(zip(plan.chunks, rows))]
    return units, gene_map


def rekeyed_unit(unit: ExprUnit, rekeyed: genes.Rekeyed,
                 done: dict[str, tuple[np.ndarray, Optional[bytes]]]) -> ExprUnit:
    """``unit`` with its gene ids re-keyed; ``done`` keeps the slide's new ids for its other units."""
    if unit.slide_id not in done:
        ids = genes.remap_ids(unit.gene_ids, rekeyed.new_ids)
        done[unit.slide_id] = ids, genes.pack_gene_ids(ids, unit.species, unit.plan.genes, rekeyed.rows)
    ids, keys = done[unit.slide_id]
    return dataclasses.replace(unit, gene_ids=ids, gene_keys=keys)


def key_genes_by_symbol(plans: list[SlidePlan], known: Optional[pa.Table]) -> None:
    """Key the planned slides' Ensembl-only genes by symbol where the lake or the run pairs them with one.

    Pairs come from ``known`` (the lake's genes) and the run's slides (:func:`stlake.lake.genes.symbol_pairs`);
    genes left keyed by id are remarks in the slide's warnings (:func:`stlake.lake.genes.rekey_by_symbol`).
    """
    planned = [plan for plan in plans if plan.error is None and plan.gene_rows is not None]
    pairs = genes.symbol_pairs([known, *(plan.gene_rows for plan in planned)])
    for plan in planned:
        assert plan.gene_rows is not None
        rekeyed = genes.rekey_by_symbol(plan.gene_rows, pairs)
        plan.gene_rows = rekeyed.rows
        plan.warnings += rekeyed.remarks
        done: dict[str, tuple[np.ndarray, Optional[bytes]]] = {}
        plan.units = [rekeyed_unit(unit, rekeyed, done) if isinstance(unit, ExprUnit) and rekeyed.new_ids
                      else unit for unit in plan.units]


def internal_error_detail(error: Exception) -> str:
    """An unexpected exception as a ``rejects`` detail: its type and where it was raised (the last frames).

    The message is kept only for ``OSError`` (it names a path or a system condition); other messages can
    quote input (``could not convert string to float: '...'``), and ``rejects`` never holds content. The
    whole exception goes to the task's log.
    """
    log.warning("unexpected error", exc_info=error)
    frames = traceback.extract_tb(error.__traceback__)[-3:]
    where = "; ".join(f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}" for frame in frames)
    message = f": {error}" if isinstance(error, OSError) else ""
    return f"{type(error).__name__}{message} (at {where or 'unknown'})"


def plan_slide(ref: SlideRef, options: IngestOptions) -> SlidePlan:
    """Read one slide's coordinates and headers and cut its work into units; never raises."""
    result = SlidePlan(ref=ref)
    try:
        record = read_slide(ref, ReaderOptions(in_tissue_only=options.in_tissue_only,
                                               bin_size_um=options.bin_size_um, label_set=options.label_set,
                                               label_map=options.label_map,
                                               strict_labels=options.label_map_mode == "strict"))
        if len(record.spots) == 0:
            raise SlideError("no_spots", "the slide has no (in-tissue) spots")
        image = images.probe_image(record.image_uri)
        check_coords_inside(record.spots, image)
        check_geometry(record, image)
        res, remarks = resolution.resolve(record, images.probe_pyramid(record.image_uri), options)
        record = dataclasses.replace(record, microns_per_pixel=res.source_mpp)
        level = level_info(image, res)
        tiling.check_tile_fits(tile_spec(res, options), level, options.memory_budget)
        expr_units, gene_map = expression_units(record, options)
        result.ref, result.record, result.image, result.tile_size_px = record.ref, record, image, res.size_px
        result.resolution, result.gene_rows = res, gene_map.rows
        result.units = [*tile_units(record, level, res, options), *expr_units]
        result.warnings = [*record.warnings, *remarks, *gene_map.collisions]
    except SlideError as error:
        result.error = error.rejection("read")
    except Exception as error:  # a bug or an unexpected file must not sink the other slides
        result.error = Rejection("read", "internal_error", internal_error_detail(error))
    return result
