"""Small synthetic lakes with known content (tests, benchmarks, docs): real Delta tables, real JPEG tiles.

Spot ``j`` of slide number ``i``: its tile is a flat colour that encodes the spot
(:func:`spot_color`), its counts follow :func:`spot_counts`; both are pure functions, so a test can
recompute what the reader must return for any row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
import pyarrow as pa

from stlake import genes as genes_mod
from stlake import schemas, tables

LABELS = ("tumor", "stroma", None)


@dataclass(frozen=True)
class FakeSlide:
    slide_id: str
    index: int  # drives colours and counts
    technology: str = "Visium"
    species: str = "human"
    tissue: str = "brain"
    n_spots: int = 12
    variant: int = 0  # a re-ingested slide gets another variant: other counts, other spot count


def gene_symbols(n_genes: int) -> list[str]:
    return [f"GENE{g:03d}" for g in range(n_genes)]


def gene_ids(species: str, n_genes: int) -> np.ndarray:
    """The lake's ``gene_id`` of each synthetic gene (stlake's stable hash)."""
    return np.array([genes_mod.gene_id(species, s) for s in gene_symbols(n_genes)], np.int64)


def spot_color(slide: FakeSlide, j: int) -> tuple[int, int, int]:
    """RGB of spot ``j``'s tile (distinct per spot, far from JPEG rounding)."""
    return (40 + 30 * (slide.index % 7), 20 + (7 * j) % 200, 200 - 20 * slide.variant)


def spot_counts(slide: FakeSlide, j: int, n_genes: int) -> dict[int, int]:
    """{gene index: count} of spot ``j`` (about a third of the genes non-zero)."""
    return {g: 1 + (slide.index * 7 + j + g + slide.variant) % 5 for g in range(n_genes)
            if (g + j + slide.index) % 3 == 0}


def spot_label(slide: FakeSlide, j: int) -> Optional[str]:
    return LABELS[(j + slide.index) % len(LABELS)]


def tissue_fraction(slide: FakeSlide, j: int) -> float:
    return round(((j * 37 + slide.index * 11) % 100) / 100.0, 2)


def n_spots(slide: FakeSlide) -> int:
    return slide.n_spots + slide.variant


