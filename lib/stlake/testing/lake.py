"""Small synthetic lakes with known content (tests, benchmarks, docs): real Delta tables, real JPEG tiles.

Spot ``j`` of slide number ``i``: its tile is a flat colour that encodes the spot
(:func:`spot_color`), its counts follow :func:`spot_counts`; both are pure functions, so a test can
recompute what the reader must return for any row. Rows are built the way production builds them:
genes harmonised by :mod:`stlake.lake.genes` (like 10x features: symbol + Ensembl id) and merged with
``merge_gene_rows``, species normalised, and ``pairs`` rows joined from the source tables.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np
import pyarrow as pa

from stlake.derived import pairs
from stlake.lake import genes as genes_mod
from stlake.lake import schemas, tables

LABELS = ("tumor", "stroma", None)


@dataclass(frozen=True)
class FakeSlide:
    """A synthetic slide: its number drives every colour and count of its spots."""

    slide_id: str
    index: int  # drives colours and counts
    technology: str = "Visium"
    species: str = "human"
    tissue: str = "brain"
    base_spots: int = 12  # spots of variant 0
    variant: int = 0  # a re-ingested slide gets another variant: other counts, ``variant`` more spots

    @property
    def n_spots(self) -> int:
        """Spots of this variant of the slide."""
        return self.base_spots + self.variant


def gene_symbols(n_genes: int) -> list[str]:
    """Symbols of the synthetic genes: ``GENE000``, ``GENE001``, ..."""
    return [f"GENE{g:03d}" for g in range(n_genes)]


def gene_ensembl_ids(n_genes: int) -> list[str]:
    """Ensembl ids of the synthetic genes: ``ENSG00000000000``, ..."""
    return [f"ENSG{g:011d}" for g in range(n_genes)]


def harmonised_genes(species: str, n_genes: int) -> genes_mod.GeneMap:
    """The synthetic genes of one species as ingest harmonises 10x features (symbol + Ensembl id)."""
    symbols = gene_symbols(n_genes)
    return genes_mod.harmonise(symbols, gene_ensembl_ids(n_genes), symbols, species)


def gene_ids(species: str, n_genes: int) -> np.ndarray:
    """The lake's ``gene_id`` of each synthetic gene."""
    return harmonised_genes(species, n_genes).gene_ids


def spot_color(slide: FakeSlide, j: int) -> tuple[int, int, int]:
    """RGB of spot ``j``'s tile (distinct per spot, far from JPEG rounding)."""
    return (40 + 30 * (slide.index % 7), 20 + (7 * j) % 200, 200 - 20 * slide.variant)


def spot_counts(slide: FakeSlide, j: int, n_genes: int) -> dict[int, int]:
    """{gene index: count} of spot ``j`` (about a third of the genes non-zero)."""
    return {g: 1 + (slide.index * 7 + j + g + slide.variant) % 5 for g in range(n_genes)
            if (g + j + slide.index) % 3 == 0}


def spot_label(slide: FakeSlide, j: int) -> Optional[str]:
    """Label of spot ``j``: tumor, stroma or none, in turn."""
    return LABELS[(j + slide.index) % len(LABELS)]


def spot_sets(slide: FakeSlide, j: int) -> dict[str, Optional[str]]:
    """Spot ``j``'s label in each annotation set: ``anno`` (= ``spots.label``) and ``region`` (about 3:1, some none)."""
    return {"anno": spot_label(slide, j), "region": None if j % 5 == 4 else f"region {int(j % 4 == 3)}"}


def tissue_fraction(slide: FakeSlide, j: int) -> float:
    """Tissue fraction of spot ``j`` (two decimals, spread over [0, 1))."""
    return round(((j * 37 + slide.index * 11) % 100) / 100.0, 2)


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


def pairs_rows(slide: FakeSlide, n_genes: int = 30, tile_px: int = 16,
               extra_counts: Optional[dict[int, list[int]]] = None) -> pa.Table:
    """The ``pairs`` rows of one slide: its :func:`source_tables` joined as :mod:`stlake.derived.pairs` joins them."""
    parts = source_tables(slide, n_genes, tile_px, extra_counts=extra_counts)
    spots, expression = parts["spots"], parts["expression"]
    position = {spot: i for i, spot in enumerate(expression.column("spot_id").to_pylist())}
    expression = expression.take([position[spot] for spot in spots.column("spot_id").to_pylist()])
    columns = {name: spots.column(name) for name in pairs.SPOT_COLUMNS}
    columns.update({name: expression.column(name) for name in pairs.EXPRESSION_COLUMNS})
    slide_row = parts["slides"].select(pairs.SLIDE_COLUMNS).to_pylist()[0]
    columns.update({name: pa.array([value] * spots.num_rows, pa.string()) for name, value in slide_row.items()})
    sets = [{k: v for k, v in sorted(spot_sets(slide, j).items()) if v is not None} for j in range(slide.n_spots)]
    columns["label_sets"] = pa.array([list(s) or None for s in sets], pa.list_(pa.string()))
    columns["set_labels"] = pa.array([list(s.values()) or None for s in sets], pa.list_(pa.string()))
    return pa.table(columns).select(schemas.PAIRS.names).cast(schemas.PAIRS)


