"""Gene harmonisation: keys, stable ids, collisions, global rows, merging the shared table."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from stlake.ingestion.matrices import SparseBatch
from stlake.lake import genes, schemas


def test_gene_key_strips_versions_and_folds_case():
    assert genes.gene_key("ENSG00000141510.12", "human") == ("ENSG00000141510", "ENSG00000141510", None)
    assert genes.gene_key("ensg00000141510", "human")[0] == "ENSG00000141510"
    assert genes.gene_key("ENSMUSG00000059552.4", "mouse")[:2] == ("ENSMUSG00000059552", "ENSMUSG00000059552")
    assert {genes.gene_key(n, "human")[0] for n in ("Tp53", "TP53", "tp53")} == {"TP53"}
    assert genes.gene_key("Tp53", "mouse") == ("TP53", None, "Tp53")
    assert genes.gene_key("ENSG0001", "human") == ("ENSG0001", None, "ENSG0001")  # not Ensembl-like


def test_gene_id_is_stable_and_species_specific():
    assert genes.gene_id("human", "TP53") == 5569578252603275399
    assert genes.gene_id("HUMAN", "TP53") == genes.gene_id("human", "TP53")
    assert genes.gene_id("mouse", "TP53") != genes.gene_id("human", "TP53")
    assert 0 <= genes.gene_id("unknown", "X") < 2 ** 63


def test_species_normalisation():
    assert genes.normalise_species("Homo sapiens") == "human"
    assert genes.normalise_species(" Mus  musculus ") == "mouse"
    assert genes.normalise_species(None) == "unknown"
    assert genes.normalise_species("Danio Rerio") == "danio rerio"


def test_csv_symbols_and_versioned_ids():
    names = ["TP53", "ENSG00000141510.12", "Actb"]
    gm = genes.harmonise(names, [None] * 3, [None] * 3, "Homo sapiens")
    assert gm.gene_ids.dtype == np.int64 and gm.collisions == []
    assert gm.gene_ids.tolist() == [genes.gene_id("human", k) for k in ("TP53", "ENSG00000141510", "ACTB")]
    assert gm.rows.schema == schemas.GENES
    rows = gm.rows.to_pylist()
    assert [r["gene_key"] for r in rows] == ["ACTB", "ENSG00000141510", "TP53"]  # sorted by (species, key)
    assert rows[1]["ensembl_id"] == "ENSG00000141510" and rows[1]["symbol"] is None
    assert rows[0]["symbol"] == "Actb" and {r["species"] for r in rows} == {"human"}


def test_csv_case_collision_drops_later_column_and_reports():
    gm = genes.harmonise(["TP53", "EGFR", "tp53"], [None] * 3, [None] * 3, None)
    assert gm.gene_ids[2] == -1 and gm.gene_ids[0] == genes.gene_id("unknown", "TP53")
    assert gm.rows.num_rows == 2
    [(reason, detail)] = gm.collisions
    assert reason == "gene_collision" and "'tp53'" in detail and "dropped" in detail


def test_tenx_duplicate_symbol_is_keyed_by_ensembl_id():
    ids = ["ENSG00000284024.1", "ENSG00000141510.2", "ENSG00000285053.1"]
    names = ["MATR3", "TP53", "MATR3"]
    gm = genes.harmonise(names, ids, names, "human")
    assert gm.gene_ids.tolist() == [genes.gene_id("human", "MATR3"), genes.gene_id("human", "TP53"),
                                    genes.gene_id("human", "ENSG00000285053")]
    [(reason, detail)] = gm.collisions
    assert reason == "gene_collision" and "ENSG00000285053" in detail
    by_key = {r["gene_key"]: r for r in gm.rows.to_pylist()}
    assert by_key["TP53"]["ensembl_id"] == "ENSG00000141510" and by_key["TP53"]["symbol"] == "TP53"
    assert by_key["ENSG00000285053"]["symbol"] == "MATR3"


def test_tenx_and_csv_share_symbol_genes():
    tenx = genes.harmonise(["TP53"], ["ENSG00000141510.2"], ["TP53"], "Homo sapiens")
    csv = genes.harmonise(["Tp53"], [None], [None], "human")
    assert tenx.gene_ids[0] == csv.gene_ids[0]


def test_to_global_sorts_by_gene_id_and_drops_columns():
    gene_map = genes.GeneMap(np.array([50, 10, -1, 30, 20], dtype=np.int64), schemas.GENES.empty_table(), [])
    batch = SparseBatch(np.array(["a", "b", "c", "d"], dtype=object), np.array([0, 4, 4, 5, 7], dtype=np.int64),
                        np.array([0, 1, 3, 4, 2, 0, 2], dtype=np.int32), np.array([5, 1, 3, 2, 9, 8, 4], np.int32))
    gene_lists, count_lists = genes.to_global(batch, gene_map.gene_ids)
    assert gene_lists.type == pa.list_(pa.int64()) and count_lists.type == pa.list_(pa.int32())
    assert gene_lists.to_pylist() == [[10, 20, 30, 50], [], [], [50]]
    assert count_lists.to_pylist() == [[1, 2, 3, 5], [], [], [8]]


def test_to_global_matches_a_dense_reference():
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((30, 40)) < 0.3, rng.integers(1, 1000, (30, 40)), 0)
    ids = rng.permutation(10_000)[:40].astype(np.int64)
    ids[[3, 17]] = -1
    rows, cols = np.nonzero(dense)
    batch = SparseBatch(np.array([f"s{i}" for i in range(30)], dtype=object),
                        np.concatenate([[0], np.cumsum((dense > 0).sum(axis=1))]).astype(np.int64),
                        cols.astype(np.int32), dense[rows, cols].astype(np.int32))
    gene_lists, count_lists = genes.to_global(batch, ids)
    for r, (g, c) in enumerate(zip(gene_lists.to_pylist(), count_lists.to_pylist())):
        expected = sorted((ids[j], dense[r, j]) for j in np.flatnonzero(dense[r]) if ids[j] >= 0)
        assert list(zip(g, c)) == expected


def test_list_totals_of_global_rows():
    """Per-row totals and gene counts come from ``to_global``'s lists (formerly ``batch_totals``)."""
    batch = SparseBatch(np.array(["a", "b", "c"], dtype=object), np.array([0, 2, 2, 5], dtype=np.int64),
                        np.array([0, 3, 1, 2, 4], dtype=np.int32), np.array([5, 1, 2, 3, 2_000_000_000], np.int32))
    totals, detected = genes.list_totals(genes.to_global(batch, np.arange(10, 15))[1])
    assert totals.dtype == np.int64 and detected.dtype == np.int32
    assert totals.tolist() == [6, 0, 2_000_000_005] and detected.tolist() == [2, 0, 3]
    columns = genes.GlobalColumns.of(np.array([10, 11, -1, 13, 14]))
    totals, detected = genes.list_totals(genes.to_global(batch, columns)[1])
    assert totals.tolist() == [6, 0, 2_000_000_002] and detected.tolist() == [2, 0, 2]
    assert genes.list_totals(genes.to_global(batch, columns)[1].slice(1))[0].tolist() == [0, 2_000_000_002]


