"""Lake upkeep: vacuum, optimize, history (real Delta tables, no Spark), and incremental ``pairs`` (Spark)."""
from __future__ import annotations

import logging
from dataclasses import replace

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from stlake.cli import main
from stlake.derived import pairs as pairs_mod
from stlake.lake import lineage, storage, tables, upkeep
from stlake.testing import lake as tl

SLIDES = [tl.FakeSlide("u0", 0, base_spots=20), tl.FakeSlide("u1", 1, base_spots=15)]
SOURCES = pairs_mod.SOURCE_TABLES


def reingested_lake(root) -> str:
    """Two slides from run r1, then ``u0`` ingested again (more spots) by run r2."""
    lake = str(root / "lake")
    tl.write_sources(lake, SLIDES, run_id="r1")
    tl.write_sources(lake, [replace(SLIDES[0], variant=3)], run_id="r2")
    return lake


def parquet_glob_rows(lake: str, table: str) -> int:
    """Rows a plain Parquet reader of the table's folder sees (every file, snapshot or not)."""
    return ds.dataset(tables.table_uri(lake, table), format="parquet", exclude_invalid_files=True).count_rows()


def delta_rows(lake: str, table: str) -> int:
    return tables.read_table(lake, table, columns=["slide_id"]).num_rows


def sorted_rows(lake: str, table: str) -> pa.Table:
    return tables.read_table(lake, table).sort_by([("slide_id", "ascending"), ("spot_id", "ascending")])


