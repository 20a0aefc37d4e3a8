"""Slide readers: tiny fixtures of every input layout written inline, read back into SlideRecords.

The fixture builders (``make_*``) are also used by ``test_discover.py``.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stlake.ingestion.readers import (
    LAYOUTS,
    ReaderOptions,
    layout_names,
    read_slide,
    st,
    stimage,
    technologies,
    visium,
    visiumhd,
)
from stlake.ingestion.records import SlideError, SlideRef

# ---------------------------------------------------------------- fixture builders


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


STIMAGE_META = (
    "slide,species,tissue,pmid,title,abstract,keywords,involve_cancer,tech,spot_num,gene_num\n"
    'slideA,human,brain,123,A title,"An abstract, with commas",brain;cortex,FALSE,Visium,3,2\n'
    "slideS,mouse,kidney,456,S title,Short,kidney,TRUE,ST,2,2\n"
)


def make_stimage(root: Path, duplicate: bool = False) -> Path:
    """A release with Visium slide ``slideA`` (3 spots, 2 annotated) and ST slide ``slideS`` (2 spots)."""
    spots = ["AAAC-1", "AAAG-1", "AAAT-1"] + (["AAAC-1"] if duplicate else [])
    coords = ",yaxis,xaxis,r\n" + "".join(f"{s},{100.5 + 10 * i},{200.25 + 20 * i},{[10, 11, 12, 9][i]}\n"
                                          for i, s in enumerate(spots))
    write(root / "Visium" / "coord" / "slideA_coord.csv", coords)
    write(root / "Visium" / "image" / "slideA.png", b"\xff\xd8\xff not decoded")
    write(root / "Visium" / "gene_exp" / "slideA_count.csv", ",G1,G2\n" + "".join(f"{s},1,0\n" for s in spots))
    write(root / "annotation" / "slideA_anno.csv", "\tV2\nAAAC-1\ttumor\nAAAT-1\tstroma\nZZZZ-1\tnormal\n")
    write(root / "ST" / "coord" / "slideS_coord.csv", ",yaxis,xaxis,r\n10x11,5,6,40\n11x11,7,8,40\n")
    write(root / "ST" / "image" / "slideS.png", b"png")
    write(root / "ST" / "gene_exp" / "slideS_count.csv", ",G1\n10x11,3\n11x11,4\n")
    write(root / "meta" / "meta_all_gene.csv", STIMAGE_META)
    return root


POSITIONS = [  # barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
    ("AAAC-1", 1, 0, 0, 1000, 2000),
    ("AAAG-1", 0, 0, 2, 1000, 2200),
    ("AAAT-1", 1, 1, 1, 1173, 2100),
    ("AACC-1", 1, 2, 0, 1346, 2000),
]
SCALEFACTORS = {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.025,
                "fiducial_diameter_fullres": 177.7}


def make_visium(folder: Path, header: bool = False, fullres: bool = True, matrix: str = "h5",
                positions: list[tuple] = POSITIONS) -> Path:
    """A Space Ranger Visium ``outs``-like folder."""
    rows = "".join(",".join(map(str, p)) + "\n" for p in positions)
    if header:
        write(folder / "spatial" / "tissue_positions.csv",
              "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + rows)
    else:
        write(folder / "spatial" / "tissue_positions_list.csv", rows)
    write(folder / "spatial" / "scalefactors_json.json", json.dumps(SCALEFACTORS))
    write(folder / "spatial" / "tissue_hires_image.png", b"png")
    if matrix == "h5":
        write(folder / "filtered_feature_bc_matrix.h5", b"h5")
    else:
        for name in ("barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"):
            write(folder / "filtered_feature_bc_matrix" / name, b"")
    if fullres:
        write(folder / "image.tif", b"II*\x00")
    return folder


def make_visiumhd(folder: Path, fullres: bool = True) -> Path:
    """A VisiumHD slide with 8 µm (5 bins, 4 in tissue) and 16 µm (2 bins) outputs."""
    for size, n, diameter in ((8, 5, 32.0), (16, 2, 64.0)):
        bin_dir = folder / "binned_outputs" / f"square_{size:03d}um"
        table = pa.table({
            "barcode": [f"s_{size:03d}um_{i:05d}_00000-1" for i in range(n)],
            "in_tissue": [0 if i == 4 else 1 for i in range(n)],
            "array_row": list(range(n)), "array_col": [0] * n,
            "pxl_row_in_fullres": [100.0 + diameter * i for i in range(n)],
            "pxl_col_in_fullres": [50.0] * n,
        })
        (bin_dir / "spatial").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, bin_dir / "spatial" / "tissue_positions.parquet")
        write(bin_dir / "spatial" / "scalefactors_json.json", json.dumps({
            "spot_diameter_fullres": diameter, "bin_size_um": float(size), "microns_per_pixel": size / diameter,
            "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.01, "regist_target_img_scalef": 0.2}))
        write(bin_dir / "filtered_feature_bc_matrix.h5", b"h5")
    write(folder / "spatial" / "tissue_hires_image.png", b"png")
    if fullres:
        write(folder / "image.tif", b"II*\x00")
    return folder


DETECTOR = (  # x, y, new_x, new_y, pixel_x, pixel_y, selected; pixel = a + 150 * new
    (10, 12, 10.02, 12.0, 1603.0, 1850.0, 1),
    (11, 12, 11.0, 11.98, 1750.0, 1847.0, 1),
    (10, 13, 10.0, 13.01, 1600.0, 2001.5, 1),
    (13, 13, 13.0, 13.0, 2050.0, 2000.0, 1),  # selected, no counts
    (14, 14, 14.0, 14.0, 2200.0, 2150.0, 0),  # not selected
)


def make_st(folder: Path, name: str = "slide1") -> Path:
    """A legacy ST slide: gzipped counts (one spot without detector entry), detector TSV, JPEG."""
    counts = "\tGeneA\tGeneB\n" + "".join(f"{s}\t1\t2\n" for s in ("10x12", "11x12", "10x13", "20x20"))
    write(folder / f"{name}_stdata.tsv.gz", gzip.compress(counts.encode()))
    write(folder / f"{name}_spot_detector.tsv", "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
          + "".join("\t".join(map(str, row)) + "\n" for row in DETECTOR))
    write(folder / f"{name}_HE.jpg", b"\xff\xd8\xff")
    return folder


# ---------------------------------------------------------------- STimage


def test_stimage_reads_coords_labels_and_meta(tmp_path):
    root = make_stimage(tmp_path / "release")
    record = read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    spots = record.spots
    assert list(spots.spot_id) == ["AAAC-1", "AAAG-1", "AAAT-1"]
    np.testing.assert_allclose(spots.x, [200.25, 220.25, 240.25])
    np.testing.assert_allclose(spots.y, [100.5, 110.5, 120.5])
    assert list(spots.label) == ["tumor", None, "stroma"]
    assert spots.in_tissue.all() and (spots.array_row == -1).all() and (spots.array_col == -1).all()
    assert spots.x.dtype == np.float64 and spots.array_row.dtype == np.int32
    assert record.spot_diameter_px == 22.0  # 2 * median(10, 11, 12)
    assert record.microns_per_pixel == pytest.approx(55 / 22)
    assert record.image_uri == str(root / "Visium" / "image" / "slideA.png")
    assert record.expression.kind == "dense_csv" and record.expression.options == {"sep": ","}
    assert record.expression.uri == str(root / "Visium" / "gene_exp" / "slideA_count.csv")
    assert (record.ref.species, record.ref.tissue) == ("human", "brain")
    assert record.ref.meta["abstract"] == "An abstract, with commas" and record.ref.meta["pmid"] == "123"
    assert "slide" not in record.ref.meta and "species" not in record.ref.meta
    assert [w[0] for w in record.warnings] == ["annotation_unmatched"]  # ZZZZ-1 is not a spot
    assert record.image_source == "fullres" and record.coord_scale == 1.0


def test_stimage_explicit_paths_without_annotation_or_meta(tmp_path):
    root = make_stimage(tmp_path / "release")
    paths = stimage.slide_paths(str(root), "ST", "slideS")
    del paths["root"], paths["meta"], paths["annotation"]
    ref = SlideRef("slideS", "stimage", "ST", paths, species="mouse")
    record = read_slide(ref)
    assert list(record.spots.spot_id) == ["10x11", "11x11"] and list(record.spots.label) == [None, None]
    assert record.spot_diameter_px == 80.0 and record.microns_per_pixel == pytest.approx(100 / 80)
    assert record.ref.species == "mouse" and record.ref.tissue is None and record.warnings == []


def test_stimage_duplicate_spot_ids(tmp_path):
    root = make_stimage(tmp_path / "release", duplicate=True)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == "duplicate_spot_ids" and "AAAC-1" in error.value.detail


def test_stimage_missing_and_garbled_coords(tmp_path):
    root = make_stimage(tmp_path / "release")
    paths = stimage.slide_paths(str(root), "Visium", "slideA")
    missing = dict(paths, coords=str(root / "Visium" / "coord" / "nope_coord.csv"))
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", missing))
    assert error.value.reason == "coords_unreadable" and "nope_coord.csv" in error.value.detail
    write(root / "Visium" / "coord" / "slideA_coord.csv", ",yaxis,xaxis,r\nAAAC-1,abc,1,2\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", paths))
    assert error.value.reason == "coords_unreadable" and "yaxis" in error.value.detail
    write(root / "Visium" / "coord" / "slideA_coord.csv", "no,such,columns\n1,2,3\n")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", paths))
    assert error.value.reason == "coords_unreadable"


def test_stimage_image_missing(tmp_path):
    root = make_stimage(tmp_path / "release")
    (root / "Visium" / "image" / "slideA.png").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("slideA", "stimage", "Visium", {"root": str(root)}))
    assert error.value.reason == "image_missing" and "slideA.png" in error.value.detail


# ---------------------------------------------------------------- Visium


def test_visium_fullres_in_tissue_only(tmp_path):
    folder = make_visium(tmp_path / "V1" / "outs")
    record = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}))
    assert list(record.spots.spot_id) == ["AAAC-1", "AAAT-1", "AACC-1"]
    np.testing.assert_allclose(record.spots.x, [2000, 2100, 2000])
    np.testing.assert_allclose(record.spots.y, [1000, 1173, 1346])
    assert list(record.spots.array_row) == [0, 1, 2] and list(record.spots.array_col) == [0, 1, 0]
    assert record.spots.in_tissue.all() and list(record.spots.label) == [None] * 3
    assert record.image_uri == str(folder / "image.tif") and record.image_source == "fullres"
    assert record.spot_diameter_px == 110.0 and record.coord_scale == 1.0
    assert record.microns_per_pixel == pytest.approx(0.5)
    assert (record.expression.kind, record.expression.uri) == ("tenx_h5", str(folder / "filtered_feature_bc_matrix.h5"))
    assert record.warnings == []
    everything = read_slide(SlideRef("V1", "visium", "Visium", {"root": str(folder)}),
                            ReaderOptions(in_tissue_only=False))
    assert len(everything.spots) == 4 and list(everything.spots.in_tissue) == [True, False, True, True]


def test_visium_hires_fallback_scales_coordinates(tmp_path):
    folder = make_visium(tmp_path / "V2", header=True, fullres=False, matrix="mtx")
    record = read_slide(SlideRef("V2", "visium", "Visium", {"root": str(folder)}))
    assert record.image_uri == str(folder / "spatial" / "tissue_hires_image.png")
    assert record.image_source == "hires" and record.coord_scale == 0.25
    np.testing.assert_allclose(record.spots.x, [500, 525, 500])
    np.testing.assert_allclose(record.spots.y, [250, 293.25, 336.5])
    assert record.spot_diameter_px == pytest.approx(27.5)
    assert record.microns_per_pixel == pytest.approx(2.0)
    assert record.warnings[0][0] == "hires_image" and "0.25" in record.warnings[0][1]
    assert (record.expression.kind, record.expression.uri) == ("tenx_mtx", str(folder / "filtered_feature_bc_matrix"))


def test_visium_image_override_and_explicit_image(tmp_path):
    folder = make_visium(tmp_path / "V3", fullres=False)
    other = write(tmp_path / "elsewhere" / "big.btf", b"II*\x00")
    record = read_slide(SlideRef("V3", "visium", "Visium", {"root": str(folder)}),
                        ReaderOptions(image_override=str(other)))
    assert record.image_uri == str(other) and record.coord_scale == 1.0 and record.spots.x[0] == 2000
    ref = SlideRef("V3", "visium", "Visium", {"root": str(folder), "image": str(tmp_path / "missing.tif")})
    with pytest.raises(SlideError) as error:
        read_slide(ref)
    assert error.value.reason == "image_missing" and "missing.tif" in error.value.detail


def test_visium_without_any_image(tmp_path):
    folder = make_visium(tmp_path / "V4", fullres=False)
    (folder / "spatial" / "tissue_hires_image.png").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V4", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "image_missing"


def test_visium_duplicate_barcodes_and_missing_positions(tmp_path):
    folder = make_visium(tmp_path / "V5", positions=POSITIONS + [POSITIONS[1]])
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "duplicate_spot_ids" and "AAAG-1" in error.value.detail
    (folder / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable"
    explicit = {"root": str(folder), "positions": str(folder / "spatial" / "gone.csv")}
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V5", "visium", "Visium", explicit))
    assert error.value.reason == "coords_unreadable" and "gone.csv" in error.value.detail


def test_visium_garbled_scalefactors(tmp_path):
    folder = make_visium(tmp_path / "V6")
    write(folder / "spatial" / "scalefactors_json.json", "{not json")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("V6", "visium", "Visium", {"root": str(folder)}))
    assert error.value.reason == "coords_unreadable" and "scalefactors_json.json" in error.value.detail


# ---------------------------------------------------------------- VisiumHD


def test_visiumhd_default_8um_bins(tmp_path):
    folder = make_visiumhd(tmp_path / "HD1")
    record = read_slide(SlideRef("HD1", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert len(record.spots) == 4 and record.spots.spot_id[0] == "s_008um_00000_00000-1"
    np.testing.assert_allclose(record.spots.y, [100, 132, 164, 196])
    np.testing.assert_allclose(record.spots.x, [50] * 4)
    assert record.spot_diameter_px == 32.0 and record.microns_per_pixel == pytest.approx(0.25)
    assert record.image_uri == str(folder / "image.tif") and record.image_source == "fullres"
    assert record.expression.kind == "tenx_h5"
    assert record.expression.uri == str(folder / "binned_outputs" / "square_008um" / "filtered_feature_bc_matrix.h5")
    assert list(record.spots.array_row) == [0, 1, 2, 3]


def test_visiumhd_16um_bins_and_hires(tmp_path):
    folder = make_visiumhd(tmp_path / "HD2", fullres=False)
    record = read_slide(SlideRef("HD2", "visiumhd", "VisiumHD", {"root": str(folder)}),
                        ReaderOptions(bin_size_um=16))
    assert list(record.spots.spot_id) == ["s_016um_00000_00000-1", "s_016um_00001_00000-1"]
    assert record.image_source == "hires" and record.coord_scale == 0.1
    assert record.image_uri == str(folder / "spatial" / "tissue_hires_image.png")
    np.testing.assert_allclose(record.spots.y, [10.0, 16.4])
    assert record.spot_diameter_px == pytest.approx(6.4) and record.microns_per_pixel == pytest.approx(2.5)
    assert record.expression.uri.endswith("square_016um/filtered_feature_bc_matrix.h5")
    assert [w[0] for w in record.warnings] == ["hires_image"]


def test_visiumhd_missing_bin_size(tmp_path):
    folder = make_visiumhd(tmp_path / "HD3")
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("HD3", "visiumhd", "VisiumHD", {"root": str(folder)}), ReaderOptions(bin_size_um=2))
    assert error.value.reason == "bin_size_unavailable" and "square_008um" in error.value.detail


def test_visiumhd_diameter_from_microns_per_pixel(tmp_path):
    folder = make_visiumhd(tmp_path / "HD4")
    path = folder / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    write(path, json.dumps({"bin_size_um": 8.0, "microns_per_pixel": 0.5, "tissue_hires_scalef": 0.1}))
    record = read_slide(SlideRef("HD4", "visiumhd", "VisiumHD", {"root": str(folder)}))
    assert record.spot_diameter_px == 16.0 and record.microns_per_pixel == 0.5


# ---------------------------------------------------------------- legacy ST


def test_st_matches_counts_and_detector(tmp_path):
    folder = make_st(tmp_path / "slide1")
    record = read_slide(SlideRef("slide1", "st", "ST", {"root": str(folder)}))
    spots = record.spots
    assert list(spots.spot_id) == ["10x12", "11x12", "10x13"]
    np.testing.assert_allclose(spots.x, [1603.0, 1750.0, 1600.0])
    np.testing.assert_allclose(spots.y, [1850.0, 1847.0, 2001.5])
    assert list(spots.array_col) == [10, 11, 10] and list(spots.array_row) == [12, 12, 13]
    assert spots.in_tissue.all()
    assert record.spot_diameter_px == pytest.approx(75.0, rel=0.01)  # pitch ~150 px per array unit
    assert record.microns_per_pixel == pytest.approx(200 / 150, rel=0.01)
    assert (record.expression.kind, record.expression.uri) == ("st_tsv", str(folder / "slide1_stdata.tsv.gz"))
    assert record.image_uri == str(folder / "slide1_HE.jpg")
    [(reason, detail)] = record.warnings
    assert reason == "unmatched_spots"
    assert "1 counts spot" in detail and "20x20" in detail and "13x13" in detail and "14x14" not in detail


def test_st_explicit_paths_plain_tsv_and_duplicates(tmp_path):
    folder = make_st(tmp_path / "slide2", name="s2")
    plain = write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n11x12\t2\n")
    paths = {"counts": str(plain), "spot_detector": str(folder / "s2_spot_detector.tsv"),
             "image": str(folder / "s2_HE.jpg")}
    record = st.read(SlideRef("s2", "st", "ST", paths))
    assert list(record.spots.spot_id) == ["10x12", "11x12"]
    assert "0 counts spot" in record.warnings[0][1]
    write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n10x12\t2\n")
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", paths))
    assert error.value.reason == "duplicate_spot_ids"
    write(tmp_path / "plain.tsv", "\tGeneA\n10x12\t1\n10.1x11.9\t2\n")  # both at array position 10x12
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", paths))
    assert error.value.reason == "duplicate_spot_ids" and "10.1x11.9" in error.value.detail
    with pytest.raises(SlideError) as error:
        st.read(SlideRef("s2", "st", "ST", dict(paths, spot_detector=str(tmp_path / "none.tsv"))))
    assert error.value.reason == "coords_unreadable" and "none.tsv" in error.value.detail


# ---------------------------------------------------------------- dispatch


def test_read_slide_dispatch():
    assert {name: layout.read for name, layout in LAYOUTS.items()} == {
        "stimage": stimage.read, "visium": visium.read, "visiumhd": visiumhd.read, "st": st.read}
    assert layout_names() == ("stimage", "visium", "visiumhd", "st") and technologies() == ("ST", "Visium", "VisiumHD")
    with pytest.raises(ValueError, match="unknown layout"):
        read_slide(SlideRef("x", "nope", "Visium", {}))


def _outcome(ref: SlideRef) -> tuple:
    """What reading a slide gives, comparable across discovery routes: spot count or the error reason."""
    try:
        record = read_slide(ref)
    except SlideError as error:
        return ("error", error.reason)
    return (ref.layout, ref.technology, len(record.spots), record.image_source, record.expression.kind)


def check_against_truth(record, truth) -> None:
    """Spots, pixel centres, diameter, scale, labels and image of a record match the generator's truth."""
    if record.ref.layout in ("visium", "visiumhd"):
        truth = truth.take(truth.in_tissue)
    assert list(record.spots.spot_id) == list(truth.spot_id)
    assert np.abs(record.spots.x - truth.x).max() <= 0.5 and np.abs(record.spots.y - truth.y).max() <= 0.5
    assert record.spot_diameter_px == pytest.approx(truth.spot_diameter_px, rel=1e-3)
    if record.microns_per_pixel is not None:
        assert record.microns_per_pixel == pytest.approx(truth.microns_per_pixel, rel=1e-3)
    if truth.labels is not None:
        assert list(record.spots.label) == list(truth.labels)
    assert record.image_uri == truth.image_path
    if truth.unmatched_counts or truth.unmatched_detector:
        [detail] = [d for reason, d in record.warnings if reason == "unmatched_spots"]
        assert all(name in detail for name in truth.unmatched_counts + truth.unmatched_detector[:5])