def gene_rows(*rows: tuple) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schemas.GENES.names, r)) for r in rows], schema=schemas.GENES)


def test_merge_gene_rows_deduplicates_and_fills():
    tp53, actb, egfr = (genes.gene_id("human", k) for k in ("TP53", "ACTB", "EGFR"))
    existing = gene_rows((tp53, "human", "TP53", "TP53", None), (actb, "human", "ACTB", "Actb", None))
    new_a = gene_rows((tp53, "human", "TP53", "Tp53", "ENSG00000141510"), (egfr, "human", "EGFR", None, None))
    new_b = gene_rows((egfr, "human", "EGFR", "EGFR", None), (actb, "human", "ACTB", "ACTB", "ENSG00000075624"))
    merged = genes.merge_gene_rows(existing, [new_a, new_b])
    assert merged.schema == schemas.GENES
    assert merged.to_pylist() == [
        {"gene_id": actb, "species": "human", "gene_key": "ACTB", "symbol": "Actb", "ensembl_id": "ENSG00000075624"},
        {"gene_id": egfr, "species": "human", "gene_key": "EGFR", "symbol": "EGFR", "ensembl_id": None},
        {"gene_id": tp53, "species": "human", "gene_key": "TP53", "symbol": "TP53", "ensembl_id": "ENSG00000141510"},
    ]
    assert genes.merge_gene_rows(None, [new_b, new_a]) == genes.merge_gene_rows(None, [new_a, new_b])
    assert genes.merge_gene_rows(merged, [new_a]) == merged


