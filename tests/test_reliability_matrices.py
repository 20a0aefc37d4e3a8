"""Reliability corpus, count matrices: bad cells, lines and text are rejected by name, and never quoted.

Classes 6 and 7 of the reliability issue. Each case damages one count matrix of a copied good slide
(STimage dense CSV, Visium 10x HDF5, Visium 10x matrix folder) and plants a recognisable value
(``SECRET-4242``, or a count with ``4242`` in it) where it can. The ``rejects`` row must give the
reason, name the file and the place (line / barcode / dataset), and never contain the planted value.
Text that is not UTF-8 is rejected with ``text_not_utf8``. Cases the corpus cannot reach (the legacy
ST reader reads its counts file before the matrix does) are unit tests at the end.
"""
from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import corpus
from stlake.ingestion import matrices
from stlake.ingestion.matrices.errors import unreadable
from stlake.ingestion.records import ExpressionSource, SlideError

SECRET = b"SECRET-4242"
MARKS = ("SECRET", "4242")  # nothing of a planted value may reach a detail
STIMAGE = "stimage_st_1"
COUNTS = f"{STIMAGE}_count.csv"
H5 = "filtered_feature_bc_matrix.h5"
MTX = "filtered_feature_bc_matrix"

Damage = Callable[[Path], None]


@dataclass(frozen=True)
class Expect:
    """What a case's detail must name: the damaged file and the place in it."""

    file: str
    place: str


# ---------------------------------------------------------------- damaging files

def edit_lines(path: Path, change: Callable[[list[bytes]], None]) -> None:
    """Rewrite a (possibly gzipped) text file after ``change`` edits its lines in place (line n = index n - 1)."""
    data = path.read_bytes()
    zipped = data[:2] == b"\x1f\x8b"
    lines = (gzip.decompress(data) if zipped else data).split(b"\n")
    change(lines)
    text = b"\n".join(lines)
    path.write_bytes(gzip.compress(text, mtime=0) if zipped else text)


def set_field(line: int, field: int, value: bytes, sep: bytes = b",") -> Damage:
    """Replace field ``field`` (0-based) of line ``line`` (1-based) with ``value``."""
    def change(lines: list[bytes]) -> None:
        fields = lines[line - 1].split(sep)
        fields[field] = value
        lines[line - 1] = sep.join(fields)
    return lambda path: edit_lines(path, change)


def drop_last_field(line: int) -> Damage:
    """Line ``line`` loses its last field."""
    def change(lines: list[bytes]) -> None:
        lines[line - 1] = lines[line - 1].rsplit(b",", 1)[0]
    return lambda path: edit_lines(path, change)


def add_field(line: int, value: bytes) -> Damage:
    """Line ``line`` gets one more field."""
    def change(lines: list[bytes]) -> None:
        lines[line - 1] += b"," + value
    return lambda path: edit_lines(path, change)