def tile_bytes(color: tuple[int, int, int], size: int, fmt: str = "jpeg", noise: int = 0,
               rng: Optional[np.random.Generator] = None) -> bytes:
    """A ``size`` x ``size`` tile of one RGB colour (optionally with texture), JPEG q90 or PNG."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = color[::-1]  # OpenCV is BGR
    if noise and rng is not None:
        texture = rng.normal(0, noise, (size, size, 1))
        image = np.clip(image + cv2.GaussianBlur(texture, (5, 5), 0)[..., None], 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def _sparse(slide: FakeSlide, j: int, ids: np.ndarray, n_genes: int) -> tuple[list[int], list[int], int]:
    counts = spot_counts(slide, j, n_genes)
    pairs = sorted((int(ids[g]), c) for g, c in counts.items())
    return [p[0] for p in pairs], [p[1] for p in pairs], sum(counts.values())


def pairs_rows(slide: FakeSlide, n_genes: int = 30, tile_px: int = 16) -> pa.Table:
    """The ``pairs`` rows of one slide."""
    ids = gene_ids(slide.species, n_genes)
    rows = {name: [] for name in schemas.PAIRS.names}
    for j in range(n_spots(slide)):
        g, c, total = _sparse(slide, j, ids, n_genes)
        values = dict(slide_id=slide.slide_id, spot_id=f"{slide.slide_id}-s{j:04d}", technology=slide.technology,
                      species=slide.species, tissue=slide.tissue, label=spot_label(slide, j),
                      tissue_fraction=tissue_fraction(slide, j), tile=tile_bytes(spot_color(slide, j), tile_px),
                      tile_format="jpeg", gene_ids=g, counts=c, total_counts=total)
        for name in rows:
            rows[name].append(values[name])
    return pa.table(rows, schema=schemas.PAIRS)


def write_pairs(lake: str, slides: Iterable[FakeSlide], n_genes: int = 30, tile_px: int = 16,
                run_id: str = "test") -> int:
    """Commit (or replace) the ``pairs`` rows of ``slides``: one file per slide; returns the version."""
    slides = list(slides)
    files = [f for s in slides for f in tables.write_data_files(lake, "pairs", pairs_rows(s, n_genes, tile_px),
                                                                  f"{run_id}-{s.slide_id}")]
    return tables.commit(lake, "pairs", files, replace_slides={s.slide_id for s in slides}, run_id=run_id)


def write_genes(lake: str, species: Sequence[str], n_genes: int = 30) -> int:
    rows = {"gene_id": [], "species": [], "gene_key": [], "symbol": [], "ensembl_id": []}
    for sp in sorted(set(species)):
        for g, (gid, symbol) in enumerate(zip(gene_ids(sp, n_genes), gene_symbols(n_genes))):
            rows["gene_id"].append(int(gid))
            rows["species"].append(sp)
            rows["gene_key"].append(symbol)
            rows["symbol"].append(symbol)
            rows["ensembl_id"].append(f"ENSG{g:011d}")
    table = pa.table(rows, schema=schemas.GENES)

    def merge(current: Optional[pa.Table]) -> pa.Table:
        if current is None:
            return table
        new = set(rows["gene_id"])
        kept = current.filter(pa.array([g not in new for g in current.column("gene_id").to_pylist()], pa.bool_()))
        return pa.concat_tables([kept.cast(schemas.GENES), table]).sort_by("gene_id")

    return tables.overwrite_small_table(lake, "genes", merge, run_id="genes")


def source_tables(slide: FakeSlide, n_genes: int = 30, tile_px: int = 16, run_id: str = "test",
                  extra_counts: Optional[dict[int, list[int]]] = None) -> dict[str, pa.Table]:
    """``spots``, ``expression`` and ``slides`` rows of one slide (as ingest would write them).

    ``extra_counts`` {gene index: counts per spot} overrides genes (e.g. a planted variable gene).
    """
    ids = gene_ids(slide.species, n_genes)
    spots, expression = {n: [] for n in schemas.SPOTS.names}, {n: [] for n in schemas.EXPRESSION.names}
    for j in range(n_spots(slide)):
        counts = spot_counts(slide, j, n_genes)
        for g, values in (extra_counts or {}).items():
            counts[g] = values[j]
        counts = {g: c for g, c in counts.items() if c}
        ordered = sorted((int(ids[g]), c) for g, c in counts.items())
        spot_id = f"{slide.slide_id}-s{j:04d}"
        tile = tile_bytes(spot_color(slide, j), tile_px)
        for name, value in dict(slide_id=slide.slide_id, spot_id=spot_id, technology=slide.technology, x=float(j),
                                y=float(j), in_tissue=True, array_row=j, array_col=0, label=spot_label(slide, j),
                                tile=tile, tile_format="jpeg", tile_width=tile_px, tile_height=tile_px, tile_x0=0,
                                tile_y0=0, tile_size_px=tile_px, padded=False,
                                tissue_fraction=tissue_fraction(slide, j), run_id=run_id).items():
            spots[name].append(value)
        for name, value in dict(slide_id=slide.slide_id, spot_id=spot_id, technology=slide.technology,
                                gene_ids=[p[0] for p in ordered], counts=[p[1] for p in ordered],
                                total_counts=sum(counts.values()), n_genes=len(ordered), run_id=run_id).items():
            expression[name].append(value)
    slide_row = {n: [None] for n in schemas.SLIDES.names}
    slide_row.update(slide_id=[slide.slide_id], technology=[slide.technology], layout=["stimage"],
                     species=[slide.species], tissue=[slide.tissue], n_spots=[n_spots(slide)], run_id=[run_id])
    return {"spots": pa.table(spots, schema=schemas.SPOTS), "expression": pa.table(expression, schema=schemas.EXPRESSION),
            "slides": pa.table(slide_row, schema=schemas.SLIDES)}


def write_sources(lake: str, slides: Iterable[FakeSlide], n_genes: int = 30, tile_px: int = 16,
                  run_id: str = "test", extra_counts: Optional[dict[str, dict[int, list[int]]]] = None) -> None:
    """Commit ``genes``, ``expression``, ``spots``, ``slides`` for ``slides`` (replacing their rows)."""
    slides = list(slides)
    write_genes(lake, [s.species for s in slides], n_genes)
    parts = {s.slide_id: source_tables(s, n_genes, tile_px, run_id, (extra_counts or {}).get(s.slide_id))
             for s in slides}
    for table in ("expression", "spots", "slides"):
        files = [f for sid, p in parts.items() for f in tables.write_data_files(lake, table, p[table], f"{run_id}-{sid}")]
        tables.commit(lake, table, files, replace_slides=set(parts), run_id=run_id)
