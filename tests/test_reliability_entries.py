"""Reliability corpus, entries: slide ids never shape a path, one bad entry never kills the run.

Classes 1, 2 and two items of 7 of the reliability issue. One manifest run holds every bad manifest
entry next to the good slides (each entry refused with its reason, the good slides byte-identical to a
clean run, nothing written outside the lake); one scan run holds a symbolic-link loop. Entries that
need no Spark (manifests without columns, unreadable manifests, unreachable S3 rows, panel names, run
ids, data file names, failed commits) and the command line's run-level errors are tested on their own.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import corpus
from corpus import Case
from stlake.derived.hvg import compute_hvg, write_panel
from stlake.ingestion import driver
from stlake.ingestion.discover import SHOWN_ID_LENGTH, find_slides, no_slides_message
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers import layout_names
from stlake.ingestion.records import EntryRejection, Rejection, RunError, SourceNotFound
from stlake.lake import schemas, storage, tables

#: Where the deepest traversal id would have written (outside every test folder).
ESCAPE_PREFIX = "stlake-reliability-escape"
#: A committed data file: straight in its table folder, named by a hash (tables.data_file_name).
DATA_FILE = re.compile(r"part-[0-9a-f]{16}-\d{3}-[0-9a-f]{12}\.zstd\.parquet")
FIRST_CASE_ENTRY = len(corpus.GOOD_SLIDES) + 1  # manifest entry number of the first case's row


# ---------------------------------------------------------------- building entries

def visium_entry(slide_id: str, **fields: str):
    """An entry that is the good ``visium_1`` slide but for ``slide_id`` and ``fields`` (read-only use)."""
    def build(folder: Path, dataset: dict) -> list[dict[str, str]]:
        [good] = corpus.good_rows(dataset, ["visium_1"])
        return [{k: v for k, v in {**good, "slide_id": slide_id, **fields}.items() if v is not None}]
    return build


def bad_id(case_id: str, slide_id: str, reason: str = "invalid_slide_id") -> Case:
    """A case whose only fault is its slide id; its reject row names the id as given (long ones shortened)."""
    shown = slide_id if len(slide_id) <= SHOWN_ID_LENGTH else slide_id[:SHOWN_ID_LENGTH] + "..."
    return Case(case_id, visium_entry(slide_id), reason, slide_id=shown)


def missing_root(folder: Path, dataset: dict) -> list[dict[str, str]]:
    return [corpus.entry("missing_root", "visium", path=str(folder / "no_such_slide"))]


def missing_counts(folder: Path, dataset: dict) -> list[dict[str, str]]:
    roles = corpus.stimage_files(dataset, "stimage_visium_1", folder)
    os.remove(roles["counts"])
    return [corpus.entry("missing_counts", "stimage", **roles)]


def no_paths(folder: Path, dataset: dict) -> list[dict[str, str]]:
    return [corpus.entry("no_paths", "visium")]


def duplicated(folder: Path, dataset: dict) -> list[dict[str, str]]:
    """Two otherwise good entries with one id: both are refused."""
    return visium_entry("twice")(folder, dataset) + [corpus.entry("twice", "st", path=str(
        corpus.copy_slide(dataset, "st_1", folder / "st_copy")))]


def duplicated_with_bad_layout(folder: Path, dataset: dict) -> list[dict[str, str]]:
    """The first entry of an id is broken (unknown layout): the second is refused as a duplicate still."""
    return visium_entry("twice_bad", layout="xenium")(folder, dataset) + visium_entry("twice_bad")(folder, dataset)


def stimage_traversal(folder: Path, dataset: dict) -> list[dict[str, str]]:
    """An STimage entry builds its file paths from its id: a traversal id must be refused before that."""
    [good] = corpus.good_rows(dataset, ["stimage_visium_1"])
    return [{**good, "slide_id": "../visium/visium_1"}]


DEEP_TRAVERSAL = "../" * 40 + f"tmp/{ESCAPE_PREFIX}"
PLACEHOLDER_CASES = [  # first in CASES: their reject rows are named by entry number
    Case("empty_id", visium_entry(""), "manifest_invalid", slide_id=f"manifest:entry-{FIRST_CASE_ENTRY}"),
    Case("blank_id", visium_entry("   "), "manifest_invalid", slide_id=f"manifest:entry-{FIRST_CASE_ENTRY + 1}"),
]
ID_CASES = [
    bad_id("traversal_relative", "../../../../tmp/x"),
    bad_id("traversal_deep", DEEP_TRAVERSAL),
    bad_id("traversal_absolute", f"/tmp/{ESCAPE_PREFIX}-absolute"),
    bad_id("traversal_backslash", "..\\..\\..\\escape"),
    bad_id("traversal_dots", ".."),
    bad_id("single_dot", "."),
    bad_id("slash_subfolder", "batch/slide_1"),
    bad_id("leading_dot", ".hidden"),
    bad_id("leading_dash", "-rf"),
    bad_id("too_long", "s" * 129),
    bad_id("far_too_long", "L" * 5000),
    bad_id("newline", "two\nlines"),
    bad_id("space", "slide 1"),
    bad_id("non_ascii", "słajd"),
    bad_id("uri", "s3://bucket/slide"),
    Case("stimage_traversal", stimage_traversal, "invalid_slide_id", slide_id="../visium/visium_1"),
]
ENTRY_CASES = [
    Case("unknown_layout", visium_entry("unknown_layout", layout="xenium"), "manifest_invalid"),
    Case("missing_layout", visium_entry("missing_layout", layout=""), "manifest_invalid"),
    Case("unknown_technology", visium_entry("unknown_technology", technology="Xenium"), "manifest_invalid"),
    Case("no_paths", no_paths, "manifest_invalid"),
    Case("missing_root", missing_root, "source_missing"),
    Case("missing_counts", missing_counts, "expression_missing"),
    Case("duplicate_ids", duplicated, "duplicate_slide_id", slide_id="twice"),
    Case("duplicate_after_bad_entry", duplicated_with_bad_layout, "duplicate_slide_id", slide_id="twice_bad"),
]
CASES = PLACEHOLDER_CASES + ID_CASES + ENTRY_CASES


@pytest.fixture(scope="module")
def run(spark, synthetic_dataset, tmp_path_factory) -> corpus.CorpusRun:
    escaped = set(glob.glob(f"/tmp/{ESCAPE_PREFIX}*"))
    result = corpus.run_corpus(spark, tmp_path_factory.mktemp("reliability_entries"), synthetic_dataset, CASES)
    assert set(glob.glob(f"/tmp/{ESCAPE_PREFIX}*")) == escaped, "a traversal id wrote outside the test folder"
    return result


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(run, case):
    corpus.assert_case(run, case)
    [row, *_] = [r for r in run.rejects_of(case.rejected_id) if r["reason"] == case.reason]
    assert row["stage"] == ("read" if case.id == "missing_counts" else "discover")
    assert row["detail"] and "\n" not in row["detail"]
    if row["stage"] == "discover":
        assert "manifest.csv entry" in row["detail"]
        assert run.report.rejected[case.rejected_id] in {case.reason, "manifest_invalid"}


def test_good_slides_identical(run, corpus_baseline):
    corpus.assert_good_slides_identical(run, corpus_baseline)


def test_nothing_written_outside_lake(run):
    assert run.written_outside_lake == []


def test_lake_holds_only_hashed_data_files(run):
    """No id made a sub-folder or a file name: every table folder holds its Delta log and hashed files."""
    for table in schemas.TABLES:
        folder = run.lake / table
        if not folder.exists():
            continue
        for name in os.listdir(folder):
            assert name == "_delta_log" or DATA_FILE.fullmatch(name), f"{table}/{name}"
        assert tables.read_table(str(run.lake), table) is not None  # every table stays readable


def test_duplicates_refuse_every_entry_and_name_all(run):
    rows = run.rejects_of("twice")
    assert sorted(r["reason"] for r in rows) == ["duplicate_slide_id"] * 2
    assert len({r["source_uri"] for r in rows}) == 2
    for row in rows:
        assert "entry" in row["detail"] and all(r["source_uri"] in row["detail"] for r in rows)
    assert sorted(r["reason"] for r in run.rejects_of("twice_bad")) == ["duplicate_slide_id", "manifest_invalid"]


def test_unknown_layout_and_technology_name_what_is_allowed(run):
    [layout] = run.rejects_of("unknown_layout")
    assert "xenium" in layout["detail"] and all(name in layout["detail"] for name in layout_names())
    [technology] = run.rejects_of("unknown_technology")
    assert "Xenium" in technology["detail"] and "Visium" in technology["detail"]


# ---------------------------------------------------------------- a scan with a symbolic-link loop

SCAN_SLIDES = ("st_1", "visiumhd_1")


@pytest.fixture(scope="module")
def scan_run(spark, synthetic_dataset, tmp_path_factory) -> dict:
    """A scanned root: two good slide copies, ``loop -> .``, ``nest/up -> ..`` and a folder with a bad name."""
    root = tmp_path_factory.mktemp("reliability_scan")
    scanned, lake = root / "raw", root / "lake"
    for slide in SCAN_SLIDES:
        corpus.copy_slide(synthetic_dataset, slide, scanned / slide)
    corpus.copy_slide(synthetic_dataset, "st_1", scanned / "bad id")
    os.symlink(".", scanned / "loop")
    (scanned / "nest").mkdir()
    os.symlink("..", scanned / "nest" / "up")
    before = corpus.files_under(root)
    report = driver.ingest(spark, IngestOptions(source=str(scanned), lake=str(lake)))
    outside = sorted(p for p in corpus.files_under(root) - before if not p.startswith(str(lake) + os.sep))
    return {"lake": lake, "report": report, "outside": outside, "rejects": corpus.read_rows(lake, "rejects")}


def test_scan_follows_no_link_into_a_folder_it_has_seen(scan_run):
    report = scan_run["report"]
    assert report.landed == sorted(SCAN_SLIDES)
    assert report.rejected == {"bad id": "invalid_slide_id"}
    assert [(r["slide_id"], r["stage"], r["reason"]) for r in scan_run["rejects"] if r["severity"] == "error"] == [
        ("bad id", "discover", "invalid_slide_id")]
    assert scan_run["outside"] == []


def test_scanned_slides_identical(scan_run, corpus_baseline):
    """Tiles match the clean run byte for byte (expression gene ids depend on the manifest's species)."""
    assert corpus.landed(scan_run["lake"], "spots", SCAN_SLIDES).equals(
        corpus.landed(corpus_baseline, "spots", SCAN_SLIDES))
    scanned = corpus.landed(scan_run["lake"], "expression", SCAN_SLIDES)
    clean = corpus.landed(corpus_baseline, "expression", SCAN_SLIDES)
    assert scanned.select(["slide_id", "spot_id", "total_counts"]).equals(
        clean.select(["slide_id", "spot_id", "total_counts"]))


# ---------------------------------------------------------------- discovery without Spark

def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def good_visium(dataset: dict) -> str:
    return corpus.good_rows(dataset, ["visium_1"])[0]["path"]


def reasons(found) -> list[tuple[str, str]]:
    return [(r.slide_id, r.rejection.reason) for r in found.rejected]


def test_manifest_without_layout_column(tmp_path, synthetic_dataset):
    path = good_visium(synthetic_dataset)
    found = find_slides(write(tmp_path / "m.csv", f"slide_id,path\na,{path}\nb,{path}\n"))
    assert found.refs == [] and reasons(found) == [("a", "manifest_invalid"), ("b", "manifest_invalid")]
    assert "no layout" in found.rejected[0].rejection.detail


def test_manifest_without_slide_id_column_uses_entry_placeholders(tmp_path, synthetic_dataset):
    found = find_slides(write(tmp_path / "m.csv", f"layout,path\nvisium,{good_visium(synthetic_dataset)}\n"))
    assert reasons(found) == [("manifest:entry-1", "manifest_invalid")]


def test_csv_rows_blank_or_with_extra_values(tmp_path, synthetic_dataset):
    path = good_visium(synthetic_dataset)
    text = f"slide_id,layout,path\nok,visium,{path}\n,,\nextra,visium,{path},surplus\n"
    found = find_slides(write(tmp_path / "m.csv", text))
    assert [r.slide_id for r in found.refs] == ["ok"] and reasons(found) == [("extra", "manifest_invalid")]


def test_yaml_entry_that_is_not_a_mapping(tmp_path, synthetic_dataset):
    text = f"slides:\n  - just a string\n  - {{slide_id: ok, layout: visium, path: {good_visium(synthetic_dataset)}}}\n"
    found = find_slides(write(tmp_path / "m.yaml", text))
    assert [r.slide_id for r in found.refs] == ["ok"] and reasons(found) == [("manifest:entry-1", "manifest_invalid")]


@pytest.mark.parametrize("name, content", [
    ("latin1.csv", "slide_id,layout,path\nsl\xefde,visium,x\n".encode("latin-1")),
    ("broken.yaml", "slides: [unclosed"),
    ("scalar.yaml", "slides: 3"),
])
def test_unreadable_manifest_is_one_run_error(tmp_path, name, content):
    with pytest.raises(RunError) as error:
        find_slides(write(tmp_path / name, content))
    assert "\n" not in str(error.value) and name in str(error.value)


def test_missing_source_and_header_only_manifest(tmp_path):
    with pytest.raises(SourceNotFound, match="does not exist"):
        find_slides(str(tmp_path / "nothing.csv"))
    with pytest.raises(SourceNotFound, match="not a folder or a manifest"):
        find_slides(write(tmp_path / "notes.txt", "hello"))
    found = find_slides(write(tmp_path / "m.csv", "slide_id,layout,path\n"))
    assert found.empty and "no slides found" in no_slides_message(found.source)
    (tmp_path / "empty").mkdir()
    assert find_slides(str(tmp_path / "empty")).empty


def test_unreachable_s3_row_is_one_refused_entry(tmp_path, synthetic_dataset, monkeypatch):
    """An ``s3://`` row whose endpoint has nothing listening: refused, the local row is found."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    storage._s3_filesystem.cache_clear()
    text = f"slide_id,layout,path\nfar,visium,s3://stlake-nowhere/visium_1\nnear,visium,{good_visium(synthetic_dataset)}\n"
    found = find_slides(write(tmp_path / "m.csv", text))
    assert [r.slide_id for r in found.refs] == ["near"] and reasons(found) == [("far", "source_unreachable")]
    storage._s3_filesystem.cache_clear()


def closed_port() -> int:
    """A loopback port with nothing listening."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- names that could reach a path

@pytest.mark.parametrize("name", ["../../../escape", f"/tmp/{ESCAPE_PREFIX}-panel", "a/b", "..\\x", "x" * 200, " "])
def test_panel_names_and_run_ids_are_checked_before_any_work(spark, tmp_path, name):
    lake = str(tmp_path / "lake")
    with pytest.raises(ValueError, match="panel name"):
        compute_hvg(spark, lake, name=name)
    with pytest.raises(ValueError, match="panel name"):
        write_panel(lake, name, schemas.GENE_PANELS.empty_table())
    with pytest.raises(ValueError, match="run id"):
        compute_hvg(spark, lake, run_id=name)
    with pytest.raises(ValueError, match="run id"):
        driver.ingest(spark, IngestOptions(source=str(tmp_path), lake=lake), run_id=name)
    assert list(tmp_path.iterdir()) == [] and not glob.glob(f"/tmp/{ESCAPE_PREFIX}*")


@pytest.mark.parametrize("tag", ["../../../../escape", "/abs/path", "a/b/c", "..\\..\\x", "é" * 300])
def test_data_file_names_hold_a_hash_of_the_tag(tmp_path, tag):
    rows = pa.Table.from_pylist([{"run_id": "r", "slide_id": tag, "stage": "discover", "severity": "error",
                                  "reason": "x", "detail": "y"}], schemas.REJECTS)
    [written] = tables.write_data_files(str(tmp_path / "lake"), "rejects", rows, tag)
    assert DATA_FILE.fullmatch(written.path)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()] == [
        Path("lake", "rejects", written.path)]


