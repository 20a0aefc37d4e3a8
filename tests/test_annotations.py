"""Pathologist annotations of every layout: label files -> label sets, normalised labels, the label map.

The synthetic dataset carries exact truth: ``st_1`` a HER2ST-style labelled-coordinates TSV (decimal
array coordinates, rows placed only by pixel position, rows that match no spot), ``visium_1`` two Loupe
Browser exports, the STimage release its ``_anno.csv`` files. Reader tests check that every label lands
on the right spot; one corpus run (tests/corpus.py) ingests the good slides with broken annotation
inputs next to them and checks the ``annotations`` table against the truth and each warning's reason.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import corpus
from readerdata import make_st, write
from stlake.ingestion.readers import ReaderOptions, read_slide
from stlake.ingestion.readers.labels import labelled_coords, loupe, mapping
from stlake.ingestion.records import RunError, SlideRef
from stlake.synth import load_truth

SECRET = "SECRET-4242"


def dataset_ref(dataset: dict, slide: str, **paths: str) -> SlideRef:
    """The manifest ref of a synthetic slide (its layout completes the paths), plus ``paths``."""
    from stlake.ingestion.discover import discover
    [ref] = [r for r in discover(dataset["manifest"]) if r.slide_id == slide]
    return SlideRef(ref.slide_id, ref.layout, ref.technology, {**ref.paths, **paths}, ref.species, ref.tissue, ref.meta)


def truth_sets(truth, in_tissue: bool = False) -> dict[str, list]:
    """The truth's sets: name -> raw label per spot (None for none), of the in-tissue spots when asked."""
    keep = truth.in_tissue if in_tissue else np.ones(len(truth), bool)
    names = list(truth.extra["label_sets"])
    return {name: [v or None for v in truth.extra[f"set:{name}"][keep]] for name in names}


def record_sets(record) -> dict[str, list]:
    """A record's sets: name -> raw label per spot."""
    columns = record.spots.label_columns()
    return {s.name: list(columns[:, j]) for j, s in enumerate(record.label_sets)}


def warnings_of(record, reason: str) -> list[str]:
    return [detail for r, detail in record.warnings if r == reason]


# ---------------------------------------------------------------- readers against the synthetic truth

def test_st_labelled_coordinates_land_on_their_spots(synthetic_dataset):
    truth = load_truth(synthetic_dataset["root"], "st_1")
    record = read_slide(dataset_ref(synthetic_dataset, "st_1"))
    assert list(record.spots.spot_id) == list(truth.spot_id)
    assert record_sets(record) == truth_sets(truth) and [s.name for s in record.label_sets] == ["labeled_coordinates"]
    assert list(record.spots.label) == list(truth.labels)
    assert set(truth.labels) == {"invasive cancer", "connective tissue", "immune infiltrate", "breast glands",
                                 "undetermined"}
    [detail] = warnings_of(record, "annotation_unmatched")
    assert detail.startswith(f"{int(truth.extra['unmatched_label_rows'])} labelled row(s)")
    assert record.label_sets[0].vocabulary["invasive cancer"] == "invasive cancer"


def test_loupe_exports_are_two_sets_of_visium_1(synthetic_dataset):
    truth = load_truth(synthetic_dataset["root"], "visium_1")
    record = read_slide(dataset_ref(synthetic_dataset, "visium_1"))
    assert [s.name for s in record.label_sets] == ["Annotation", "Graph-Based"]
    assert record_sets(record) == truth_sets(truth, in_tissue=True)
    assert list(record.spots.label) == list(truth.take(truth.in_tissue).labels)  # normalised: "tumor", ...
    assert set(record.spots.label) == {"tumor", "stroma", "immune", "normal"}
    assert not warnings_of(record, "annotation_unmatched")
    chosen = read_slide(dataset_ref(synthetic_dataset, "visium_1"), ReaderOptions(label_set="Graph-Based"))
    assert set(chosen.spots.label) == {"cluster 1", "cluster 2", "cluster 3", "cluster 4"}
    missing = read_slide(dataset_ref(synthetic_dataset, "visium_1"), ReaderOptions(label_set="nope"))
    assert set(missing.spots.label) == {None} and warnings_of(missing, "label_set_missing")


def test_stimage_anno_is_one_set(synthetic_dataset):
    truth = load_truth(synthetic_dataset["root"], "stimage_st_1")
    record = read_slide(dataset_ref(synthetic_dataset, "stimage_st_1"))
    assert [s.name for s in record.label_sets] == ["anno"] and list(record.spots.label) == list(truth.labels)


