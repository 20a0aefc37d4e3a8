"""Resolve a stream's gene panel to expression columns.

A panel is an ordered list of columns. Each column has a representative ``gene_id`` and ``symbol``
(what :func:`resolve_panel` returns) and a set of gene ids that fill it: an explicit symbol matches
that gene in every species of the lake (restricted to ``spec.species`` when given), since a spot has
one species at most one of them is present. A gene that is not in the lake gives a column of zeros
(``gene_id`` -1 when it was named by symbol).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import pyarrow as pa

from stlake.lake import tables
from stlake.lake.genes import UNKNOWN_SPECIES, gene_key
from stlake.stream.spec import DEFAULT_PANEL, GeneRef, StreamSpec


class Panel(tuple):
    """``(gene_ids, symbols)`` of the panel's columns; ``lookup_ids`` / ``lookup_cols`` map gene ids to columns."""

    lookup_ids: np.ndarray  # sorted gene ids that fill a column
    lookup_cols: np.ndarray  # the column of each of them
    name: Optional[str]  # the stored panel's name, None for an explicit panel

    def __new__(cls, gene_ids: np.ndarray, symbols: Sequence[str], lookup_ids: Optional[np.ndarray] = None,
                lookup_cols: Optional[np.ndarray] = None, name: Optional[str] = None) -> Panel:
        """A panel; without ``lookup_ids`` each column is filled by its own gene id (-1: none)."""
        gene_ids = np.asarray(gene_ids, np.int64)
        self = super().__new__(cls, (gene_ids, list(symbols)))
        if lookup_ids is None:
            present = np.flatnonzero(gene_ids >= 0)
            lookup_ids, lookup_cols = gene_ids[present], present
        order = np.argsort(lookup_ids, kind="stable")
        self.lookup_ids = np.asarray(lookup_ids, np.int64)[order]
        self.lookup_cols = np.asarray(lookup_cols, np.int64)[order]
        if len(np.unique(self.lookup_ids)) != len(self.lookup_ids):
            raise ValueError("a gene id maps to two panel columns (duplicate gene in the panel?)")
        self.name = name
        return self

    @property
    def gene_ids(self) -> np.ndarray:
        """The representative gene id of each column (int64, -1 for a gene not in the lake)."""
        return self[0]

    @property
    def symbols(self) -> list[str]:
        """The symbol (or name as given) of each column."""
        return self[1]

    @property
    def n_genes(self) -> int:
        """Number of columns."""
        return len(self[0])


def _genes(lake: str, species: Optional[Sequence[str]]) -> pa.Table:
    """The lake's genes (of ``species`` when given), ordered by species then gene id."""
    genes = tables.read_table(lake, "genes", columns=["gene_id", "species", "gene_key", "symbol", "ensembl_id"])
    if species:
        import pyarrow.compute as pc
        genes = genes.filter(pc.is_in(genes.column("species"), value_set=pa.array(list(species), pa.string())))
    return genes.sort_by([("species", "ascending"), ("gene_id", "ascending")])


def _key(item: object, species: str = UNKNOWN_SPECIES) -> str:
    """The gene key of a name, as ingest keys genes (unversioned Ensembl id, else the upper-cased symbol)."""
    return gene_key(str(item), species)[0]


def _index(genes: pa.Table) -> tuple[dict[str, dict[str, int]], dict[int, str]]:
    """Name -> {species: gene id} (gene keys first, then symbols and Ensembl ids); gene id -> symbol."""
    columns = [genes.column(c).to_pylist() for c in ("gene_id", "species", "gene_key", "symbol", "ensembl_id")]
    by_name: dict[str, dict[str, int]] = {}
    symbols: dict[int, str] = {}
    for gid, species, key, symbol, _ in zip(*columns):
        symbols[gid] = symbol or key
        by_name.setdefault(_key(key, species), {}).setdefault(species, gid)
    for gid, species, _, symbol, ensembl in zip(*columns):
        for name in (symbol, ensembl):
            if name:
                by_name.setdefault(_key(name, species), {}).setdefault(species, gid)
    return by_name, symbols


def _column_genes(item: GeneRef, by_name: dict[str, dict[str, int]],
                  symbols: dict[int, str]) -> tuple[list[int], str]:
    """(gene ids filling the column, its name) of one panel item: a gene id, a symbol or an Ensembl id."""
    if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.strip().lstrip("-").isdigit()):
        return [int(item)], symbols.get(int(item), str(item).strip())
    ids = list(by_name.get(_key(item), {}).values())
    return ids, symbols[ids[0]] if ids else str(item)


def explicit_panel(lake: str, items: Sequence[GeneRef], species: Optional[Sequence[str]] = None) -> Panel:
    """Columns for an explicit list of gene ids (ints) and/or names (symbols, Ensembl ids)."""
    by_name, symbols = _index(_genes(lake, species))
    gene_ids: list[int] = []
    names: list[str] = []
    lookup_ids: list[int] = []
    lookup_cols: list[int] = []
    for col, item in enumerate(items):
        ids, name = _column_genes(item, by_name, symbols)
        gene_ids.append(ids[0] if ids else -1)
        names.append(name)
        lookup_ids += ids
        lookup_cols += [col] * len(ids)
    return Panel(np.array(gene_ids, np.int64), names, np.array(lookup_ids, np.int64),
                 np.array(lookup_cols, np.int64))


def stored_panel(lake: str, name: str, species: Optional[Sequence[str]] = None) -> Panel:
    """Columns of a stored panel (``gene_panels``), ordered by (rank, species)."""
    from stlake.derived.hvg import read_panel
    rows = read_panel(lake, name)
    if species:
        keep = [s in set(species) for s in rows.column("species").to_pylist()]
        rows = rows.filter(pa.array(keep, pa.bool_()))
    if rows.num_rows == 0:
        from stlake.errors import MissingPanel
        raise MissingPanel(f"gene panel {name!r} not found in {lake}", _hvg_hint(name))
    gene_ids = rows.column("gene_id").to_numpy()
    symbols = [s if s is not None else str(g) for s, g in zip(rows.column("symbol").to_pylist(), gene_ids)]
    return Panel(gene_ids, symbols, name=name)


def _hvg_hint(name: str) -> str:
    """How to compute a missing ``hvg{k}`` panel (where to look for other names)."""
    k = name[3:]
    return (f"compute it with `stlake hvg --k {k}`" if name.startswith("hvg") and k.isdigit() else
            "panels: SELECT DISTINCT name FROM gene_panels")


def resolve_panel(lake: str, spec: StreamSpec) -> Panel:
    """The stream's panel: ``(gene_ids np.int64 array, symbols list)``, in expression-column order."""
    if spec.panel is not None:
        return explicit_panel(lake, spec.panel, spec.species)
    return stored_panel(lake, spec.panel_name or DEFAULT_PANEL, spec.species)
