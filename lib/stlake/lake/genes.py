"""Gene harmonisation: one ``genes`` table shared by all slides, same ids on every run and cluster.

A gene is keyed by (species, gene_key): the unversioned upper-case Ensembl id for Ensembl-like names
(``ENSG00000141510.12`` -> ``ENSG00000141510``), else the upper-cased symbol (``Tp53``/``TP53`` are one
key). 10x features (id + name) are keyed by symbol, so a 10x slide and a symbol-only CSV slide share
genes; their Ensembl id is recorded. ``gene_id`` is a hash of the key, so no coordination is needed.

A matrix that names genes only by Ensembl id (an ``ENSG…`` CSV) would key them by id while a 10x slide
keys the same genes by symbol. The (Ensembl id, symbol) pairs the lake already holds (every 10x
feature list carries both) are learned (:func:`symbol_pairs`) and such genes are keyed by their symbol
(:func:`rekey_by_symbol`); genes without a known pair keep their Ensembl key and are reported.

Collision remarks (``rejects`` warnings) name columns by number and gene name: gene names are
identifiers that the ``genes`` table holds anyway, not counts. A name too long to be a gene name (a
broken header can hold anything) is shortened to its first ``MAX_SHOWN`` characters.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, TypeGuard, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from stlake.lake import schemas

if TYPE_CHECKING:
    from stlake.ingestion.matrices import SparseBatch

ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$", re.IGNORECASE)
SPECIES_ALIASES = {
    "homo sapiens": "human", "human": "human", "hs": "human", "hsapiens": "human", "h. sapiens": "human",
    "mus musculus": "mouse", "mouse": "mouse", "mm": "mouse", "mmusculus": "mouse", "m. musculus": "mouse",
}
UNKNOWN_SPECIES = "unknown"
COLLISION = "gene_collision"
UNRESOLVED = "ensembl_genes_unresolved"
EMPTY_NAME = "gene_name_empty"
MAX_SHOWN = 40  # characters of a gene name or key shown in a remark


@dataclass
class GeneMap:
    """A slide's source columns mapped onto global gene ids."""

    gene_ids: np.ndarray  # int64 per source column, -1 = dropped
    rows: pa.Table  # schemas.GENES rows of the slide's distinct genes
    collisions: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)


def normalise_species(species: Optional[str]) -> str:
    """``Homo sapiens`` -> ``human``, ``Mus musculus`` -> ``mouse``, None -> ``unknown``, else lower-case."""
    if species is None or not str(species).strip():
        return UNKNOWN_SPECIES
    text = " ".join(str(species).strip().lower().replace("_", " ").split())
    return SPECIES_ALIASES.get(text, text)


def unversioned(ensembl_id: str) -> str:
    """``ENSG00000141510.12`` -> ``ENSG00000141510`` (upper case)."""
    return ensembl_id.strip().split(".", 1)[0].upper()


def is_ensembl(name: Optional[str]) -> TypeGuard[str]:
    """True for an Ensembl gene id, versioned or not (``ENSG00000141510``, ``ENSMUSG00000059552.3``)."""
    return bool(name and ENSEMBL.match(name.strip()))


def gene_key(name: str, species: str) -> tuple[str, Optional[str], Optional[str]]:
    """(key, ensembl_id, symbol) of one gene name; ``species`` does not change the key."""
    if is_ensembl(name):
        key = unversioned(name)
        return key, key, None
    return name.strip().upper(), None, name


def gene_id(species: str, key: str) -> int:
    """Stable non-negative 63-bit id of (species, key): first 8 bytes of blake2b, big-endian."""
    digest = hashlib.blake2b(f"{species.lower()}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def _feature_key(raw: str, ensembl: Optional[str], symbol: Optional[str],
                 species: str) -> tuple[str, Optional[str], Optional[str]]:
    """(key, ensembl_id, symbol) of one column: by symbol when known, else by id, else by raw name."""
    ens = unversioned(ensembl) if is_ensembl(ensembl) else None
    if symbol and symbol.strip():
        key, ens_from_symbol, sym = gene_key(symbol, species)
        return key, ens or ens_from_symbol, sym
    if ensembl and ensembl.strip():
        key, ens_from_id, _ = gene_key(ensembl, species)
        return key, ens or ens_from_id, None
    return gene_key(raw, species)


def _fallback_key(ensembl: Optional[str]) -> Optional[str]:
    """Key of a colliding feature: its unversioned Ensembl id (or upper-cased id), None without an id."""
    if not ensembl or not ensembl.strip():
        return None
    return unversioned(ensembl) if is_ensembl(ensembl) else ensembl.strip().upper()