def test_label_map_onto_one_vocabulary_and_strict_mode(synthetic_dataset, tmp_path):
    label_map = write(tmp_path / "map.csv", "raw,label\nInvasive Cancer,tumor\ntumour,tumor\nconnective tissue,stroma\n"
                                            "undetermined,\n")
    mapping.load_label_map.cache_clear()
    truth = load_truth(synthetic_dataset["root"], "st_1")
    expected = {"invasive cancer": "tumor", "connective tissue": "stroma", "undetermined": None}
    lenient = read_slide(dataset_ref(synthetic_dataset, "st_1"), ReaderOptions(label_map=str(label_map)))
    assert list(lenient.spots.label) == [expected.get(v, v) for v in truth.labels]
    assert not warnings_of(lenient, "label_unmapped")
    strict = read_slide(dataset_ref(synthetic_dataset, "st_1"),
                        ReaderOptions(label_map=str(label_map), strict_labels=True))
    assert list(strict.spots.label) == [expected.get(v) for v in truth.labels]
    [detail] = warnings_of(strict, "label_unmapped")
    assert detail.startswith("2 distinct label(s) of set labeled_coordinates")  # immune infiltrate, breast glands
    assert mapping.normalise("  Invasive\tCANCER ") == "invasive cancer"
    bad = write(tmp_path / "bad.csv", "from,to\na,b\n")
    with pytest.raises(RunError, match="needs the columns raw,label"):
        mapping.check_label_map(str(bad))
    with pytest.raises(RunError, match="does not exist"):
        mapping.check_label_map(str(tmp_path / "none.csv"))


# ---------------------------------------------------------------- formats on small inline files

def test_labelled_coordinates_format_variants(tmp_path):
    """R's header without the row-names column, unquoted values, NA positions, a duplicate spot."""
    folder = make_st(tmp_path / "slide1")  # spots 10x12, 11x12, 10x13 (pixel ~150 px apart)
    write(folder / "slide1_labeled_coordinates.tsv",
          "x\ty\tpixel_x\tpixel_y\tlabel\n"
          "10x12\t10.008\t11.991\t1603\t1850\tTumour\n"
          "11x12\tNA\tNA\t1752.1\t1846\tstroma\n"  # by pixel: 11x12
          "r3\t10.4\t13.2\t1600\t2001.5\tInvasive cancer\n"
          "r4\t10.1\t12.9\t1600\t2001.5\timmune\n"  # 10x13 again: a duplicate
          "r5\tNA\tNA\t1676\t1930\tnormal\n"  # between three spots, more than half the pitch from each
          "r6\tNA\tNA\t5000\t5000\tnormal\n"  # far from every spot
          "r7\tNA\tNA\tNA\tNA\tNA\n")
    record = read_slide(SlideRef("slide1", "st", "ST", {"root": str(folder)}))
    assert [s.name for s in record.label_sets] == ["labeled_coordinates"]
    assert record_sets(record) == {"labeled_coordinates": ["Tumour", "stroma", "Invasive cancer"]}
    assert list(record.spots.label) == ["tumour", "stroma", "invasive cancer"]
    [duplicate] = warnings_of(record, "annotation_duplicate")
    assert duplicate.startswith("1 spot(s)") and "10x13" in duplicate
    [unmatched] = warnings_of(record, "annotation_unmatched")
    assert unmatched.startswith("2 labelled row(s)") and unmatched.endswith("data rows 5, 6")
    assert labelled_coords.is_labelled_coords_name("A1_labeled_coordinates.tsv")
    assert labelled_coords.is_labelled_coords_name("A1_labelled_coordinates.tsv")
    assert not labelled_coords.is_labelled_coords_name("A1_selection.tsv")


def test_loupe_export_edge_cases(tmp_path):
    """Unassigned barcodes, barcodes of no spot, a barcode twice, two categories in one file."""
    from readerdata import make_visium
    folder = make_visium(tmp_path / "V1")
    record0 = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}))
    ids = list(record0.spots.spot_id)
    rows = [f"{ids[0]},Tumor,x", f"{ids[1]},,y", f"ZZZZ-1,{SECRET},z", f"{ids[0]},Stroma,x"]
    write(folder / "Pathology.csv", "Barcode,Pathology,Second\n" + "\n".join(rows) + "\n")
    write(folder / "metrics_summary.csv", "Estimated Number of Spots,Mean Reads\n3,5\n")  # not a Loupe export
    record = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}))
    assert [s.name for s in record.label_sets] == ["Pathology", "Second"]
    sets = record_sets(record)
    assert sets["Pathology"][:2] == ["Tumor", None] and sets["Second"][:2] == ["x", "y"]
    unmatched = warnings_of(record, "annotation_unmatched")
    assert len(unmatched) == 2 and all("ZZZZ-1" in d and SECRET not in d for d in unmatched)
    assert len(warnings_of(record, "annotation_duplicate")) == 2
    assert loupe.is_loupe_header('"Barcode","Graph-based"') and not loupe.is_loupe_header("Barcode")