def test_merge_gene_rows_of_harmonised_slides():
    a = genes.harmonise(["TP53", "EGFR"], [None] * 2, [None] * 2, "human").rows
    b = genes.harmonise(["EGFR", "KRAS"], ["ENSG00000146648", None], ["EGFR", None], "human").rows
    merged = genes.merge_gene_rows(None, [a, b])
    assert merged.column("gene_key").to_pylist() == ["EGFR", "KRAS", "TP53"]
    assert merged.column("ensembl_id").to_pylist()[0] == "ENSG00000146648"
    assert len(set(merged.column("gene_id").to_pylist())) == 3


def test_ensembl_only_genes_are_keyed_by_the_symbol_a_10x_slide_pairs_them_with():
    tenx = genes.harmonise(["TP53", "EGFR"], ["ENSG00000141510.2", "ENSG00000146648.1"], ["TP53", "EGFR"], "human")
    csv = genes.harmonise(["ENSG00000141510.12", "ENSG00000999999.1", "ENSG00000146648"], [None] * 3, [None] * 3,
                          "Homo sapiens")
    pairs = genes.symbol_pairs([tenx.rows, csv.rows])
    assert pairs == {("human", "ENSG00000141510"): ("TP53", "TP53"), ("human", "ENSG00000146648"): ("EGFR", "EGFR")}
    rekeyed = genes.rekey_by_symbol(csv.rows, pairs)
    ids = genes.remap_ids(csv.gene_ids, rekeyed.new_ids)
    assert ids[0] == tenx.gene_ids[0] == genes.gene_id("human", "TP53") and ids[2] == tenx.gene_ids[1]
    assert ids[1] == csv.gene_ids[1] == genes.gene_id("human", "ENSG00000999999")
    rows = {r["gene_key"]: r for r in rekeyed.rows.to_pylist()}
    assert rows["TP53"]["ensembl_id"] == "ENSG00000141510" and rows["TP53"]["symbol"] == "TP53"
    [(reason, detail)] = rekeyed.remarks
    assert reason == "ensembl_genes_unresolved" and detail.startswith("1 of 3 genes") and "ENSG00000999999" in detail


def test_symbol_pairs_skip_ambiguous_ids_and_keep_a_slide_s_own_symbol_column():
    a = genes.harmonise(["TP53"], ["ENSG00000141510"], ["TP53"], "human")
    b = genes.harmonise(["P53"], ["ENSG00000141510"], ["P53"], "human")
    assert genes.symbol_pairs([a.rows, b.rows]) == {}
    mixed = genes.harmonise(["TP53", "ENSG00000141510"], [None, None], [None, None], "human")
    rekeyed = genes.rekey_by_symbol(mixed.rows, genes.symbol_pairs([a.rows]))
    assert rekeyed.new_ids == {} and [r for r, _ in rekeyed.remarks] == ["gene_collision"]


def test_gene_ids_travel_as_keys_and_hash_back_exactly():
    """Versioned ids, a case collision keyed by its id, a dropped empty name and 10x symbols all round-trip."""
    csv_names = ["ACTB", "ENSG00000141510.12", "actb", "", "Gapdh"] + [f"GENE{i:05d}" for i in range(3000)]
    csv = genes.harmonise(csv_names, [None] * len(csv_names), [None] * len(csv_names), "Homo sapiens")
    tenx_ids, tenx_symbols = ["ENSG00000075624", "ENSG00000111640", "ENSG00000999999"], ["ACTB", "GAPDH", "ACTB"]
    tenx = genes.harmonise(tenx_ids, tenx_ids, tenx_symbols, "human")
    for names, gene_map in ((csv_names, csv), (tenx_ids, tenx)):
        packed = genes.pack_gene_ids(gene_map.gene_ids, "human", names, gene_map.rows)
        assert packed is not None
        assert np.array_equal(genes.unpack_gene_ids("human", names, packed), gene_map.gene_ids)
    assert (csv.gene_ids == -1).sum() >= 1  # the empty name (and the dropped case duplicate) stay dropped
    packed = genes.pack_gene_ids(csv.gene_ids, "human", csv_names, csv.rows)
    assert len(packed) < csv.gene_ids.nbytes / 50  # names that are their own keys travel as empty entries


def test_gene_ids_that_their_keys_do_not_give_back_are_not_packed():
    names = ["ACTB", "TP53"]
    gene_map = genes.harmonise(names, [None, None], [None, None], "human")
    assert genes.pack_gene_ids(gene_map.gene_ids, "mouse", names, gene_map.rows) is None  # another species' hashes
    other = genes.harmonise(["MYC", "TP53"], [None, None], [None, None], "human")
    assert genes.pack_gene_ids(gene_map.gene_ids, "human", names, other.rows) is None  # a key not in the rows