# ---------------------------------------------------------------- failed commits: which advice

def refused_entry() -> list[EntryRejection]:
    return [EntryRejection("x", None, Rejection("discover", "manifest_invalid", "no layout given"))]


def test_commit_to_a_corrupt_log_says_a_rerun_cannot_repair_it(tmp_path):
    lake = str(tmp_path / "lake")
    options = IngestOptions(source=str(tmp_path), lake=lake)
    driver.commit_run(lake, [], options, "r1", refused_entry())
    [commit_file] = glob.glob(f"{lake}/rejects/_delta_log/*.json")
    Path(commit_file).write_text("{not json")
    with pytest.raises(driver.CommitFailed) as failure:
        driver.commit_run(lake, [], options, "r2", refused_entry())
    message = str(failure.value)
    assert failure.value.health == "log_unreadable" and "\n" not in message
    assert "a re-run fails the same way" in message and f"{lake}/rejects/_delta_log" in message
    assert "Re-run the job to land" not in message


def test_commit_to_unreachable_storage_says_rerun_when_it_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    storage._s3_filesystem.cache_clear()
    lake = "s3://stlake-nowhere/lake"
    with pytest.raises(driver.CommitFailed) as failure:
        driver.commit_run(lake, [], IngestOptions(source=str(tmp_path), lake=lake), "r1", refused_entry())
    storage._s3_filesystem.cache_clear()
    assert failure.value.health == "unreachable"
    assert "storage does not answer" in str(failure.value) and "re-run the job once it does" in str(failure.value)