def test_manifest_names_several_annotation_files(tmp_path):
    from stlake.ingestion.discover import discover
    folder = make_st(tmp_path / "slide1")
    write(tmp_path / "a.tsv", "x\ty\tpixel_x\tpixel_y\tlabel\nr1\t10\t12\t1603\t1850\ttumor\n")
    write(tmp_path / "b.csv", "\tV2\n11x12\tstroma\n")
    manifest = write(tmp_path / "m.csv", f"slide_id,layout,path,annotation\nslide1,st,{folder},a.tsv; b.csv\n")
    [ref] = discover(str(manifest))
    assert (ref.paths["annotation"], ref.paths["annotation.2"]) == (str(tmp_path / "a.tsv"), str(tmp_path / "b.csv"))
    record = read_slide(ref)
    assert record_sets(record) == {"a": ["tumor", None, None], "b": [None, "stroma", None]}
    assert list(record.spots.label) == ["tumor", None, None]


def test_unreadable_and_missing_annotation_files_are_warnings(tmp_path):
    folder = make_st(tmp_path / "slide1")
    bad = write(tmp_path / "bad.tsv", b"x\ty\tlabel\n\xff" + SECRET.encode() + b"\n")
    record = read_slide(SlideRef("slide1", "st", "ST", {"root": str(folder), "annotation": str(bad),
                                                         "annotation.2": str(tmp_path / "gone.csv")}))
    assert record.label_sets == [] and set(record.spots.label) == {None}
    [(unreadable)] = warnings_of(record, "annotation_unreadable")
    assert SECRET not in unreadable and "bad.tsv" in unreadable
    assert warnings_of(record, "annotation_missing")


# ---------------------------------------------------------------- one ingest: the lake against the truth

def broken_annotations(folder: Path, dataset: dict) -> list[corpus.Row]:
    """``visium_1`` with a Loupe export naming barcodes of no spot and a label the strict map does not know."""
    slide = corpus.copy_slide(dataset, "visium_1", folder / "labels_visium")
    truth = load_truth(dataset["root"], "visium_1")
    barcodes = [b for b, t in zip(truth.spot_id, truth.in_tissue) if t][:3]
    write(slide / "Annotation.csv", f"Barcode,Annotation\n{barcodes[0]},Tumor\n{barcodes[1]},Tumor\n"
          f"{barcodes[2]},{SECRET} cells\n{barcodes[0][:-2]}-9,Tumor\n{barcodes[0]},Stroma\n")
    return [corpus.entry("labels_visium", "visium", path=str(slide), technology="Visium")]


def broken_st(folder: Path, dataset: dict) -> list[corpus.Row]:
    """``st_1`` whose labelled-coordinates file is not UTF-8."""
    slide = corpus.copy_slide(dataset, "st_1", folder / "labels_st")
    (slide / "st_1_labeled_coordinates.tsv").write_bytes(b"x\ty\tlabel\n1\t1\t\xff" + SECRET.encode() + b"\n")
    return [corpus.entry("labels_st", "st", path=str(slide), technology="ST")]


CASES = (
    corpus.Case("labels_visium", broken_annotations, "annotation_unmatched", "warning"),
    corpus.Case("labels_visium_dup", lambda f, d: [], "annotation_duplicate", "warning", slide_id="labels_visium"),
    corpus.Case("labels_visium_map", lambda f, d: [], "label_unmapped", "warning", slide_id="labels_visium"),
    corpus.Case("labels_st", broken_st, "annotation_unreadable", "warning"),
)


