"""Slide discovery: a scanned root holding all four layouts, CSV and YAML manifests, duplicates."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import readerdata as fx
from stlake.ingestion.discover import MAX_DEPTH, discover, find_slides
from stlake.ingestion.readers import ReaderOptions, read_slide, stimage, visium
from stlake.lake import storage


def make_root(root: Path) -> Path:
    """All four layouts at different depths, plus a folder that is none of them."""
    fx.make_stimage(root / "releases" / "stimage_1k4m")
    fx.make_visium(root / "visium" / "V1" / "outs")
    fx.make_visium(root / "visium" / "V2", fullres=False, header=True, matrix="mtx")
    fx.make_visiumhd(root / "hd" / "HD1")
    fx.make_st(root / "st" / "patientA" / "ST1", name="ST1")
    fx.write(root / "misc" / "notes.txt", "not a slide")
    return root


def test_scan_finds_all_layouts(tmp_path):
    root = make_root(tmp_path / "data")
    refs = discover(str(root))
    assert [r.slide_id for r in refs] == ["HD1", "ST1", "V1", "V2", "slideA", "slideS"]
    by_id = {r.slide_id: r for r in refs}
    assert {k: (r.layout, r.technology) for k, r in by_id.items()} == {
        "HD1": ("visiumhd", "VisiumHD"), "ST1": ("st", "ST"), "V1": ("visium", "Visium"),
        "V2": ("visium", "Visium"), "slideA": ("stimage", "Visium"), "slideS": ("stimage", "ST")}
    release = root / "releases" / "stimage_1k4m"
    a = by_id["slideA"]
    assert a.paths["coords"] == str(release / "Visium" / "coord" / "slideA_coord.csv")
    assert a.paths["image"] == str(release / "Visium" / "image" / "slideA.png")
    assert a.paths["counts"] == str(release / "Visium" / "gene_exp" / "slideA_count.csv")
    assert a.paths["annotation"] == str(release / "annotation" / "slideA_anno.csv")
    assert "annotation" not in by_id["slideS"].paths
    assert (a.species, a.tissue, a.meta["title"]) == ("human", "brain", "A title")
    assert (by_id["slideS"].species, by_id["slideS"].tissue) == ("mouse", "kidney")
    assert by_id["V1"].paths["root"] == str(root / "visium" / "V1" / "outs")
    assert by_id["V1"].paths["image"].endswith("image.tif") and "image" not in by_id["V2"].paths
    assert by_id["V2"].paths["matrix_dir"].endswith("filtered_feature_bc_matrix")
    assert by_id["HD1"].paths == {"root": str(root / "hd" / "HD1"), "image": str(root / "hd" / "HD1" / "image.tif")}
    st_paths = by_id["ST1"].paths
    assert st_paths["counts"].endswith("ST1_stdata.tsv.gz") and st_paths["spot_detector"].endswith("_spot_detector.tsv")
    assert st_paths["image"].endswith("ST1_HE.jpg")
    records = {r.slide_id: read_slide(r) for r in refs}
    assert {k: len(r.spots) for k, r in records.items()} == {"HD1": 4, "ST1": 3, "V1": 3, "V2": 3, "slideA": 3,
                                                           "slideS": 2}
    assert records["V2"].image_source == "hires" and records["slideA"].spots.label[0] == "tumor"
    assert len(read_slide(by_id["HD1"], ReaderOptions(bin_size_um=16)).spots) == 2


def test_scan_layout_filter_and_depth_limit(tmp_path):
    root = make_root(tmp_path / "data")
    assert [r.slide_id for r in discover(str(root), layouts=("visium", "st"))] == ["ST1", "V1", "V2"]
    deep = tmp_path / "deep"
    fx.make_st(deep.joinpath(*["a"] * (MAX_DEPTH - 1)) / "reachable", name="r")
    fx.make_st(deep.joinpath(*["b"] * MAX_DEPTH) / "too_deep", name="t")
    assert [r.slide_id for r in discover(str(deep))] == ["reachable"]


def test_scan_duplicate_slide_id_names_both_paths(tmp_path):
    """Both entries of a duplicated id are refused (documented in stlake.ingestion.discover), each naming both."""
    root = tmp_path / "data"
    fx.make_visium(root / "batch1" / "S1")
    fx.make_st(root / "batch2" / "S1", name="x")
    found = find_slides(str(root))
    assert found.refs == [] and [(r.slide_id, r.rejection.reason) for r in found.rejected] == [
        ("S1", "duplicate_slide_id")] * 2
    for refused in found.rejected:
        assert str(root / "batch1" / "S1") in refused.rejection.detail
        assert str(root / "batch2" / "S1") in refused.rejection.detail


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover(str(tmp_path / "nothing"))
    with pytest.raises(ValueError):
        discover(str(tmp_path), layouts=["bogus"])


MANIFEST_ROWS = [
    {"slide_id": "slideA", "layout": "stimage", "path": "data/releases/stimage_1k4m", "species": "Homo sapiens"},
    {"slide_id": "V1", "layout": "visium", "path": "data/visium/V1/outs", "tissue": "lymph node"},
    {"slide_id": "V2x", "layout": "visium", "path": "data/visium/V2", "image": "images/v2_full.jpg"},
    {"slide_id": "HD1", "layout": "visiumhd", "path": "data/hd/HD1"},
    {"slide_id": "ST1", "layout": "st", "path": "data/st/patientA/ST1", "technology": "ST", "donor": "p7"},
]


def check_manifest_refs(tmp_path: Path, refs) -> None:
    data = tmp_path / "data"
    assert [r.slide_id for r in refs] == ["HD1", "ST1", "V1", "V2x", "slideA"]
    by_id = {r.slide_id: r for r in refs}
    a = by_id["slideA"]
    assert (a.layout, a.technology) == ("stimage", "Visium")
    assert a.paths["coords"] == str(data / "releases" / "stimage_1k4m" / "Visium" / "coord" / "slideA_coord.csv")
    assert (a.species, a.tissue, a.meta["pmid"]) == ("Homo sapiens", "brain", "123")  # manifest wins over meta
    assert by_id["V1"].tissue == "lymph node" and by_id["V1"].paths["root"] == str(data / "visium" / "V1" / "outs")
    assert by_id["V2x"].paths["image"] == str(tmp_path / "images" / "v2_full.jpg")
    assert by_id["ST1"].meta == {"donor": "p7"} and by_id["HD1"].technology == "VisiumHD"
    records = {r.slide_id: read_slide(r) for r in refs}
    assert records["V2x"].image_source == "fullres" and records["V2x"].spots.x[0] == 2000
    assert {k: len(r.spots) for k, r in records.items()} == {"HD1": 4, "ST1": 3, "V1": 3, "V2x": 3, "slideA": 3}


def test_csv_manifest_with_relative_paths(tmp_path):
    make_root(tmp_path / "data")
    fx.write(tmp_path / "images" / "v2_full.jpg", b"\xff\xd8\xff")
    columns = ["slide_id", "layout", "path", "technology", "species", "tissue", "image", "donor"]
    lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in MANIFEST_ROWS]
    manifest = fx.write(tmp_path / "manifest.csv", "\n".join(lines) + "\n")
    check_manifest_refs(tmp_path, discover(str(manifest)))
    assert [r.slide_id for r in discover(str(manifest), layouts=["stimage"])] == ["slideA"]


def test_yaml_manifest_with_relative_paths(tmp_path):
    make_root(tmp_path / "data")
    fx.write(tmp_path / "images" / "v2_full.jpg", b"\xff\xd8\xff")
    manifest = fx.write(tmp_path / "manifest.yaml", yaml.safe_dump({"slides": MANIFEST_ROWS}))
    check_manifest_refs(tmp_path, discover(str(manifest)))


def test_manifest_explicit_role_paths_and_errors(tmp_path):
    fx.make_st(tmp_path / "files", name="q")
    rows = [{"slide_id": "Q", "layout": "st", "counts": "files/q_stdata.tsv.gz",
             "spot_detector": "files/q_spot_detector.tsv", "image": "files/q_HE.jpg"}]
    manifest = fx.write(tmp_path / "m.yml", yaml.safe_dump({"slides": rows}))
    [ref] = discover(str(manifest))
    assert ref.paths == {"counts": str(tmp_path / "files" / "q_stdata.tsv.gz"),
                         "spot_detector": str(tmp_path / "files" / "q_spot_detector.tsv"),
                         "image": str(tmp_path / "files" / "q_HE.jpg")}
    assert len(read_slide(ref).spots) == 3
    fx.write(tmp_path / "dup.yml", yaml.safe_dump({"slides": rows + [dict(rows[0], counts="other.tsv")]}))
    dup = find_slides(str(tmp_path / "dup.yml"))  # duplicates are refused entries now, not a ValueError
    assert dup.refs == [] and {r.rejection.reason for r in dup.rejected} == {"duplicate_slide_id"}
    fx.write(tmp_path / "bad.csv", "slide_id,layout,path\nX,imaginary,somewhere\n")
    [bad] = find_slides(str(tmp_path / "bad.csv")).rejected  # so is an unknown layout
    assert (bad.slide_id, bad.rejection.reason) == ("X", "manifest_invalid") and "layout" in bad.rejection.detail


def test_resolve_relative():
    assert storage.resolve("s3://bucket/manifests", "a/b.csv") == "s3://bucket/manifests/a/b.csv"
    assert storage.resolve("s3://bucket/manifests", "../data/x") == "s3://bucket/data/x"
    assert storage.resolve("s3://bucket/m", "s3a://other/key") == "s3://other/key"
    assert storage.resolve("s3://bucket/m", "/abs/path") == "/abs/path"
    assert storage.resolve("/base", "x/../y") == "/base/y"
    assert storage.parent("s3a://bucket/m/manifest.csv") == "s3://bucket/m"
    assert storage.parent("s3://bucket") == "s3://bucket" and storage.parent("/base/m.csv") == "/base"


def test_readers_do_not_resolve_discovered_paths_again(tmp_path, monkeypatch):
    """Discovery resolves roles and applies the STimage meta once; the readers list no folder and
    read no meta CSV for such refs."""
    root = make_root(tmp_path / "data")
    no_tissue = fx.STIMAGE_META.replace("mouse,kidney,", "mouse,,")  # the reader used to look again for it
    fx.write(root / "releases" / "stimage_1k4m" / "meta" / "meta_all_gene.csv", no_tissue)
    refs = {r.slide_id: r for r in discover(str(root))}
    assert "meta" not in refs["slideA"].paths and "meta" not in refs["slideS"].paths

    listed = []

    def no_listing(uri):
        if uri != refs["V2"].paths["root"]:  # V2 has no full-res image: only its root is looked at again
            raise AssertionError(f"listed again: {uri}")
        listed.append(uri)
        return []

    def no_meta(path):
        raise AssertionError(f"meta read again: {path}")

    monkeypatch.setattr(storage, "list_dir", no_listing)
    monkeypatch.setattr(stimage, "read_meta_table", no_meta)
    for slide in ("V1", "V2"):
        assert visium.resolve_paths(refs[slide].paths) == refs[slide].paths
    assert listed == [refs["V2"].paths["root"]]
    records = {slide: read_slide(refs[slide]) for slide in ("V1", "V2", "slideA", "slideS")}
    assert records["V1"].image_source == "fullres" and records["V2"].image_source == "hires"
    assert records["slideA"].ref.tissue == "brain"
    assert records["slideA"].ref.meta["title"] == "A title"
    assert (records["slideS"].ref.species, records["slideS"].ref.tissue) == ("mouse", None)


def test_stimage_slide_without_meta_row_is_still_warned_by_the_reader(tmp_path):
    root = fx.make_stimage(tmp_path / "release")
    fx.write(root / "meta" / "meta_all_gene.csv", fx.STIMAGE_META.split("slideS")[0])  # slideS has no row
    refs = {r.slide_id: r for r in discover(str(root))}
    assert "meta" in refs["slideS"].paths and "meta" not in refs["slideA"].paths
    assert [w[0] for w in read_slide(refs["slideS"]).warnings] == ["meta_missing"]