def keep_lines(count: int) -> Damage:
    """Only the first ``count`` lines remain (0: an empty file)."""
    def damage(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        path.write_bytes(b"".join(line + b"\n" for line in lines[:count]))
    return damage


def gzip_truncated(path: Path) -> None:
    """The file gzipped, then cut to the first half of its compressed bytes."""
    packed = gzip.compress(path.read_bytes(), mtime=0)
    path.write_bytes(packed[:len(packed) // 2])


def h5_data(change: Callable[[np.ndarray], np.ndarray]) -> Damage:
    """The HDF5 matrix's ``data`` dataset replaced by ``change(data)``."""
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as handle:
            data = handle["matrix/data"][:]
            del handle["matrix/data"]
            handle["matrix"].create_dataset("data", data=change(data))
    return damage


def h5_keep_barcodes(share: float) -> Damage:
    """The HDF5 matrix cut to its first ``share`` of barcodes (as a matrix missing some spots would be)."""
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as handle:
            group = handle["matrix"]
            keep = int(len(group["barcodes"]) * share)
            indptr = group["indptr"][:keep + 1]
            cut = {"barcodes": group["barcodes"][:keep], "indptr": indptr, "indices": group["indices"][:indptr[-1]],
                   "data": group["data"][:indptr[-1]], "shape": np.array([group["shape"][0], keep])}
            for name, values in cut.items():
                del group[name]
                group.create_dataset(name, data=values)
    return damage


def rename_spots(lines: list[bytes]) -> None:
    """Every data line's spot id gets a prefix, so no spot of the coordinates has a row."""
    for number in range(1, len(lines)):
        if lines[number]:
            lines[number] = b"renamed-" + lines[number]


def fractional(data: np.ndarray) -> np.ndarray:
    """Float counts with one ``4242.5``."""
    out = data.astype(np.float64)
    out[len(out) // 2] = 4242.5
    return out


def as_strings(data: np.ndarray) -> np.ndarray:
    """Counts as byte strings, one of them the secret."""
    out = np.array([str(v).encode() for v in data], dtype=f"S{len(SECRET)}")
    out[len(out) // 2] = SECRET
    return out


# ---------------------------------------------------------------- building cases

def good_row(dataset: dict, slide: str) -> corpus.Row:
    """The dataset's manifest row of ``slide``."""
    [row] = corpus.good_rows(dataset, [slide])
    return row


def stimage_case(damage: Damage) -> Callable[[Path, dict], list[corpus.Row]]:
    """A copy of the STimage slide whose counts CSV ``damage`` changes."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        roles = corpus.stimage_files(dataset, STIMAGE, folder)
        damage(Path(roles["counts"]))
        good = good_row(dataset, STIMAGE)
        return [corpus.entry(folder.name, "stimage", species=good.get("species", ""), **roles)]
    return build


def visium_case(slide: str, file: str, damage: Damage) -> Callable[[Path, dict], list[corpus.Row]]:
    """A copy of a Visium slide whose matrix file ``file`` (relative to the slide) ``damage`` changes."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        corpus.copy_slide(dataset, slide, folder)
        damage(folder / file)
        return [{**good_row(dataset, slide), "slide_id": folder.name, "path": str(folder)}]
    return build


H5_MISSING = corpus.Case("m_h5_barcodes_missing", visium_case("visium_1", H5, h5_keep_barcodes(0.6)),
                         "spots_without_expression", severity="warning")
CASES = [
    H5_MISSING,
    corpus.Case("m_no_spot_matches", stimage_case(lambda path: edit_lines(path, rename_spots)),
                "spots_without_expression"),
    corpus.Case("m_text_cell", stimage_case(set_field(4, 2, SECRET)), "expression_unreadable"),
    corpus.Case("m_negative", stimage_case(set_field(4, 2, b"-4242")), "negative_counts"),
    corpus.Case("m_float", stimage_case(set_field(4, 2, b"4242.5")), "non_integer_counts"),
    corpus.Case("m_huge", stimage_case(set_field(4, 2, b"42424242424")), "expression_unreadable"),
    corpus.Case("m_too_few_fields", stimage_case(drop_last_field(4)), "expression_unreadable"),
    corpus.Case("m_too_many_fields", stimage_case(add_field(4, SECRET)), "expression_unreadable"),
    corpus.Case("m_latin1_gene", stimage_case(set_field(1, 3, SECRET + b"-GEN\xc9X")), "text_not_utf8"),
    corpus.Case("m_latin1_spot", stimage_case(set_field(4, 0, SECRET + b"-\xc9")), "text_not_utf8"),
    corpus.Case("m_empty_counts", stimage_case(keep_lines(0)), "expression_unreadable"),
    corpus.Case("m_header_only", stimage_case(keep_lines(1)), "expression_unreadable"),
    corpus.Case("m_gzip_truncated", stimage_case(gzip_truncated), "expression_unreadable"),
    corpus.Case("m_h5_fractional", visium_case("visium_1", H5, h5_data(fractional)), "non_integer_counts"),
    corpus.Case("m_h5_strings", visium_case("visium_1", H5, h5_data(as_strings)), "expression_unreadable"),
    corpus.Case("m_mtx_row_out_of_range",
                visium_case("visium_2", f"{MTX}/matrix.mtx.gz", set_field(4, 0, b"994242", b" ")),
                "expression_unreadable"),
    corpus.Case("m_mtx_latin1_feature",
                visium_case("visium_2", f"{MTX}/features.tsv.gz", set_field(6, 1, SECRET + b"\xc9", b"\t")),
                "text_not_utf8"),
]

EXPECT = {
    "m_h5_barcodes_missing": Expect(H5, "spots have no row"),
    "m_no_spot_matches": Expect(COUNTS, "spots have no expression row"),
    "m_text_cell": Expect(COUNTS, "line 4, spot"),
    "m_negative": Expect(COUNTS, "line 4, spot"),
    "m_float": Expect(COUNTS, "line 4, spot"),
    "m_huge": Expect(COUNTS, "line 4, spot"),
    "m_too_few_fields": Expect(COUNTS, "line 4: wrong number of fields"),
    "m_too_many_fields": Expect(COUNTS, "line 4: wrong number of fields"),
    "m_latin1_gene": Expect(COUNTS, "line 1 (header), field 4"),
    "m_latin1_spot": Expect(COUNTS, "line 4, column 1 (spot id)"),
    "m_empty_counts": Expect(COUNTS, "line 1"),
    "m_header_only": Expect(COUNTS, "no data lines"),
    "m_gzip_truncated": Expect(COUNTS, "compressed data ends early"),
    "m_h5_fractional": Expect(H5, "barcode"),
    "m_h5_strings": Expect(H5, "dataset /matrix/data"),
    "m_mtx_row_out_of_range": Expect("matrix.mtx.gz", "line 4, field 1 (feature index): out of range"),
    "m_mtx_latin1_feature": Expect("features.tsv.gz", "line 6, field 2"),
}


def without_paths(detail: str, root: Path) -> str:
    """``detail`` with the run's folder removed (a temporary path is not file content)."""
    return detail.replace(str(root), "")


def assert_content_free(detail: str, root: Path) -> None:
    """No part of a planted value is in ``detail``."""
    text = without_paths(detail, root)
    assert not any(mark in text for mark in MARKS), detail


# ---------------------------------------------------------------- the corpus run

@pytest.fixture(scope="module")
def run(spark, synthetic_dataset, tmp_path_factory):
    return corpus.run_corpus(spark, tmp_path_factory.mktemp("reliability_matrices"), synthetic_dataset, CASES)


def test_every_case_has_expectations():
    assert set(EXPECT) == {case.id for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_rejected_by_name_without_content(run, case):
    corpus.assert_case(run, case)
    row = corpus.case_row(run, case)
    expect = EXPECT[case.id]
    assert expect.file in row["detail"] and expect.place in row["detail"], row["detail"]
    assert_content_free(row["detail"], run.lake.parent)


def test_good_slides_identical(run, corpus_baseline):
    corpus.assert_good_slides_identical(run, corpus_baseline)


def test_nothing_written_outside_the_lake(run):
    assert run.written_outside_lake == []


def test_spots_without_expression_dropped_like_scanpy(run):
    """A matrix missing 40% of the barcodes: those spots are dropped and counted; the rest land whole."""
    slide = H5_MISSING.id
    assert slide in run.report.landed
    [row] = [r for r in corpus.read_rows(run.lake, "slides") if r["slide_id"] == slide]
    spots = {r["spot_id"] for r in corpus.read_rows(run.lake, "spots") if r["slide_id"] == slide}
    expressed = {r["spot_id"] for r in corpus.read_rows(run.lake, "expression") if r["slide_id"] == slide}
    labelled = {r["spot_id"] for r in corpus.read_rows(run.lake, "annotations") if r["slide_id"] == slide}
    assert spots == expressed and labelled <= spots and row["n_spots"] == len(spots) > 0
    assert row["n_spots_without_expression"] == row["n_spots_dropped"] > 0
    [baseline] = [r for r in corpus.read_rows(run.lake, "slides") if r["slide_id"] == "visium_1"]
    assert row["n_spots"] + row["n_spots_without_expression"] == baseline["n_spots"]
    [warning] = [r for r in run.rejects_of(slide) if r["reason"] == "spots_without_expression"]
    assert f"{row['n_spots_without_expression']} of {baseline['n_spots']} spots" in warning["detail"]


def test_require_expression_keeps_the_strict_rule(spark, synthetic_dataset, tmp_path):
    rows = H5_MISSING.build(tmp_path / H5_MISSING.id, synthetic_dataset)
    report = corpus.ingest_manifest(spark, corpus.write_manifest(tmp_path / "manifest.csv", rows), tmp_path / "lake",
                                    require_expression=True)
    assert report.landed == [] and report.rejected == {H5_MISSING.id: "spots_without_expression"}


def test_require_expression_flag():
    from stlake.cli import build_parser, options_from_args
    assert options_from_args(build_parser().parse_args(["ingest", "--source", "x", "--require-expression"])) \
        .require_expression
    assert not options_from_args(build_parser().parse_args(["ingest", "--source", "x"])).require_expression


# ---------------------------------------------------------------- unit cases (no Spark)

def error_of(src: ExpressionSource, chunk_bytes: int = 1 << 30) -> SlideError:
    """The ``SlideError`` of planning and reading every chunk of ``src``."""
    with pytest.raises(SlideError) as caught:
        plan = matrices.plan_expression(src, chunk_bytes)
        for chunk in plan.chunks:
            for _ in matrices.read_chunk(src, plan, chunk):
                pass
    return caught.value


def st_counts(dataset: dict, folder: Path) -> Path:
    """A copy of the synthetic legacy ST slide's gzipped counts TSV."""
    source = Path(good_row(dataset, "st_1")["path"]) / "st_1_counts.tsv.gz"
    return Path(shutil.copy(source, folder / source.name))


def gzip_truncated_packed(path: Path) -> None:
    """An already gzipped file cut to the first half of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_st_tsv_gz_truncated(synthetic_dataset, tmp_path):
    path = st_counts(synthetic_dataset, tmp_path)
    gzip_truncated_packed(path)
    error = error_of(ExpressionSource("st_tsv", str(path)))
    assert error.reason == "expression_unreadable" and path.name in error.detail
    assert "compressed data ends early" in error.detail


def test_st_tsv_latin1_spot_id(synthetic_dataset, tmp_path):
    path = st_counts(synthetic_dataset, tmp_path)
    set_field(5, 0, SECRET + b"x\xc9", b"\t")(path)
    error = error_of(ExpressionSource("st_tsv", str(path)))
    assert error.reason == "text_not_utf8" and "line 5, column 1 (spot id)" in error.detail
    assert_content_free(error.detail, tmp_path)


TEXT_CASES = [  # (id, counts text, reason, place)
    ("quoted_text", b',A,B\ns1,1,0\ns2,"SECRET-4242",3\n', "expression_unreadable", "line 3, spot 's2', column 2"),
    ("blank_line_then_bad", b",A,B\ns1,1,0\n\ns2,0,-4242\n", "negative_counts", "line 4, spot 's2', column 3"),
    ("na_cell", b",A,B\ns1,1,0\ns2,NA,4242\n", "expression_unreadable", "count is empty or NA"),
    ("infinite", b",A,B\ns1,1,0\ns2,inf,4242\n", "non_integer_counts", "count is infinite"),
    ("crlf_fields", b",A,B\r\ns1,1,0\r\ns2,4242\r\n", "expression_unreadable", "line 3: wrong number of fields: 2"),
    ("latin1_cell", b",A,B\ns1,1,0\ns2,4242\xc9,3\n", "text_not_utf8", "line 3, column 2 (gene 'A')"),
    ("header_mismatch", b",A,B\ns1,1,0,4242,SECRET-4242\n", "expression_unreadable", "line 2 has 5"),
]


@pytest.mark.parametrize("case_id, text, reason, place", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_dense_csv_details_name_the_place_only(tmp_path, case_id, text, reason, place):
    path = tmp_path / f"{case_id}.csv"
    path.write_bytes(text)
    error = error_of(ExpressionSource("dense_csv", str(path)))
    assert error.reason == reason and place in error.detail and str(path) in error.detail, error.detail
    assert_content_free(error.detail, tmp_path)


def test_bad_line_number_counts_from_the_file_start_in_any_chunk(tmp_path):
    rows = b"".join(b"s%d,1,2\n" % i for i in range(300))
    path = tmp_path / "long.csv"
    path.write_bytes(b",A,B\n" + rows + b"s300,SECRET-4242,1\n")
    error = error_of(ExpressionSource("dense_csv", str(path)), chunk_bytes=200)
    assert error.reason == "expression_unreadable" and "line 302, spot 's300'" in error.detail
    assert_content_free(error.detail, tmp_path)


def write_mtx(folder: Path, entries: bytes, features: bytes = b"E1\tG1\tGene Expression\nE2\tG2\tGene Expression\n",
              barcodes: bytes = b"AAAC-1\nAAAG-1\n") -> str:
    """A 10x matrix folder of 2 genes x 2 barcodes with ``entries`` after the size line ``2 2 3``."""
    folder.mkdir()
    banner = b"%%MatrixMarket matrix coordinate integer general\n%metadata_json: {}\n2 2 3\n"
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(banner + entries))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(features))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(barcodes))
    return str(folder)


MTX_CASES = [  # (id, write_mtx keyword arguments, reason, place)
    ("text_value", {"entries": b"1 1 4\n2 1 SECRET-4242\n2 2 6\n"}, "expression_unreadable",
     "line 5, field 3 (value): not an integer"),
    ("extra_field", {"entries": b"1 1 4\n2 1 5 SECRET-4242\n2 2 6\n"}, "expression_unreadable",
     "line 5: wrong number of fields: 4"),
    ("barcode_out_of_range", {"entries": b"1 1 4\n2 4242 5\n2 2 6\n"}, "expression_unreadable",
     "line 5, field 2 (barcode index): out of range 1..2"),
    ("negative", {"entries": b"1 1 4\n2 1 -4242\n2 2 6\n"}, "negative_counts",
     "barcode 1 (spot 'AAAC-1'), feature 2 (gene 'G2')"),
    ("latin1_barcode", {"entries": b"1 1 4\n2 1 5\n2 2 6\n", "barcodes": b"AAAC-1\nSECRET-4242\xc9\n"},
     "text_not_utf8", "barcodes.tsv.gz line 2, field 1"),
]


@pytest.mark.parametrize("case_id, files, reason, place", MTX_CASES, ids=[c[0] for c in MTX_CASES])
def test_mtx_details_name_the_place_only(tmp_path, case_id, files, reason, place):
    error = error_of(ExpressionSource("tenx_mtx", write_mtx(tmp_path / "m", **files)))
    assert error.reason == reason and place in error.detail, error.detail
    assert_content_free(error.detail, tmp_path)


def write_h5(path: Path, barcodes: list[bytes], names: list[bytes], indices: list[int]) -> str:
    """A 10x HDF5 matrix of 2 genes x 2 barcodes, two entries per barcode."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"] = np.array([1, 2, 3, 4], np.int32), np.array(indices, np.int64)
        group["indptr"], group["shape"] = np.array([0, 2, 4], np.int64), np.array([2, 2], np.int32)
        group["barcodes"] = np.array(barcodes)
        features = group.create_group("features")
        features["id"], features["name"] = np.array([b"E1", b"E2"]), np.array(names)
        features["feature_type"] = np.array([b"Gene Expression"] * 2)
    return str(path)


H5_CASES = [  # (id, barcodes, names, indices, reason, place)
    ("latin1_barcode", [b"AAAC-1", SECRET + b"\xc9"], [b"G1", b"G2"], [0, 1, 0, 1], "text_not_utf8",
     "dataset /matrix/barcodes, entry 2"),
    ("latin1_name", [b"AAAC-1", b"AAAG-1"], [b"G1", SECRET + b"\xc9"], [0, 1, 0, 1], "text_not_utf8",
     "dataset /matrix/features/name, entry 2"),
    ("feature_out_of_range", [b"AAAC-1", b"AAAG-1"], [b"G1", b"G2"], [0, 1, 0, 4242], "expression_unreadable",
     "barcode 2 (spot 'AAAG-1'): feature index out of range"),
]


@pytest.mark.parametrize("case_id, barcodes, names, indices, reason, place", H5_CASES, ids=[c[0] for c in H5_CASES])
def test_h5_details_name_the_place_only(tmp_path, case_id, barcodes, names, indices, reason, place):
    error = error_of(ExpressionSource("tenx_h5", write_h5(tmp_path / "m.h5", barcodes, names, indices)))
    assert error.reason == reason and place in error.detail, error.detail
    assert_content_free(error.detail, tmp_path)


def test_unreadable_keeps_the_error_type_not_its_text():
    with pytest.raises(SlideError) as caught, unreadable("x.csv"):
        int("SECRET-4242")
    assert caught.value.detail == "x.csv: malformed value (ValueError)"
