"""The Delta layer: files written by tasks, one commit per table, replacement on re-ingest, races."""
from __future__ import annotations

import multiprocessing as mp

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from stlake.lake import schemas, tables


def expression_rows(slide: str, n: int, run: str = "r1") -> pa.Table:
    return pa.table({
        "slide_id": [slide] * n, "spot_id": [f"s{i}" for i in range(n)], "technology": ["Visium"] * n,
        "gene_ids": [[1, 5]] * n, "counts": [[2, 3]] * n, "total_counts": [5] * n, "n_genes": [2] * n,
        "run_id": [run] * n,
    }, schema=schemas.EXPRESSION)


def test_commit_creates_table_readable_by_delta_rs(tmp_path):
    lake = str(tmp_path)
    files = tables.write_data_files(lake, "expression", expression_rows("a", 3), "t")
    assert tables.commit(lake, "expression", files, run_id="r1") == 0
    table = DeltaTable(tables.table_uri(lake, "expression"))
    assert table.protocol().min_reader_version == 1 and table.protocol().min_writer_version == 2
    rows = pa.table(table.to_pyarrow_table())
    assert rows.num_rows == 3 and rows.column("counts").to_pylist()[0] == [2, 3]
    actions = tables.add_actions(table)
    assert actions.column("min.slide_id").to_pylist() == ["a"]


def test_reingest_replaces_rows_of_that_slide_only(tmp_path):
    lake = str(tmp_path)
    first = tables.write_data_files(lake, "expression", expression_rows("a", 3), "1a")
    first += tables.write_data_files(lake, "expression", expression_rows("b", 2), "1b")
    tables.commit(lake, "expression", first, replace_slides={"a", "b"})
    again = tables.write_data_files(lake, "expression", expression_rows("a", 4, "r2"), "2a")
    tables.commit(lake, "expression", again, replace_slides={"a"})
    rows = tables.read_table(lake, "expression")
    per_slide = {s: rows.column("slide_id").to_pylist().count(s) for s in ("a", "b")}
    assert per_slide == {"a": 4, "b": 2}


def test_mixed_file_is_rewritten_without_the_replaced_slide(tmp_path):
    lake = str(tmp_path)
    mixed = pa.concat_tables([expression_rows("a", 2), expression_rows("b", 2)])
    tables.commit(lake, "expression", tables.write_data_files(lake, "expression", mixed, "m"))
    tables.commit(lake, "expression", tables.write_data_files(lake, "expression", expression_rows("a", 1), "n"),
                  replace_slides={"a"})
    rows = tables.read_table(lake, "expression").column("slide_id").to_pylist()
    assert sorted(rows) == ["a", "b", "b"]


def test_uncommitted_files_are_invisible(tmp_path):
    lake = str(tmp_path)
    tables.commit(lake, "expression", tables.write_data_files(lake, "expression", expression_rows("a", 2), "c"))
    tables.write_data_files(lake, "expression", expression_rows("z", 5), "orphan")
    assert tables.read_table(lake, "expression").num_rows == 2
    assert len(tables.active_files(lake, "expression")) == 1


def _replace_worker(lake: str, slide: str, n: int) -> None:
    files = tables.write_data_files(lake, "expression", expression_rows(slide, n), slide)
    tables.commit(lake, "expression", files, replace_slides={slide})


def test_concurrent_writers_neither_lose_nor_duplicate(tmp_path):
    lake = str(tmp_path)
    tables.commit(lake, "expression", tables.write_data_files(lake, "expression", expression_rows("base", 1), "b"))
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_replace_worker, args=(lake, slide, n))
               for slide, n in (("a", 3), ("b", 4), ("a", 3), ("c", 5))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    slides = tables.read_table(lake, "expression").column("slide_id").to_pylist()
    assert {s: slides.count(s) for s in set(slides)} == {"base": 1, "a": 3, "b": 4, "c": 5}


def test_overwrite_small_table_merges(tmp_path):
    lake = str(tmp_path)

    def build(rows):
        return pa.table({"gene_id": [1, 2], "species": ["human"] * 2, "gene_key": ["A", "B"],
                         "symbol": ["A", "B"], "ensembl_id": [None, None]}, schema=schemas.GENES)

    v0 = tables.overwrite_small_table(lake, "genes", build)
    v1 = tables.overwrite_small_table(lake, "genes", build)
    assert v0 == v1 == 0  # nothing changed: no new commit
    assert tables.read_table(lake, "genes").num_rows == 2


def test_file_stats_cover_scalar_columns():
    stats = tables.file_stats(expression_rows("a", 2))
    assert '"slide_id": "a"' in stats and "gene_ids" not in stats


@pytest.mark.parametrize("name", sorted(schemas.TABLES))
def test_every_schema_is_a_valid_delta_schema(name):
    from deltalake import Schema
    assert Schema.from_arrow(schemas.TABLES[name])
