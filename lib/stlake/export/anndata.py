"""One slide of the lake as an AnnData object, laid out as scanpy's ``read_visium`` lays out a Visium slide.

- ``X``: raw counts, CSR int32, spots x the genes detected on the slide (``gene_id`` ascending);
- ``obs``: one row per spot of ``spots``, indexed by spot id: ``in_tissue``, ``array_row``,
  ``array_col``, ``label`` (categorical, NaN when none), ``tissue_fraction``;
- ``var``: indexed by symbol (the ``gene_key`` where a symbol is missing or repeats), ``gene_ids`` (the
  Ensembl id, scanpy's column name), ``gene_key`` and ``gene_id`` (stlake's ids);
- ``obsm['spatial']``: spot centres (x, y) in full-resolution pixels;
- ``uns['spatial'][slide_id]``: ``images`` (``hires``, ``lowres``: RGB uint8 rebuilt from the tiles, see
  :mod:`stlake.export.image`), ``scalefactors`` (``tissue_hires_scalef``, ``tissue_lowres_scalef``,
  ``spot_diameter_fullres``) and ``metadata``, so ``sc.pl.spatial`` and ``squidpy.pl.spatial_scatter``
  draw the spots on the tissue; ``uns['stlake']`` holds the slide's ``slides`` row.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from stlake.export.image import tissue_image
from stlake.lake import storage, tables

if TYPE_CHECKING:
    import anndata as ad

SPOT_COLUMNS = ["spot_id", "x", "y", "in_tissue", "array_row", "array_col", "label", "tissue_fraction"]
SLIDE_FIELDS = ("technology", "layout", "species", "tissue", "source_uri", "image_uri", "image_source",
                "coord_scale", "spot_diameter_px", "microns_per_pixel", "tile_size_px", "run_id")


class ExportError(LookupError):
    """The lake or a slide cannot be exported (no lake, unknown slide); the message is one line."""


def slide_record(lake: str, slide_id: str) -> dict[str, Any]:
    """The ``slides`` row of ``slide_id``; ``ExportError`` when the lake or the slide is missing."""
    if tables.open_table(lake, "slides") is None:
        raise ExportError(f"no lake at {storage.normalize(lake)} (it has no 'slides' table)")
    rows = tables.slide_rows(lake, "slides", slide_id).to_pylist()
    if not rows:
        raise ExportError(f"slide {slide_id!r} is not in the lake at {storage.normalize(lake)}")
    return rows[-1]


def _obs(spots: pa.Table) -> pd.DataFrame:
    """``obs``: the spots' flags, array coordinates, label and tissue fraction, indexed by spot id."""
    return pd.DataFrame({
        "in_tissue": spots.column("in_tissue").to_numpy(zero_copy_only=False).astype(np.int32),
        "array_row": spots.column("array_row").to_numpy(), "array_col": spots.column("array_col").to_numpy(),
        "label": pd.Categorical(spots.column("label").to_pylist()),
        "tissue_fraction": spots.column("tissue_fraction").to_numpy(zero_copy_only=False),
    }, index=pd.Index(spots.column("spot_id").to_pylist(), name=None))


def var_names(symbols: list[Any], keys: list[str]) -> list[str]:
    """Each gene's symbol, or its ``gene_key`` where the symbol is missing or shared with another gene."""
    names = [symbol or key for symbol, key in zip(symbols, keys)]
    counts = pd.Series(names).value_counts()
    return [key if counts[name] > 1 else name for name, key in zip(names, keys)]


def _var(gene_ids: np.ndarray, genes: pa.Table) -> pd.DataFrame:
    """``var`` of the detected ``gene_ids`` (ascending), from the ``genes`` table."""
    known = {row["gene_id"]: row for row in genes.to_pylist()}
    rows = [known.get(int(g), {"gene_key": str(g), "symbol": None, "ensembl_id": None}) for g in gene_ids]
    keys = [row["gene_key"] for row in rows]
    return pd.DataFrame({"gene_ids": [row["ensembl_id"] for row in rows], "gene_key": keys,
                         "gene_id": gene_ids.astype(np.int64)},
                        index=pd.Index(var_names([row["symbol"] for row in rows], keys), name=None))