@pytest.fixture(scope="module")
def labels_run(spark, synthetic_dataset, tmp_path_factory):
    """The good slides and the broken annotation cases, ingested once under a strict label map."""
    root = tmp_path_factory.mktemp("labels_corpus")
    words = ["tumor", "stroma", "immune", "normal", "invasive cancer", "connective tissue", "immune infiltrate",
             "breast glands", "undetermined", "cluster 1", "cluster 2", "cluster 3", "cluster 4"]
    label_map = write(root / "map.csv", "raw,label\n" + "".join(f"{w},{w}\n" for w in words))
    return corpus.run_corpus(spark, root, synthetic_dataset, CASES, label_map=str(label_map),
                             label_map_mode="strict")


def test_ingest_lands_every_label_on_its_spot(labels_run, synthetic_dataset, corpus_baseline):
    corpus.assert_good_slides_identical(labels_run, corpus_baseline)
    rows = corpus.read_rows(labels_run.lake, "annotations")
    spots = {(r["slide_id"], r["spot_id"]): r["label"] for r in corpus.read_rows(labels_run.lake, "spots")}
    for slide in ("st_1", "visium_1", "stimage_st_1"):
        truth = load_truth(synthetic_dataset["root"], slide)
        sets = truth_sets(truth, slide == "visium_1") if "label_sets" in truth.extra else {"anno": list(truth.labels)}
        if slide == "visium_1":
            truth = truth.take(truth.in_tissue)
        for name, raw in sets.items():
            landed = {r["spot_id"]: (r["raw_label"], r["label"]) for r in rows
                      if r["slide_id"] == slide and r["set"] == name}
            assert landed == {s: (v, mapping.normalise(v)) for s, v in zip(truth.spot_id, raw) if v is not None}
        assert [spots[(slide, s)] for s in truth.spot_id] == list(truth.labels)


def test_bad_annotations_are_warnings_that_quote_nothing(labels_run):
    for case in CASES:
        corpus.assert_case(labels_run, case)
    assert "labels_visium" in labels_run.report.landed and "labels_st" in labels_run.report.landed
    for row in labels_run.rejects:
        assert "SECRET" not in row["detail"] and "4242" not in row["detail"]
    rows = [r for r in corpus.read_rows(labels_run.lake, "annotations") if r["slide_id"] == "labels_visium"]
    unknown = [r for r in rows if r["label"] is None]
    assert len(unknown) == 1 and unknown[0]["raw_label"] == f"{SECRET} cells"  # the raw label is in the lake
    assert not labels_run.written_outside_lake


# ---------------------------------------------------------------- labels in the stream

@pytest.fixture(scope="module")
def labelled_lake(tmp_path_factory) -> str:
    """``pairs`` of four fake slides whose spots carry two annotation sets (``anno`` and ``region``)."""
    from stlake.testing import lake as tl
    lake = str(tmp_path_factory.mktemp("labelled_lake"))
    tl.write_genes(lake, ["human"], 30)
    tl.write_pairs(lake, [tl.FakeSlide(f"s{i}", i, base_spots=40) for i in range(4)], 30)
    return lake


def stream_rows(lake: str, **options) -> tuple[list[dict], object]:
    """Every streamed row (slide, spot, label, label_index) and the loader."""
    from stlake.stream import StreamSpec, make_loader
    with make_loader(StreamSpec(lake=lake, panel=["GENE000"], batch_size=16, **options)) as loader:
        rows = [{"key": (s, p), "label": lab, "index": int(i)} for batch in loader
                for s, p, lab, i in zip(batch["slide_id"], batch["spot_id"], batch["label"], batch["label_index"])]
    return rows, loader


def expected_sets() -> dict[tuple[str, str], dict]:
    from stlake.testing import lake as tl
    slides = [tl.FakeSlide(f"s{i}", i, base_spots=40) for i in range(4)]
    return {(s.slide_id, tl.spot_id(s, j)): tl.spot_sets(s, j) for s in slides for j in range(s.n_spots)}


def test_stream_labels_as_classes_by_set(labelled_lake):
    truth = expected_sets()
    rows, loader = stream_rows(labelled_lake)
    assert len(rows) == len(truth) and loader.vocabulary == ["stroma", "tumor"]
    for row in rows:
        assert row["label"] == truth[row["key"]]["anno"]
        assert row["index"] == (loader.vocabulary.index(row["label"]) if row["label"] else -1)
    rows, loader = stream_rows(labelled_lake, label_set="region")
    assert {r["key"] for r in rows} == {k for k, v in truth.items() if v["region"] is not None}
    assert all(r["label"] == truth[r["key"]]["region"] for r in rows)
    assert loader.vocabulary == ["region 0", "region 1"]
    assert loader.label_counts == dict(sorted(Counter(v["region"] for v in truth.values() if v["region"]).items()))
    rows, loader = stream_rows(labelled_lake, label_set="region", labels=["region 1"])
    assert {r["key"] for r in rows} == {k for k, v in truth.items() if v["region"] == "region 1"}
    assert loader.vocabulary == ["region 1"] and {r["index"] for r in rows} == {0}