def test_vacuum_after_a_reingest_makes_a_parquet_glob_agree_with_delta(tmp_path, capsys):
    lake = reingested_lake(tmp_path)
    for table in SOURCES:
        assert parquet_glob_rows(lake, table) > delta_rows(lake, table)  # replaced files still on disk

    assert main(["vacuum", "--lake", lake, "--retention", "0"]) == 3  # refused: shorter than 7 days
    assert "--force" in capsys.readouterr().err
    assert main(["vacuum", "--lake", lake, "--retention", "0", "--force", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert parquet_glob_rows(lake, "spots") > delta_rows(lake, "spots")  # a dry run deletes nothing
    assert main(["vacuum", "--lake", lake]) == 0  # the default 7 days keeps everything this young
    assert parquet_glob_rows(lake, "spots") > delta_rows(lake, "spots")

    assert main(["vacuum", "--lake", lake, "--retention", "0", "--force"]) == 0
    for table in SOURCES:
        assert parquet_glob_rows(lake, table) == delta_rows(lake, table), table
    assert delta_rows(lake, "spots") == 35 + 3


def test_vacuum_parses_retention_and_refuses_a_missing_lake(tmp_path, capsys):
    assert [upkeep.parse_retention(t) for t in ("7d", "36h", "2w", "0", "12")] == [168, 36, 336, 0, 12]
    with pytest.raises(ValueError):
        upkeep.parse_retention("7 days ago")
    assert main(["vacuum", "--lake", str(tmp_path / "none")]) == 3
    assert main(["vacuum", "--lake", str(tmp_path), "--retention", "soon"]) == 3
    err = capsys.readouterr().err
    assert "no Delta table" in err and "invalid retention" in err and "Traceback" not in err


def split_slide(lake: str, slide: tl.FakeSlide, parts: int, run_id: str) -> None:
    """Commit one slide's spots as ``parts`` small files (as several tile units would write them)."""
    rows = tl.source_tables(slide, run_id=run_id)["spots"]
    step = -(-rows.num_rows // parts)
    files = [tables.write_data_file(lake, "spots", rows.slice(i, step), f"{run_id}-{slide.slide_id}", i // step)
             for i in range(0, rows.num_rows, step)]
    tables.commit(lake, "spots", files, replace_slides={slide.slide_id}, run_id=run_id)


def test_optimize_compacts_a_slides_files_in_one_commit_rows_unchanged(tmp_path, capsys):
    lake = str(tmp_path / "lake")
    tl.write_sources(lake, SLIDES, run_id="r1")
    split_slide(lake, SLIDES[0], 4, "r2")
    split_slide(lake, SLIDES[1], 3, "r3")
    before, version = sorted_rows(lake, "spots"), tables.open_table(lake, "spots").version()
    files_before = upkeep.slide_files(tables.open_table(lake, "spots"))
    assert [len(files_before[s.slide_id]) for s in SLIDES] == [4, 3]

    assert main(["optimize", "--lake", lake, "--slide", "u0"]) == 0
    assert "1 slides, 4 -> 1 files" in capsys.readouterr().out
    table = tables.open_table(lake, "spots")
    assert table.version() == version + 1  # one commit
    after = upkeep.slide_files(table)
    assert len(after["u0"]) == 1 and after["u1"] == files_before["u1"]  # the other slide untouched
    assert sorted_rows(lake, "spots").equals(before)
    actions = tables.add_actions(table)
    assert actions.column("min.slide_id").to_pylist() == actions.column("max.slide_id").to_pylist()

    done = upkeep.optimize_lake(lake, target_bytes=1)  # tiny target: nothing to merge
    assert all(d.version is None for d in done)
    done = {d.table: d for d in upkeep.optimize_lake(lake)}
    assert done["spots"].slides == ["u1"] and done["spots"].rows == SLIDES[1].n_spots
    assert done["expression"].version is None  # already one file per slide
    assert sorted_rows(lake, "spots").equals(before)
    assert lineage.slide_fingerprints(lake, "spots", version) == lineage.slide_fingerprints(lake, "spots")


def test_optimize_leaves_out_a_slide_reingested_meanwhile(tmp_path):
    lake = str(tmp_path / "lake")
    tl.write_sources(lake, SLIDES, run_id="r1")
    split_slide(lake, SLIDES[0], 3, "r2")
    original = upkeep.rewrite_slide

    def rewrite_then_reingest(*args, **kwargs):
        written = original(*args, **kwargs)
        split_slide(lake, replace(SLIDES[0], variant=1), 2, "r3")  # lands between the plan and the commit
        return written

    upkeep.rewrite_slide = rewrite_then_reingest
    try:
        done = upkeep.optimize_table(lake, "spots")
    finally:
        upkeep.rewrite_slide = original
    assert done.version is None and done.slides == []
    rows = tables.read_table(lake, "spots", columns=["slide_id", "run_id"]).to_pylist()
    assert {r["run_id"] for r in rows if r["slide_id"] == "u0"} == {"r3"}
    assert parquet_glob_rows(lake, "spots") == delta_rows(lake, "spots") + 20 + 20  # r1, r2 files: no orphans


def test_history_lists_versions_runs_operations_and_rows(tmp_path, capsys):
    lake = reingested_lake(tmp_path)
    upkeep.vacuum_lake(lake, 0, force=True, run_id="v1")
    history = upkeep.table_history(lake, "spots")
    assert [(h.version, h.run_id, h.stlake_operation) for h in history[:2]] == [(0, "r1", "ingest"),
                                                                                (1, "r2", "ingest")]
    assert [h.rows for h in history] == [35, 38, 38, 38]
    assert [h.operation for h in history[2:]] == ["VACUUM START", "VACUUM END"] and history[3].run_id == "v1"
    assert main(["history", "--lake", lake, "--table", "spots", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "r2" in out and "vacuum" in out and " r1 " not in out
    assert main(["history", "--lake", lake]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in ("genes", "spots", "slides"))


def test_pairs_rebuild_only_changed_slides_and_the_stream_warns_when_stale(spark, tmp_path, caplog, capsys):
    from stlake.stream import StreamSpec
    from stlake.stream.reader import check_pairs_fresh
    lake = str(tmp_path / "lake")
    tl.write_sources(lake, SLIDES, run_id="r1")
    pairs_mod.build_pairs(spark, lake, run_id="p1", incremental=True)  # no pairs yet: full build
    assert pairs_mod.recorded_sources(lake) == lineage.current_versions(lake, SOURCES)
    assert pairs_mod.stale_slides(lake) == set()
    first = upkeep.slide_files(tables.open_table(lake, "pairs"))
    version = tables.open_table(lake, "pairs").version()
    assert pairs_mod.build_pairs(spark, lake, incremental=True) == version  # nothing changed: no commit
    assert main(["pairs", "--lake", lake]) == 0  # decided before Spark
    assert capsys.readouterr().out.strip() == f"pairs: version {version}, up to date (no slide's rows changed)"

    upkeep.optimize_lake(lake, target_bytes=1)  # commits that change no rows do not make pairs stale
    tl.write_sources(lake, [replace(SLIDES[0], variant=2)], run_id="r2")
    assert pairs_mod.stale_slides(lake) == {"u0"}
    spec = StreamSpec(lake=lake)
    with caplog.at_level(logging.WARNING, logger="stlake.stream.reader"):
        check_pairs_fresh(spec, version)
    assert f"older than {'/'.join(SOURCES)} for 1 slides (u0)" in caplog.text
    with pytest.raises(pairs_mod.StalePairs):
        check_pairs_fresh(replace(spec, strict=True), version)
    check_pairs_fresh(StreamSpec(lake=lake, slide_ids=["u1"], strict=True), version)  # u1 is fresh
    capsys.readouterr()
    assert main(["stream", "--lake", lake, "--strict"]) == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stlake stream: `pairs` in {lake} is older than {'/'.join(SOURCES)} for 1 slides (u0); "
        "rebuild it with `stlake pairs`"]

    assert pairs_mod.build_pairs(spark, lake, run_id="p2", incremental=True) == version + 1
    second = upkeep.slide_files(tables.open_table(lake, "pairs"))
    assert second["u1"] == first["u1"] and second["u0"] != first["u0"]  # only u0 rebuilt
    assert pairs_mod.stale_slides(lake) == set()
    rows = sorted_rows(lake, "pairs")
    expected = [tl.source_tables(s)["expression"] for s in (replace(SLIDES[0], variant=2), SLIDES[1])]
    assert rows.select(["spot_id", "counts"]).to_pylist() == [
        {"spot_id": r["spot_id"], "counts": r["counts"]} for part in expected for r in part.to_pylist()]
    check_pairs_fresh(replace(spec, strict=True), tables.open_table(lake, "pairs").version())


def test_a_partial_pairs_build_keeps_the_old_record_while_other_slides_are_stale(spark, tmp_path):
    lake = str(tmp_path / "lake")
    tl.write_sources(lake, SLIDES, run_id="r1")
    pairs_mod.build_pairs(spark, lake, run_id="p1")
    recorded = pairs_mod.recorded_sources(lake)
    tl.write_sources(lake, [replace(s, variant=1) for s in SLIDES], run_id="r2")
    pairs_mod.build_pairs(spark, lake, run_id="p2", slide_ids=["u0"])
    assert pairs_mod.recorded_sources(lake) == recorded  # u1 is still stale: the old record stays
    assert pairs_mod.stale_slides(lake) == {"u0", "u1"}  # (u0 is rebuilt again next time: conservative)


def test_vacuum_optimize_and_history_on_s3(s3_env):
    lake = "s3://lake/upkeep"
    tl.write_sources(lake, SLIDES, run_id="r1")
    split_slide(lake, replace(SLIDES[0], variant=3), 3, "r2")
    fs, root = storage.filesystem(tables.table_uri(lake, "spots"))
    on_s3 = ds.dataset(root, filesystem=fs, format="parquet", exclude_invalid_files=True)
    assert on_s3.count_rows() == 20 + 23 + 15 and delta_rows(lake, "spots") == 23 + 15
    assert upkeep.optimize_lake(lake, ["u0"])[1].files_after == 1
    assert sorted(v.table for v in upkeep.vacuum_lake(lake, 0, force=True) if v.files) == ["spots"]
    on_s3 = ds.dataset(root, filesystem=fs, format="parquet", exclude_invalid_files=True)
    assert on_s3.count_rows() == delta_rows(lake, "spots") == 23 + 15
    assert [h.stlake_operation for h in upkeep.table_history(lake, "spots")] == [
        "ingest", "ingest", "optimize", "vacuum", "vacuum"]
