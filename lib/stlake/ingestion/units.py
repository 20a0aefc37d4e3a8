"""Stage 2, one Spark task per unit: cut tiles or convert expression, write Parquet into the lake.

A unit returns only small metadata (the files it wrote, what it saw); rows go straight to storage.
A unit that fails deletes every file it had already written, so a failure leaves no orphan behind.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stlake.ingestion import images, matrices, resolution, tiling
from stlake.ingestion.plan import ExprUnit, TileUnit, Unit, internal_error_detail
from stlake.ingestion.records import Rejection, SlideError
from stlake.lake import genes, schemas, tables

UnitKind = Literal["tiles", "expression"]


@dataclass
class UnitResult:
    """What one unit did. An ``error`` rejects the whole slide."""

    slide_id: str
    kind: UnitKind
    files: list[tables.DataFile] = field(default_factory=list)
    rows: int = 0
    error: Optional[Rejection] = None
    dropped_spots: list[str] = field(default_factory=list)  # tiles: border spots dropped
    padded_spots: int = 0
    uniform_tiles: int = 0  # tiles: tiles whose image pixels are (near) one colour (``tiling.UNIFORM_STD``)
    peak_decoded_bytes: int = 0
    peak_tile_bytes: int = 0  # tiles: most bytes held in tile buffers and encoded tiles at once
    spot_ids: Optional[np.ndarray] = None  # expression: spots that got a row (None: the planner checked them)
    unknown_rows: int = 0  # expression: rows whose spot is not among the slide's spots
    detected_gene_ids: Optional[np.ndarray] = None
    total_counts: int = 0
    seconds: float = 0.0  # wall time of the unit inside its task


def _tag(unit: Unit, run_id: str) -> str:
    return f"{run_id}-{unit.slide_id}-{type(unit).__name__[0].lower()}{unit.index:04d}"


def spot_rows(unit: TileUnit, tiles: list[tiling.Tile], run_id: str) -> pa.Table:
    """The ``spots`` rows of a unit's tiles."""
    index = np.array([tile.index for tile in tiles], dtype=np.int64)
    spots = unit.spots.take(index) if len(index) else unit.spots.take(np.zeros(0, dtype=np.int64))
    n = len(tiles)
    return pa.table({
        "slide_id": [unit.slide_id] * n,
        "spot_id": spots.spot_id.astype(str),
        "technology": [unit.technology] * n,
        "x": spots.x.astype(np.float64), "y": spots.y.astype(np.float64),
        "in_tissue": spots.in_tissue.astype(bool),
        "array_row": spots.array_row.astype(np.int32), "array_col": spots.array_col.astype(np.int32),
        "label": pa.array(list(spots.label), type=pa.string()),
        "tile": pa.array([tile.data for tile in tiles], type=pa.binary()),
        "tile_format": [unit.spec.encoding] * n,
        "tile_width": pa.array([tile.width for tile in tiles], pa.int32()),
        "tile_height": pa.array([tile.height for tile in tiles], pa.int32()),
        "tile_x0": pa.array([tile.x0 for tile in tiles], pa.int32()),
        "tile_y0": pa.array([tile.y0 for tile in tiles], pa.int32()),
        "tile_size_px": pa.array([unit.spec.size_px] * n, pa.int32()),
        "padded": pa.array([tile.padded for tile in tiles], pa.bool_()),
        "tissue_fraction": pa.array([tile.tissue_fraction for tile in tiles], pa.float32()),
        "run_id": [run_id] * n,
    }, schema=schemas.SPOTS)


def annotation_rows(unit: TileUnit, run_id: str) -> pa.Table:
    """``annotations`` rows for the unit's labelled spots: one per spot and set that labels it."""
    columns = unit.spots.label_columns()
    parts = []
    for j, label_set in enumerate(unit.label_sets or ()):
        rows = np.flatnonzero(np.array([v is not None for v in columns[:, j]], dtype=bool))
        raw = columns[rows, j].tolist()
        n = len(rows)
        parts.append(pa.table({
            "slide_id": [unit.slide_id] * n, "spot_id": unit.spots.spot_id[rows].astype(str),
            "set": [label_set.name] * n, "raw_label": pa.array(raw, pa.string()),
            "label": pa.array([label_set.vocabulary.get(v) for v in raw], pa.string()),
            "source_uri": [label_set.source_uri] * n, "run_id": [run_id] * n}, schema=schemas.ANNOTATIONS))
    return pa.concat_tables(parts) if parts else schemas.ANNOTATIONS.empty_table()