def write_pairs(lake: str, slides: Iterable[FakeSlide], n_genes: int = 30, tile_px: int = 16,
                run_id: str = "test") -> int:
    """Commit (or replace) the ``pairs`` rows of ``slides``: one file per slide; returns the version."""
    slides = list(slides)
    files = [f for s in slides for f in tables.write_data_files(lake, "pairs", pairs_rows(s, n_genes, tile_px),
                                                                  f"{run_id}-{s.slide_id}")]
    return tables.commit(lake, "pairs", files, replace_slides={s.slide_id for s in slides}, run_id=run_id)


def write_genes(lake: str, species: Sequence[str], n_genes: int = 30) -> int:
    """Merge the synthetic genes of ``species`` into ``genes`` as ingest does; returns the version."""
    rows = [harmonised_genes(sp, n_genes).rows for sp in sorted(set(species))]
    return tables.overwrite_small_table(lake, "genes", lambda current: genes_mod.merge_gene_rows(current, rows),
                                        run_id="genes")


def source_tables(slide: FakeSlide, n_genes: int = 30, tile_px: int = 16, run_id: str = "test",
                  extra_counts: Optional[dict[int, list[int]]] = None) -> dict[str, pa.Table]:
    """``spots``, ``expression`` and ``slides`` rows of one slide (as ingest would write them).

    ``extra_counts`` {gene index: counts per spot} overrides genes (e.g. a planted variable gene).
    """
    ids = gene_ids(slide.species, n_genes)
    spots = [spot_row(slide, j, tile_px, run_id) for j in range(slide.n_spots)]
    expression = [expression_row(slide, j, ids, n_genes, run_id, extra_counts) for j in range(slide.n_spots)]
    annotations = [dict(slide_id=slide.slide_id, spot_id=spot_id(slide, j), set=name, raw_label=label.upper(),
                        label=label, source_uri=f"{name}.csv", run_id=run_id)
                   for j in range(slide.n_spots) for name, label in spot_sets(slide, j).items() if label is not None]
    return {"spots": pa.Table.from_pylist(spots, schema=schemas.SPOTS),
            "expression": pa.Table.from_pylist(expression, schema=schemas.EXPRESSION),
            "slides": pa.Table.from_pylist([slide_row(slide, run_id)], schema=schemas.SLIDES),
            "annotations": pa.Table.from_pylist(annotations, schema=schemas.ANNOTATIONS)}


def spot_id(slide: FakeSlide, j: int) -> str:
    """The id of spot ``j`` of a slide."""
    return f"{slide.slide_id}-s{j:04d}"


def spot_row(slide: FakeSlide, j: int, tile_px: int, run_id: str) -> dict[str, Any]:
    """The ``spots`` row of spot ``j``: a flat-colour JPEG tile of ``tile_px`` pixels."""
    return dict(slide_id=slide.slide_id, spot_id=spot_id(slide, j), technology=slide.technology, x=float(j),
                y=float(j), in_tissue=True, array_row=j, array_col=0, label=spot_label(slide, j),
                tile=tile_bytes(spot_color(slide, j), tile_px), tile_format="jpeg", tile_width=tile_px,
                tile_height=tile_px, tile_x0=0, tile_y0=0, tile_size_px=tile_px, padded=False,
                tissue_fraction=tissue_fraction(slide, j), run_id=run_id)


def expression_row(slide: FakeSlide, j: int, ids: np.ndarray, n_genes: int, run_id: str,
                   extra_counts: Optional[dict[int, list[int]]] = None) -> dict[str, Any]:
    """The ``expression`` row of spot ``j`` (``ids``: the lake's gene id of each synthetic gene)."""
    counts = spot_counts(slide, j, n_genes)
    for g, values in (extra_counts or {}).items():
        counts[g] = values[j]
    counts = {g: c for g, c in counts.items() if c}
    ordered = sorted((int(ids[g]), c) for g, c in counts.items())
    return dict(slide_id=slide.slide_id, spot_id=spot_id(slide, j), technology=slide.technology,
                gene_ids=[p[0] for p in ordered], counts=[p[1] for p in ordered],
                total_counts=sum(counts.values()), n_genes=len(ordered), run_id=run_id)


def slide_row(slide: FakeSlide, run_id: str) -> dict[str, Any]:
    """The ``slides`` row of a slide (columns it does not know are null)."""
    row: dict[str, Any] = {name: None for name in schemas.SLIDES.names}
    row.update(slide_id=slide.slide_id, technology=slide.technology, layout="stimage",
               species=genes_mod.normalise_species(slide.species), tissue=slide.tissue,
               n_spots=slide.n_spots, run_id=run_id)
    return row


def write_sources(lake: str, slides: Iterable[FakeSlide], n_genes: int = 30, tile_px: int = 16,
                  run_id: str = "test", extra_counts: Optional[dict[str, dict[int, list[int]]]] = None) -> None:
    """Commit ``genes`` and the ``expression``, ``annotations``, ``spots``, ``slides`` rows of ``slides`` (replaced)."""
    slides = list(slides)
    write_genes(lake, [s.species for s in slides], n_genes)
    parts = {s.slide_id: source_tables(s, n_genes, tile_px, run_id, (extra_counts or {}).get(s.slide_id))
             for s in slides}
    for table in ("expression", "annotations", "spots", "slides"):
        files = [f for sid, part in parts.items()
                 for f in tables.write_data_files(lake, table, part[table], f"{run_id}-{sid}")]
        tables.commit(lake, table, files, replace_slides=set(parts), run_id=run_id)