def harmonise(genes: Sequence[str], ensembl_ids: Sequence[Optional[str]], symbols: Sequence[Optional[str]],
              species: Optional[str]) -> GeneMap:
    """Map a slide's columns onto global genes; collisions are resolved by Ensembl id or dropped."""
    species_name = normalise_species(species)
    ids = np.full(len(genes), -1, dtype=np.int64)
    owner: dict[str, int] = {}  # key -> first column using it
    rows: list[dict] = []
    collisions: list[tuple[str, str]] = []
    for column, raw in enumerate(genes):
        ensembl, symbol = ensembl_ids[column], symbols[column]
        key, ens, sym = _feature_key(raw or "", ensembl, symbol, species_name)
        if not key:
            collisions.append((EMPTY_NAME, f"column {column + 1} has an empty gene name; dropped"))
            continue
        if key in owner:
            clash = (f"same gene key {_shown(key)} ({species_name}) as "
                     f"{_describe(genes, ensembl_ids, owner[key])}")
            fallback = _fallback_key(ensembl)
            if not fallback or fallback in owner:
                collisions.append((COLLISION, f"{_describe(genes, ensembl_ids, column)} dropped: {clash}"))
                continue
            collisions.append((COLLISION, f"{_describe(genes, ensembl_ids, column)} keyed by its id "
                                          f"{_shown(fallback)}: {clash}"))
            key = fallback
        owner[key] = column
        ids[column] = gene_id(species_name, key)
        rows.append({"gene_id": int(ids[column]), "species": species_name, "gene_key": key,
                     "symbol": sym, "ensembl_id": ens})
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["species"], r["gene_key"])), schema=schemas.GENES)
    return GeneMap(ids, table, collisions)


def _shown(name: str) -> str:
    """``name`` quoted for a message, shortened to ``MAX_SHOWN`` characters."""
    return repr(name) if len(name) <= MAX_SHOWN else f"{name[:MAX_SHOWN]!r}... ({len(name)} characters)"


def _describe(genes: Sequence[str], ensembl_ids: Sequence[Optional[str]], column: int) -> str:
    """A column for messages: its number, name and Ensembl id."""
    ens = ensembl_ids[column]
    if ens and len(ens) > MAX_SHOWN:
        ens = _shown(ens)
    return f"column {column + 1} {_shown(genes[column])}" + (f" ({ens})" if ens else "")


@dataclass(frozen=True)
class GlobalColumns:
    """A slide's source columns ranked by global gene id; build it once and reuse it for every batch."""

    rank: np.ndarray  # int64 per source column: rank of its global id, -1 = dropped
    ids: np.ndarray  # int64 global id of each rank, ascending

    @classmethod
    def of(cls, gene_ids: np.ndarray) -> GlobalColumns:
        """From ``GeneMap.gene_ids`` (global id per source column, -1 = dropped)."""
        gid = np.asarray(gene_ids, dtype=np.int64)
        valid = np.flatnonzero(gid >= 0)
        by_id = valid[np.argsort(gid[valid], kind="stable")]
        rank = np.full(len(gid), -1, dtype=np.int64)
        rank[by_id] = np.arange(len(by_id))
        return cls(rank, gid[by_id])