# ---------------------------------------------------------------- the command line: one line, an exit code

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stlake.cli", "ingest", *args], capture_output=True, text=True,
                          timeout=120)


def cli_cases(root: Path) -> dict[str, tuple[list[str], int, str]]:
    """Case id -> (arguments, exit code, words the one stderr line must hold)."""
    write(root / "afile", "not a folder")
    write(root / "header_only.csv", "slide_id,layout,path\n")
    (root / "empty").mkdir()
    write(root / "latin1.csv", "slide_id,layout,path\nsl\xefde,visium,x\n".encode("latin-1"))
    lake = str(root / "lake")
    return {
        "missing_source": (["--source", str(root / "nothing"), "--lake", lake], 3, "does not exist"),
        "lake_is_a_file": (["--source", str(root / "empty"), "--lake", str(root / "afile")], 3, "is a file"),
        "lake_below_a_file": (["--source", str(root / "empty"), "--lake", str(root / "afile" / "lake")], 3,
                              "which is a file"),
        "header_only_manifest": (["--source", str(root / "header_only.csv"), "--lake", lake], 4, "no slides found"),
        "empty_folder": (["--source", str(root / "empty"), "--lake", lake], 4, "no slides found under"),
        "manifest_not_utf8": (["--source", str(root / "latin1.csv"), "--lake", lake], 3, "not UTF-8"),
    }


CLI_CASES = ("missing_source", "lake_is_a_file", "lake_below_a_file", "header_only_manifest", "empty_folder",
             "manifest_not_utf8")


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_run_level_errors_are_one_line(tmp_path, case):
    args, code, words = cli_cases(tmp_path)[case]
    result = cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("stlake ingest: ") and words in lines[0], lines
    assert result.stdout == "" and not (tmp_path / "lake").exists()
    if code == 4:
        assert all(name in lines[0] for name in layout_names())


def test_manifest_entries_numbered_as_the_corpus_assumes(run):
    """The placeholder cases' rows are the first after the good rows (their ids name the entry number)."""
    with open(run.lake.parent / "manifest.csv", newline="") as handle:
        ids = [row["slide_id"] for row in csv.DictReader(handle)]
    assert ids[FIRST_CASE_ENTRY - 1: FIRST_CASE_ENTRY + 1] == ["", "   "]