def counts_matrix(spot_ids: list[str], expression: pa.Table) -> tuple[sp.csr_matrix, np.ndarray]:
    """(CSR int32 counts of ``spot_ids`` x detected genes, the genes' ids ascending) from ``expression`` rows.

    Rows of spots that are not in ``spot_ids`` are left out; a spot without a row is a row of zeros.
    """
    row_of = pd.Index(spot_ids).get_indexer(expression.column("spot_id").to_pylist())
    keep = row_of >= 0
    gene_lists = expression.column("gene_ids").combine_chunks()
    count_lists = expression.column("counts").combine_chunks()
    lengths = pc.list_value_length(gene_lists).to_numpy(zero_copy_only=False)
    rows = np.repeat(row_of, lengths)
    flat_genes = pc.list_flatten(gene_lists).to_numpy()
    flat_counts = pc.list_flatten(count_lists).to_numpy().astype(np.int32)
    mask = np.repeat(keep, lengths)
    gene_ids = np.unique(flat_genes[mask])
    matrix = sp.coo_matrix((flat_counts[mask], (rows[mask], np.searchsorted(gene_ids, flat_genes[mask]))),
                           shape=(len(spot_ids), len(gene_ids)), dtype=np.int32).tocsr()
    matrix.sort_indices()
    return matrix, gene_ids


def _uns_spatial(lake: str, slide: dict[str, Any]) -> dict[str, Any]:
    """``uns['spatial'][slide_id]``: images rebuilt from the tiles, scale factors from full resolution."""
    image = tissue_image(lake, slide["slide_id"], slide["image_width"], slide["image_height"])
    coord_scale = float(slide["coord_scale"] or 1.0)  # pixels of the tiled image per full-resolution pixel
    return {"images": {"hires": image.hires, "lowres": image.lowres},
            "scalefactors": {"tissue_hires_scalef": image.hires_scale * coord_scale,
                             "tissue_lowres_scalef": image.lowres_scale * coord_scale,
                             "spot_diameter_fullres": float(slide["spot_diameter_px"]) / coord_scale},
            "metadata": {"source_image_path": slide["image_uri"] or "", "images_from": "stlake tiles"}}


def to_anndata(lake: str, slide_id: str) -> ad.AnnData:
    """The slide ``slide_id`` of ``lake`` as an AnnData object (see the module docstring).

    ``ExportError`` when the lake or the slide does not exist.
    """
    import anndata as ad
    slide = slide_record(lake, slide_id)
    spots = tables.slide_rows(lake, "spots", slide_id, SPOT_COLUMNS).sort_by("spot_id")
    expression = tables.slide_rows(lake, "expression", slide_id, ["spot_id", "gene_ids", "counts"])
    spot_ids = spots.column("spot_id").to_pylist()
    matrix, gene_ids = counts_matrix(spot_ids, expression)
    genes = tables.read_table(lake, "genes", columns=["gene_id", "gene_key", "symbol", "ensembl_id"])
    genes = genes.filter(pc.is_in(genes.column("gene_id"), value_set=pa.array(gene_ids, pa.int64())))
    coord_scale = float(slide["coord_scale"] or 1.0)
    centres = np.column_stack([spots.column("x").to_numpy(), spots.column("y").to_numpy()]) / coord_scale
    adata = ad.AnnData(X=matrix, obs=_obs(spots), var=_var(gene_ids, genes), obsm={"spatial": centres})
    adata.uns["spatial"] = {slide_id: _uns_spatial(lake, slide)}
    adata.uns["stlake"] = {"slide_id": slide_id, **{k: slide[k] for k in SLIDE_FIELDS if slide.get(k) is not None}}
    return adata


def write_h5ad(adata: ad.AnnData, uri: str) -> int:
    """Write ``adata`` to a local path or ``s3://`` URI (through a local temporary file); its size in bytes."""
    if not storage.is_s3(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        adata.write_h5ad(uri)
        return os.path.getsize(uri)
    with tempfile.TemporaryDirectory(prefix="stlake-export-") as folder:
        local = os.path.join(folder, "slide.h5ad")
        adata.write_h5ad(local)
        with open(local, "rb") as source, storage.open_output(uri) as sink:
            shutil.copyfileobj(source, sink, 8 << 20)
        return os.path.getsize(local)