def to_global(batch: SparseBatch, gene_ids: Union[np.ndarray, GlobalColumns]) -> tuple[pa.ListArray, pa.ListArray]:
    """Per row: global gene ids ascending (int64 lists) and their counts (int32 lists), dropped columns removed.

    ``gene_ids`` is ``GeneMap.gene_ids`` (the global id of every source column, -1 for dropped ones) or,
    to rank the columns once for many batches, its ``GlobalColumns``. Source columns are renumbered by
    the rank of their global id, so ordering each row is scipy's per-row index sort rather than one
    sort of the whole chunk.
    """
    ranked = gene_ids if isinstance(gene_ids, GlobalColumns) else GlobalColumns.of(gene_ids)
    n = len(batch.spot_ids)
    columns = ranked.rank[batch.indices]
    counts = np.asarray(batch.counts, dtype=np.int32)
    indptr = np.asarray(batch.indptr, dtype=np.int64)
    keep = columns >= 0
    if not keep.all():
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))[keep]
        columns, counts = columns[keep], counts[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    matrix = sp.csr_matrix((counts, columns, indptr), shape=(n, max(len(ranked.ids), 1)))
    matrix.sort_indices()
    offsets_array = pa.array(matrix.indptr.astype(np.int32), type=pa.int32())
    return (pa.ListArray.from_arrays(offsets_array, pa.array(ranked.ids[matrix.indices], type=pa.int64())),
            pa.ListArray.from_arrays(offsets_array, pa.array(matrix.data.astype(np.int32, copy=False),
                                                             type=pa.int32())))


def list_totals(count_lists: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``to_global``'s counts: total counts (int64, no overflow) and number of genes (int32)."""
    offsets = count_lists.offsets.to_numpy()
    sums = np.concatenate([[0], np.cumsum(count_lists.values.to_numpy(), dtype=np.int64)])
    return sums[offsets[1:]] - sums[offsets[:-1]], np.diff(offsets).astype(np.int32)


def _smallest_per_gene(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per gene_id with, per column, the smallest non-null value (independent of row order)."""
    columns = {name: frame.sort_values(name, kind="stable").groupby("gene_id", sort=False)[name].first()
               for name in schemas.GENES.names[1:]}
    return pd.DataFrame(columns)


def merge_gene_rows(existing: Optional[pa.Table], new: list[pa.Table]) -> pa.Table:
    """One row per gene_id: existing rows win, missing symbol / ensembl_id filled from new rows.

    Among new rows the smallest non-null value is taken, so the result does not depend on slide order.
    Sorted by (species, gene_key).
    """
    tables = [t.select(schemas.GENES.names).cast(schemas.GENES) for t in new if t is not None and t.num_rows]
    old = (existing.select(schemas.GENES.names).cast(schemas.GENES).to_pandas()
           if existing is not None and existing.num_rows else schemas.GENES.empty_table().to_pandas())
    merged = old.drop_duplicates("gene_id", keep="first").set_index("gene_id")
    if tables:
        fresh = _smallest_per_gene(pa.concat_tables(tables).to_pandas())
        merged = merged.combine_first(fresh) if len(merged) else fresh
    merged = merged.reset_index()[schemas.GENES.names].sort_values(["species", "gene_key", "gene_id"], kind="stable")
    merged = merged.astype(object).where(merged.notna(), None)
    return pa.Table.from_pandas(merged, schema=schemas.GENES, preserve_index=False)


# ---------------------------------------------------------------- Ensembl-only genes keyed by symbol

#: (species, unversioned Ensembl id) -> (symbol key, symbol as first seen).
SymbolPairs = dict[tuple[str, str], tuple[str, str]]


def symbol_pairs(tables: Sequence[Optional[pa.Table]]) -> SymbolPairs:
    """The Ensembl id -> symbol pairs of ``genes`` rows keyed by their symbol (10x features carry both).

    An id paired with two different symbol keys (annotation releases disagree) is left out.
    """
    pairs: SymbolPairs = {}
    ambiguous: set[tuple[str, str]] = set()
    for table in tables:
        if table is None or not table.num_rows:
            continue
        table = table.filter(pc.and_(pc.is_valid(table.column("symbol")), pc.is_valid(table.column("ensembl_id"))))
        columns = (table.column(c).to_pylist() for c in ("species", "gene_key", "symbol", "ensembl_id"))
        for species, key, symbol, ensembl in zip(*columns):
            if not (symbol and ensembl) or key != symbol.strip().upper():
                continue
            known = pairs.setdefault((species, ensembl), (key, symbol))
            if known[0] != key:
                ambiguous.add((species, ensembl))
    return {pair: value for pair, value in pairs.items() if pair not in ambiguous}


@dataclass
class Rekeyed:
    """A slide's genes after :func:`rekey_by_symbol`."""

    new_ids: dict[int, int]  # old gene_id -> new gene_id of the genes keyed by symbol now
    rows: pa.Table  # the slide's ``genes`` rows
    remarks: list[tuple[str, str]]  # (reason, detail) of the genes left keyed by Ensembl id


def _ensembl_only(row: dict) -> bool:
    """A gene keyed by its Ensembl id because its source named it by id only."""
    return row["symbol"] is None and row["ensembl_id"] is not None and row["gene_key"] == row["ensembl_id"]


def _has_ensembl_only(rows: pa.Table) -> bool:
    """True when some row is :func:`_ensembl_only` (vectorised: slides have tens of thousands of genes)."""
    ensembl = rows.column("ensembl_id")
    mask = pc.and_(pc.is_null(rows.column("symbol")), pc.equal(rows.column("gene_key"), ensembl))
    return bool(pc.any(pc.fill_null(mask, False)).as_py())


def rekey_by_symbol(rows: pa.Table, pairs: SymbolPairs) -> Rekeyed:
    """Key a slide's Ensembl-only genes by the symbol ``pairs`` give them; report the others.

    A gene stays keyed by its id when no pair is known, or when its symbol is already a gene of the
    slide (two columns would become one gene).
    """
    if not _has_ensembl_only(rows):  # the usual slide (named by symbol, or 10x with both): nothing to do
        return Rekeyed({}, rows, [])
    genes = rows.to_pylist()
    taken = {row["gene_key"] for row in genes}
    new_ids: dict[int, int] = {}
    unresolved, clashes, out = [], [], []
    for row in genes:
        pair = pairs.get((row["species"], row["ensembl_id"])) if _ensembl_only(row) else None
        if pair is None or pair[0] in taken:
            if pair is not None:
                clashes.append(row["gene_key"])
            elif _ensembl_only(row):
                unresolved.append(row["gene_key"])
            out.append(row)
            continue
        taken.add(pair[0])
        new = {**row, "gene_key": pair[0], "symbol": pair[1], "gene_id": gene_id(row["species"], pair[0])}
        new_ids[row["gene_id"]] = new["gene_id"]
        out.append(new)
    total = sum(_ensembl_only(row) for row in genes)
    remarks = []
    if unresolved:
        remarks.append((UNRESOLVED, f"{len(unresolved)} of {total} genes named only by Ensembl id have no known "
                                    f"symbol (no 10x slide in the lake or this run pairs them), so they keep their "
                                    f"Ensembl key: {_preview(unresolved)}"))
    if clashes:
        remarks.append((COLLISION, f"{len(clashes)} genes named by Ensembl id keep it as their key because their "
                                   f"symbol is another column of the slide: {_preview(clashes)}"))
    table = pa.Table.from_pylist(sorted(out, key=lambda r: (r["species"], r["gene_key"])), schema=schemas.GENES)
    return Rekeyed(new_ids, table, remarks)


def _preview(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more."""
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(_shown(name) for name in names[:shown]) + more


#: A packed column whose gene was dropped (-1); an empty entry is the column's own name's key.
_DROPPED = "\x01"


def _default_key(name: str) -> str:
    """The key a column named ``name`` gets when nothing else (symbol, collision) decides it."""
    return gene_key(name, UNKNOWN_SPECIES)[0] if name else ""


def _unpack_keys(names: Sequence[str], packed: bytes) -> list[Optional[str]]:
    """Each column's key (None: dropped) from :func:`pack_gene_ids`'s entries."""
    entries = zlib.decompress(packed).decode("utf-8").split("\0")
    if len(entries) != len(names):
        raise ValueError(f"{len(entries)} packed gene keys for {len(names)} columns")
    return [None if entry == _DROPPED else entry or _default_key(name) for entry, name in zip(entries, names)]


def unpack_gene_ids(species: str, names: Sequence[str], packed: bytes) -> np.ndarray:
    """The global gene id of every column (``-1``: dropped), hashed back from :func:`pack_gene_ids`'s keys."""
    keys = _unpack_keys(names, packed)
    return np.array([-1 if key is None else gene_id(species, key) for key in keys], dtype=np.int64)


def pack_gene_ids(gene_ids: np.ndarray, species: str, names: Sequence[str], rows: pa.Table) -> Optional[bytes]:
    """``gene_ids`` as their keys (zlib text), for tasks: ids are 8 random-looking bytes, keys compress ~5x.

    A column whose key is its own name's (the usual case) is stored as an empty entry. None when the
    keys do not hash back to exactly ``gene_ids`` (then the ids travel as they are).
    """
    key_of = dict(zip(rows.column("gene_id").to_pylist(), rows.column("gene_key").to_pylist()))
    entries = []
    for gene, name in zip(gene_ids.tolist(), names):
        key = _DROPPED if gene < 0 else key_of.get(gene)
        if key is None or "\0" in key:
            return None
        entries.append("" if key != _DROPPED and key == _default_key(name) else key)
    packed = zlib.compress("\0".join(entries).encode("utf-8"), 6)
    return packed if np.array_equal(unpack_gene_ids(species, names, packed), gene_ids) else None


def remap_ids(gene_ids: np.ndarray, new_ids: dict[int, int]) -> np.ndarray:
    """``GeneMap.gene_ids`` (global id per source column, -1 dropped) with ``new_ids`` applied."""
    if not new_ids:
        return gene_ids
    return np.array([new_ids.get(int(g), int(g)) for g in gene_ids], dtype=np.int64)