def test_read_synthetic_dataset(synthetic_dataset):
    from stlake.ingestion.discover import discover
    from stlake.synth import load_truth

    out, summary = Path(synthetic_dataset["root"]), synthetic_dataset
    scanned, listed = discover(str(out)), discover(str(out / "manifest.csv"))
    assert [r.slide_id for r in scanned] == [r.slide_id for r in listed] == sorted(summary["paths"])
    assert {r.slide_id: _outcome(r) for r in scanned} == {r.slide_id: _outcome(r) for r in listed}
    assert {r.layout for r in scanned} == {"stimage", "visium", "visiumhd", "st"}
    for ref in [*scanned, *listed]:
        if ref.slide_id in summary["corrupt"]:  # only duplicate ids are a reader's business; the rest fail later
            expected = summary["corrupt"][ref.slide_id]
            assert _outcome(ref)[0] == ("error" if expected == "duplicate_spot_ids" else ref.layout)
            continue
        record = read_slide(ref)
        assert len(record.spots) == summary["n_spots"][ref.slide_id]
        truth = load_truth(str(out), ref.slide_id)
        check_against_truth(record, truth)
        if ref.layout == "visiumhd":  # the 16 µm bins too
            coarse = read_slide(ref, ReaderOptions(bin_size_um=16))
            inside = truth.extra["bin016_in_tissue"].astype(bool)
            assert list(coarse.spots.spot_id) == list(truth.extra["bin016_spot_id"][inside])
            assert np.abs(coarse.spots.x - truth.extra["bin016_x"][inside]).max() <= 0.5
            assert coarse.spot_diameter_px == pytest.approx(2 * record.spot_diameter_px)