def test_stream_balances_classes_by_sampling_weights(labelled_lake):
    rows, loader = stream_rows(labelled_lake, label_set="region", balance_labels=True, num_epochs=20)
    counts = loader.label_counts
    rarest = min(counts.values())
    assert loader.label_weights == {label: rarest / n for label, n in counts.items()}
    assert counts["region 0"] > 2.5 * counts["region 1"]  # the lake is imbalanced...
    streamed = Counter(r["label"] for r in rows)
    assert set(streamed) == set(counts)
    assert 0.8 < streamed["region 0"] / streamed["region 1"] < 1.25  # ...the stream is not
    again, _ = stream_rows(labelled_lake, label_set="region", balance_labels=True, num_epochs=20)
    assert [r["key"] for r in again] == [r["key"] for r in rows]  # seeded


def test_sql_label_counts_per_slide_and_cohort_and_tiles_of_one_label(spark, labels_run):
    from stlake.sql import queries, register_views
    register_views(spark, str(labels_run.lake))
    rows = corpus.read_rows(labels_run.lake, "annotations")
    per_slide = spark.sql(queries.LABEL_COUNTS_PER_SLIDE).collect()
    assert {(r.slide_id, r.set, r.label): r.spots for r in per_slide} == \
        dict(Counter((r["slide_id"], r["set"], r["label"]) for r in rows))
    slides = {r["slide_id"]: r["tissue"] or r["technology"] for r in corpus.read_rows(labels_run.lake, "slides")}
    per_cohort = spark.sql(queries.LABEL_COUNTS_PER_COHORT).collect()
    expected = Counter((slides[r["slide_id"]], r["set"], r["label"]) for r in rows if r["slide_id"] in slides)
    assert {(r.cohort, r.set, r.label): r.spots for r in per_cohort} == dict(expected)
    tiles = spark.sql(queries.TILES_OF_SET_LABEL.format(set="Graph-Based", label="cluster 2", limit=10000)).collect()
    assert {(t.slide_id, t.spot_id) for t in tiles} == {(r["slide_id"], r["spot_id"]) for r in rows
                                                        if r["set"] == "Graph-Based" and r["label"] == "cluster 2"}
    assert tiles and all(t.tile_bytes > 0 and t.raw_label == "Cluster 2" for t in tiles)


def test_obs_columns_named_in_the_manifest_are_sets():
    import pandas as pd

    from stlake.ingestion.readers.common import make_spots
    from stlake.ingestion.readers.labels import read_files
    spots = make_spots(np.array(["a", "b", "c"], dtype=object), np.zeros(3), np.zeros(3))
    obs = pd.DataFrame({"pathology": pd.Categorical(["Tumor", None, "Stroma"]), "cluster": [1, 2, 2]},
                       index=["a", "b", "zz"])
    ref = SlideRef("s", "anndata", "Visium", {}, meta={"annotation_columns": "pathology; cluster,missing"})
    warnings: list = []
    spots, sets = read_files(ref, spots, warnings, obs=obs, obs_path="s.h5ad")
    assert [s.name for s in sets] == ["pathology", "cluster"] and sets[0].source_uri == "s.h5ad#obs/pathology"
    assert spots.annotations.tolist() == [["Tumor", "1"], [None, "2"], [None, None]]
    assert sorted(r for r, _ in warnings) == ["annotation_missing", "annotation_unmatched", "annotation_unmatched"]


def test_h5ad_obs_columns_named_in_the_manifest_land_on_their_spots(synthetic_dataset):
    truth = load_truth(synthetic_dataset["root"], "anndata_2")
    record = read_slide(dataset_ref(synthetic_dataset, "anndata_2"))
    assert [s.name for s in record.label_sets] == ["pathology", "leiden"]
    assert record_sets(record) == truth_sets(truth) and list(record.spots.label) == list(truth.labels)
    assert None in list(truth.labels) and not warnings_of(record, "annotation_unmatched")
    bare = load_truth(synthetic_dataset["root"], "anndata_1")
    assert bare.labels is None and read_slide(dataset_ref(synthetic_dataset, "anndata_1")).label_sets == []