def run_tile_unit(unit: TileUnit, lake: str, run_id: str,
                  written: Optional[WrittenFiles] = None) -> UnitResult:
    """Decode the unit's image region(s), cut and encode one tile per spot, write ``spots`` rows.

    The regions are read at the unit's pyramid level (spot centres mapped from level-0 pixels).

    Within the unit's budget: the image reader gets ``tiling.decode_budget``, and encoded tiles are
    written in batches of at most ``tiling.batch_bytes`` (one ``spots`` file each), so neither the tile
    buffers nor the encoded output grow with the number of spots. Tiles are cut on ``unit.threads``
    threads, fewer where their buffers would not fit the budget (``tiling.fitting_threads``).
    """
    written = WrittenFiles() if written is None else written
    tag, memory = _tag(unit, run_id), tiling.TileMemory()
    result = UnitResult(unit.slide_id, "tiles")
    x, y = resolution.to_level(unit.spots.x, unit.downsample[0]), resolution.to_level(unit.spots.y, unit.downsample[1])
    with images.open_region_reader(unit.image_uri, tiling.decode_budget(unit.budget), unit.level) as reader:
        threads = tiling.fitting_threads(unit.spec, unit.budget, unit.threads)
        batches, dropped = tiling.tile_batches(reader, x, y, unit.spec, unit.budget,
                                               tiling.batch_bytes(unit.spec, unit.budget, threads), memory, threads)
        with contextlib.closing(batches):  # even on an error, its threads end before the reader closes
            for number, tiles in enumerate(batches):
                memory.writing()
                result.files += written.write(lake, "spots", spot_rows(unit, tiles, run_id),
                                              tag if number == 0 else f"{tag}-b{number:04d}")
                result.rows += len(tiles)
                result.padded_spots += sum(tile.padded for tile in tiles)
                result.uniform_tiles += sum(tile.uniform for tile in tiles)
                del tiles  # written: not held while the next batch is cut
        result.peak_decoded_bytes = reader.peak_decoded_bytes
    result.files += written.write(lake, "annotations", annotation_rows(unit, run_id), tag)
    result.dropped_spots = [str(s) for s in unit.spots.spot_id[np.asarray(dropped, dtype=np.int64)]]
    result.peak_tile_bytes = memory.peak
    return result


def expression_rows(unit: ExprUnit, batch: matrices.SparseBatch, keep: np.ndarray, columns: genes.GlobalColumns,
                    run_id: str) -> pa.Table:
    """``expression`` rows of the ``keep`` rows of one batch (the slide's spots)."""
    gene_lists, count_lists = genes.to_global(batch, columns)
    totals, n_genes = genes.list_totals(count_lists)
    n = len(batch)
    rows = pa.table({
        "slide_id": [unit.slide_id] * n, "spot_id": batch.spot_ids.astype(str),
        "technology": [unit.technology] * n, "gene_ids": gene_lists, "counts": count_lists,
        "total_counts": totals, "n_genes": n_genes, "run_id": [run_id] * n,
    }, schema=schemas.EXPRESSION)
    return rows.filter(pa.array(keep))


def detected_genes(rows: pa.Table) -> np.ndarray:
    """Distinct global gene ids with a count in ``expression`` rows."""
    return np.unique(pc.list_flatten(rows.column("gene_ids")).to_numpy()).astype(np.int64)


def run_expression_unit(unit: ExprUnit, lake: str, run_id: str,
                        written: Optional[WrittenFiles] = None) -> UnitResult:
    """Read one chunk of the matrix as sparse rows against global gene ids; write ``expression`` rows.

    Rows of spots that are not the slide's are dropped and count only as ``unknown_rows``; the chunk's
    own lookup (``unit.rows``) says which. The spot ids written go back to the driver only when the
    planner could not check them (text matrices).
    """
    written = WrittenFiles() if written is None else written
    columns = genes.GlobalColumns.of(unit.gene_ids)
    parts, spot_ids, unknown, offset = [], [], 0, 0
    for batch in matrices.read_chunk(unit.source, unit.plan, unit.chunk):
        keep = unit.rows.keep(batch.spot_ids, offset)
        offset += len(batch)
        parts.append(expression_rows(unit, batch, keep, columns, run_id))
        if not unit.rows.covered:
            spot_ids.append(batch.spot_ids[keep].astype(str))
        unknown += int((~keep).sum())
    table = pa.concat_tables(parts) if parts else schemas.EXPRESSION.empty_table()
    files = written.write(lake, "expression", table, _tag(unit, run_id))
    kept = np.concatenate(spot_ids) if spot_ids else np.zeros(0, dtype=object)
    return UnitResult(unit.slide_id, "expression", files, rows=table.num_rows,
                      spot_ids=None if unit.rows.covered else kept,
                      unknown_rows=unknown, detected_gene_ids=detected_genes(table),
                      total_counts=int(np.asarray(table.column("total_counts")).sum()) if table.num_rows else 0)


class WrittenFiles(list):
    """The data files a unit has written so far (a list of ``DataFile``): what to delete if it fails."""

    def write(self, lake: str, table_name: str, rows: pa.Table, tag: str) -> list[tables.DataFile]:
        """Write ``rows`` as data files of ``table_name`` and remember them."""
        files = tables.write_data_files(lake, table_name, rows, tag)
        self.extend(files)
        return files


def unit_kind(unit: Unit) -> UnitKind:
    """``tiles`` or ``expression``."""
    return "tiles" if isinstance(unit, TileUnit) else "expression"


def run_unit(unit: Unit, lake: str, run_id: str) -> UnitResult:
    """Run one unit; bad input or a failure becomes ``error`` (never raises) and deletes what it wrote."""
    kind, written = unit_kind(unit), WrittenFiles()
    started = time.perf_counter()
    try:
        if isinstance(unit, TileUnit):
            result = run_tile_unit(unit, lake, run_id, written)
        else:
            result = run_expression_unit(unit, lake, run_id, written)
    except Exception as error:
        tables.discard(lake, written)
        rejection = error.rejection(kind) if isinstance(error, SlideError) else \
            Rejection(kind, "internal_error", internal_error_detail(error))
        result = UnitResult(unit.slide_id, kind, error=rejection)
    result.seconds = time.perf_counter() - started
    return result
