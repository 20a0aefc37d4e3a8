"""The synthetic slide generator: layouts, exact truth, markers, determinism."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re

import cv2
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from stlake import synth
from stlake.synth import (
    MARKER_SIDE,
    SIZES,
    WRITERS,
    StimageSpec,
    decode_marker,
    generate,
    generate_stimage_slide,
    load_truth,
    locate_marker,
    marker_patch,
)
from stlake.synth.image import Markers, Renderer, Scene, render
from stlake.synth.imagefiles import write_png_stream
from stlake.synth.markers import MARKER_HALF, MAX_CODE

VALID = ("anndata_1", "anndata_2", "hest_1", "st_1", "stimage_hd_1", "stimage_st_1", "stimage_visium_1", "visium_1",
         "visium_2", "visiumhd_1")
BARCODE = re.compile(r"^[ACGT]{16}-1$")


@pytest.fixture(scope="module")
def dataset(synthetic_dataset):
    """(folder, summary) of the shared seed-0 dataset (tests/conftest.py)."""
    return synthetic_dataset["root"], synthetic_dataset


def read_image(path: str) -> np.ndarray:
    """BGR pixels of any image the generator writes (TIFF via tifffile, arrays inside .h5ad files)."""
    if "::/" in path:
        from stlake.ingestion import images
        with images.open_region_reader(path) as reader:
            return np.array(reader.read_rows(0, reader.info.height))
    if path.endswith(".tif"):
        import tifffile
        return np.ascontiguousarray(tifffile.imread(path)[:, :, ::-1])
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def h5_matrix(path: str) -> tuple[sp.csr_matrix, list[str], list[str], list[str]]:
    """(barcodes x genes CSR, barcodes, feature ids, feature names) of a 10x HDF5 file."""
    import h5py
    with h5py.File(path, "r") as handle:
        m = handle["matrix"]
        n_genes, n_barcodes = (int(v) for v in m["shape"][:])
        assert m["data"].dtype == np.int32 and m["indices"].dtype == np.int64
        csc = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_genes, n_barcodes))
        decode = lambda name: [v.decode() for v in m[name][:]]  # noqa: E731
        return (csc.T.tocsr(), decode("barcodes"), decode("features/id"), decode("features/name"))


def tree_digest(root: str) -> dict[str, str]:
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


# ---------------------------------------------------------------- markers

@pytest.mark.parametrize("code", [0, 1, 2, 77, 4991, 123456, 2 ** 24 + 5, MAX_CODE])
def test_marker_round_trip(code):
    patch = marker_patch(code)
    assert patch.shape == (MARKER_SIDE, MARKER_SIDE, 3) and patch.dtype == np.uint8
    assert decode_marker(patch) == code
    framed = np.full((MARKER_SIDE + 10, MARKER_SIDE + 10, 3), 200, np.uint8)
    framed[5:5 + MARKER_SIDE, 5:5 + MARKER_SIDE] = patch
    assert decode_marker(framed) == code


def test_marker_rejects_non_markers():
    assert MARKER_SIDE <= 14
    assert decode_marker(np.full((MARKER_SIDE, MARKER_SIDE, 3), 255, np.uint8)) is None
    assert decode_marker(np.zeros((5, 5, 3), np.uint8)) is None
    with pytest.raises(ValueError):
        marker_patch(MAX_CODE + 1)
    with pytest.raises(ValueError):
        marker_patch(-1)


def test_locate_marker_finds_the_cut_offset():
    rng = np.random.default_rng(0)
    image = rng.integers(120, 230, (200, 200, 3), dtype=np.uint8)
    y, x, code = 100, 90, 31337
    image[y - MARKER_HALF:y - MARKER_HALF + MARKER_SIDE, x - MARKER_HALF:x - MARKER_HALF + MARKER_SIDE] = \
        marker_patch(code)
    side = 40

    def cut(cy, cx):
        return image[cy - side // 2:cy - side // 2 + side, cx - side // 2:cx - side // 2 + side]

    assert locate_marker(cut(y, x), code) == (0, 0)
    assert locate_marker(cut(y - 1, x + 2), code) == (1, -2)  # tile cut 1 px too high, 2 px too far right
    assert locate_marker(cut(y + 3, x - 3), code) == (-3, 3)
    odd = image[y - 12:y + 13, x - 12:x + 13]  # odd side: centre pixel (12, 12) is the spot
    assert locate_marker(odd, code) == (0, 0) and decode_marker(odd) == code


# ---------------------------------------------------------------- the dataset

def test_summary_and_manifest(dataset):
    out, summary = dataset
    assert summary["slides"] == {"stimage": ["stimage_st_1", "stimage_visium_1", "stimage_hd_1"],
                                 "visium": ["visium_1", "visium_2"], "visiumhd": ["visiumhd_1"], "st": ["st_1"],
                                 "hest": ["hest_1"], "anndata": ["anndata_1", "anndata_2"]}
    assert summary["corrupt"] == {"stimage_broken_image": "image_unreadable",
                                  "stimage_broken_coords": "coords_outside_image",
                                  "stimage_broken_counts": "negative_counts",
                                  "stimage_broken_float": "non_integer_counts",
                                  "stimage_dup_ids": "duplicate_spot_ids"}
    assert 300 <= summary["n_positions"]["visium_1"] <= 700 and 200 <= summary["n_spots"]["visium_1"] <= 600
    assert 2000 <= summary["n_positions"]["visiumhd_1"] <= 5000
    assert 100 <= summary["n_spots"]["st_1"] <= 200
    manifest = pd.read_csv(os.path.join(out, "manifest.csv"), dtype=str, keep_default_na=False)
    assert list(manifest.columns) == ["slide_id", "layout", "technology", "path", "species", "tissue", "image",
                                      "coords", "counts", "annotation", "annotation_columns"]
    assert sorted(manifest.slide_id) == sorted([*VALID, *summary["corrupt"]])
    rows = manifest.set_index("slide_id")
    assert rows.loc["stimage_visium_1", "path"] == "stimage" and rows.loc["stimage_visium_1", "technology"] == "Visium"
    assert rows.loc["visium_2", "path"] == os.path.join("visium", "visium_2")
    assert rows.loc["visiumhd_1", "technology"] == "VisiumHD" and rows.loc["st_1", "layout"] == "st"
    assert (manifest[["image", "coords", "counts", "annotation"]] == "").all().all()
    for slide in VALID:
        assert os.path.exists(os.path.join(out, "truth", f"{slide}.npz"))


def test_generation_is_deterministic(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    generate(str(again), size="small", seed=0, corrupt=True)
    first, second = tree_digest(out), tree_digest(str(again))
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other = tmp_path / "other"
    generate(str(other), size="small", seed=1, layouts=("st",))
    assert load_truth(str(other), "st_1").counts.sum() != load_truth(out, "st_1").counts.sum()
    generate(str(other), size="small", seed=1, layouts=("visiumhd",))  # adds a layout, keeps the manifest's rows
    manifest = pd.read_csv(other / "manifest.csv")
    assert list(manifest.slide_id) == ["st_1", "visiumhd_1"]


def test_stimage_files(dataset):
    out, _ = dataset
    root = os.path.join(out, "stimage")
    for tech, slide in (("ST", "stimage_st_1"), ("Visium", "stimage_visium_1"), ("VisiumHD", "stimage_hd_1")):
        for part in (f"image/{slide}.png", f"coord/{slide}_coord.csv", f"gene_exp/{slide}_count.csv"):
            assert os.path.exists(os.path.join(root, tech, part)), part
        with open(os.path.join(root, tech, "coord", f"{slide}_coord.csv")) as handle:
            assert handle.readline() == ",yaxis,xaxis,r\n"
        with open(os.path.join(root, tech, "gene_exp", f"{slide}_count.csv")) as handle:
            assert handle.readline().startswith(",ACTB,") or slide == "stimage_visium_1"
    with open(os.path.join(root, "annotation", "stimage_st_1_anno.csv")) as handle:
        assert handle.readline() == "\tV2\n"
        assert re.match(r"^\d+x\d+\t(tumor|stroma|immune|normal)$", handle.readline().rstrip("\n"))
    assert not os.path.exists(os.path.join(root, "annotation", "stimage_hd_1_anno.csv"))
    meta = pd.read_csv(os.path.join(root, "meta", "meta_all_gene.csv"), dtype=str)
    assert list(meta.columns) == ["slide", "species", "tissue", "pmid", "title", "abstract", "keywords",
                                  "involve_cancer", "tech", "spot_num", "gene_num"]
    row = meta.set_index("slide").loc["stimage_visium_1"]
    assert row.tech == "Visium" and int(row.spot_num) == 300 and "," in row.title
    # magic bytes: the Visium "png" is JPEG, the others are PNG
    with open(os.path.join(root, "Visium", "image", "stimage_visium_1.png"), "rb") as handle:
        assert handle.read(3) == b"\xff\xd8\xff"
    with open(os.path.join(root, "ST", "image", "stimage_st_1.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_stimage_truth_matches_files(dataset):
    out, _ = dataset
    for tech, slide in (("ST", "stimage_st_1"), ("Visium", "stimage_visium_1"), ("VisiumHD", "stimage_hd_1")):
        truth = load_truth(out, slide)
        counts = pd.read_csv(os.path.join(out, "stimage", tech, "gene_exp", f"{slide}_count.csv"), index_col=0)
        assert list(counts.columns) == truth.gene_names
        assert list(counts.index) == list(truth.spot_id)
        assert all(dtype == np.int64 for dtype in counts.dtypes)
        assert np.array_equal(counts.to_numpy(), truth.counts.toarray())
        coords = pd.read_csv(os.path.join(out, "stimage", tech, "coord", f"{slide}_coord.csv"), index_col=0)
        assert list(coords.index) == list(truth.spot_id)
        assert np.array_equal(np.rint(coords.xaxis).astype(int), truth.x)
        assert np.array_equal(np.rint(coords.yaxis).astype(int), truth.y)
        assert np.allclose(coords.r, truth.spot_diameter_px / 2, atol=1e-3)
        assert truth.image_path == os.path.join(out, "stimage", tech, "image", f"{slide}.png")
        assert (truth.x >= 0).all() and (truth.x < truth.image_width).all()
        assert (truth.y >= 0).all() and (truth.y < truth.image_height).all()
        if tech != "VisiumHD":
            labels = pd.read_csv(os.path.join(out, "stimage", "annotation", f"{slide}_anno.csv"), sep="\t", index_col=0)
            assert list(labels.V2) == list(truth.labels) == list(truth.domain_labels())
        else:
            assert truth.labels is None
    ids = load_truth(out, "stimage_visium_1").gene_names
    assert "ENSG00000141510" in {g.split(".")[0] for g in ids} and "TP53" not in ids
    assert any(re.match(r"^ENSG\d{11}\.\d+$", g) for g in ids)
    assert all(BARCODE.match(s) for s in load_truth(out, "stimage_visium_1").spot_id)


def test_visium_files_and_truth(dataset):
    out, _ = dataset
    one, two = (os.path.join(out, "visium", s) for s in ("visium_1", "visium_2"))
    with open(os.path.join(one, "spatial", "tissue_positions_list.csv")) as handle:
        first = handle.readline().rstrip("\n").split(",")
    assert len(first) == 6 and BARCODE.match(first[0])
    with open(os.path.join(two, "spatial", "tissue_positions.csv")) as handle:
        assert handle.readline() == "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"
    assert not os.path.exists(os.path.join(two, "image.tif"))
    assert os.path.exists(os.path.join(one, "image.tif"))
    names = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    for root, slide in ((one, "visium_1"), (two, "visium_2")):
        truth = load_truth(out, slide)
        positions = (pd.read_csv(os.path.join(root, "spatial", "tissue_positions_list.csv"), header=None, names=names)
                     if slide == "visium_1" else pd.read_csv(os.path.join(root, "spatial", "tissue_positions.csv")))
        factors = json.load(open(os.path.join(root, "spatial", "scalefactors_json.json")))
        assert set(factors) >= {"spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef",
                                "fiducial_diameter_fullres"}
        assert list(positions.barcode) == list(truth.spot_id)
        assert np.array_equal(positions.in_tissue.to_numpy() == 1, truth.in_tissue)
        assert ((positions.array_row % 2) == (positions.array_col % 2)).all()
        assert positions.array_row.max() < SIZES["small"].visium_rows
        scale = 1.0 if slide == "visium_1" else factors["tissue_hires_scalef"]
        assert np.array_equal(np.rint(positions.pxl_col_in_fullres * scale).astype(int), truth.x)
        assert np.array_equal(np.rint(positions.pxl_row_in_fullres * scale).astype(int), truth.y)
        frac = np.mod(positions.pxl_col_in_fullres * scale, 1.0)
        assert (np.abs(frac - 0.5) >= 0.1).all()  # no rounding ties
        assert truth.spot_diameter_px == pytest.approx(factors["spot_diameter_fullres"] * scale)
        if slide == "visium_2":
            assert truth.image_path.endswith(os.path.join("spatial", "tissue_hires_image.png"))
            assert truth.spot_diameter_px >= 24
        expected = truth.counts[np.flatnonzero(truth.in_tissue)]
        assert not truth.counts[np.flatnonzero(~truth.in_tissue)].nnz
        if slide == "visium_1":
            matrix, barcodes, ids, symbols = h5_matrix(os.path.join(root, "filtered_feature_bc_matrix.h5"))
        else:
            folder = os.path.join(root, "filtered_feature_bc_matrix")
            with gzip.open(os.path.join(folder, "matrix.mtx.gz")) as handle:
                matrix = sp.csr_matrix(scipy.io.mmread(handle)).T.tocsr()
            barcodes = gzip.open(os.path.join(folder, "barcodes.tsv.gz"), "rt").read().split()
            features = pd.read_csv(os.path.join(folder, "features.tsv.gz"), sep="\t", header=None)
            assert (features[2] == "Gene Expression").all()
            ids, symbols = list(features[0]), list(features[1])
        assert barcodes == list(truth.spot_id[truth.in_tissue])
        assert symbols == truth.gene_names and ids == truth.gene_ids
        assert all(re.match(r"^ENSG\d{11}$", i) for i in ids) and "ENSG00000141510" in ids
        assert matrix.shape == expected.shape and (matrix != expected).nnz == 0
        assert truth.counts.dtype == np.int64


def test_visiumhd_files_and_truth(dataset):
    out, _ = dataset
    import pyarrow.parquet as pq
    root = os.path.join(out, "visiumhd", "visiumhd_1")
    truth = load_truth(out, "visiumhd_1")
    assert truth.image_path == os.path.join(root, "image.tif")
    with open(truth.image_path, "rb") as handle:
        assert handle.read(4) == b"II*\x00"
    for bin_um in (8, 16):
        folder = os.path.join(root, "binned_outputs", f"square_{bin_um:03d}um")
        table = pq.read_table(os.path.join(folder, "spatial", "tissue_positions.parquet")).to_pandas()
        assert list(table.columns) == ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                       "pxl_col_in_fullres"]
        assert table.barcode.str.match(rf"^s_{bin_um:03d}um_\d{{5}}_\d{{5}}-1$").all()
        factors = json.load(open(os.path.join(folder, "spatial", "scalefactors_json.json")))
        assert factors["bin_size_um"] == bin_um and factors["microns_per_pixel"] == 0.5
        assert factors["spot_diameter_fullres"] == bin_um / 0.5
        matrix, barcodes, _, symbols = h5_matrix(os.path.join(folder, "filtered_feature_bc_matrix.h5"))
        assert symbols == truth.gene_names
        if bin_um == 8:
            assert list(table.barcode) == list(truth.spot_id)
            assert np.array_equal(table.pxl_col_in_fullres.to_numpy(), truth.x)
            assert np.array_equal(table.pxl_row_in_fullres.to_numpy(), truth.y)
            expected = truth.counts[np.flatnonzero(truth.in_tissue)]
            assert barcodes == list(truth.spot_id[truth.in_tissue])
        else:
            parent = truth.extra["bin016_parent"]
            aggregate = sp.csr_matrix((np.ones(len(parent)), (parent, np.arange(len(parent)))))
            summed = (aggregate @ truth.counts).tocsr()
            keep = truth.extra["bin016_in_tissue"]
            assert list(table.barcode) == list(truth.extra["bin016_spot_id"])
            assert barcodes == list(truth.extra["bin016_spot_id"][keep])
            expected = summed[np.flatnonzero(keep)]
        assert matrix.shape == expected.shape and (matrix != expected).nnz == 0
    marked = truth.code >= 0
    assert 0 < marked.sum() < len(truth) and np.array_equal(truth.code[marked], np.flatnonzero(marked))


def test_st_files_and_truth(dataset):
    out, _ = dataset
    root = os.path.join(out, "st", "st_1")
    truth = load_truth(out, "st_1")
    detector = pd.read_csv(os.path.join(root, "st_1_spot_detector.tsv"), sep="\t")
    with open(os.path.join(root, "st_1_spot_detector.tsv")) as handle:
        assert handle.readline() == "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n"
    with gzip.open(os.path.join(root, "st_1_counts.tsv.gz"), "rt") as handle:
        assert handle.readline().startswith("\tACTB\t")
    counts = pd.read_csv(os.path.join(root, "st_1_counts.tsv.gz"), sep="\t", index_col=0)
    assert counts.index.str.match(r"^\d+x\d+$").all()
    assert detector.x.between(1, 33).all() and detector.y.between(1, 35).all()
    names = detector.x.astype(str) + "x" + detector.y.astype(str)
    selected = set(names[detector.selected == 1])
    assert sorted(set(counts.index) - set(names)) == truth.unmatched_counts and len(truth.unmatched_counts) == 2
    assert sorted(selected - set(counts.index)) == truth.unmatched_detector and len(truth.unmatched_detector) == 2
    assert list(counts.columns) == truth.gene_names
    assert np.array_equal(counts.loc[list(truth.spot_id)].to_numpy(), truth.counts.toarray())
    by_name = detector.assign(name=names).set_index("name")
    assert np.array_equal(np.rint(by_name.loc[list(truth.spot_id), "pixel_x"]).astype(int), truth.x)
    assert np.array_equal(np.rint(by_name.loc[list(truth.spot_id), "pixel_y"]).astype(int), truth.y)
    # pixel = offset + pitch * refined array coordinate, pitch = 200 µm in px
    slope = np.polyfit(detector.new_x, detector.pixel_x, 1)[0]
    assert slope == pytest.approx(200 / truth.microns_per_pixel, rel=1e-3)
    with open(truth.image_path, "rb") as handle:
        assert handle.read(3) == b"\xff\xd8\xff"


def test_count_density(dataset):
    out, _ = dataset
    for slide in VALID:
        truth = load_truth(out, slide)
        written = truth.in_tissue if truth.layout in ("visium", "visiumhd") else np.ones(len(truth), bool)
        counts = truth.counts[np.flatnonzero(written)]
        density = counts.nnz / np.prod(counts.shape)
        target = 0.05 if "hd" in slide else 0.10
        assert abs(density - target) < 0.3 * target, (slide, density)
        assert counts.data.min() > 0 and np.asarray(counts.sum(axis=1)).min() >= 0
    universe = [set(load_truth(out, s).gene_ids) for s in VALID]
    shared = set.intersection(*universe)
    assert len(shared) >= 0.5 * min(len(u) for u in universe)


def test_markers_sit_on_spot_centres(dataset):
    out, _ = dataset
    for slide in VALID:
        truth = load_truth(out, slide)
        image = read_image(truth.image_path)
        assert image.shape[:2] == (truth.image_height, truth.image_width)
        lossy = truth.image_path.endswith(".jpg") or slide == "stimage_visium_1"
        marked = np.flatnonzero(truth.code >= 0)
        for i in marked[:: max(1, len(marked) // 60)]:
            x, y, code = int(truth.x[i]), int(truth.y[i]), int(truth.code[i])
            tile = image[y - 12:y + 12, x - 12:x + 12]
            if not lossy:
                assert decode_marker(tile) == code, (slide, i)
            offset = locate_marker(tile, code)
            assert max(abs(offset[0]), abs(offset[1])) <= (1 if lossy else 0), (slide, i, offset)


def test_image_shows_tissue_and_domains(dataset):
    out, _ = dataset
    truth = load_truth(out, "visium_1")
    image = read_image(truth.image_path).astype(np.float32)
    radius = int(truth.spot_diameter_px // 2) - 2

    def mean_colour(i):
        x, y = int(truth.x[i]), int(truth.y[i])
        patch = image[y - radius:y + radius, x - radius:x + radius].reshape(-1, 3)
        return patch.mean(axis=0)

    inside = np.array([mean_colour(i) for i in np.flatnonzero(truth.in_tissue)])
    outside = np.array([mean_colour(i) for i in np.flatnonzero(~truth.in_tissue)])
    assert outside.mean() > inside.mean() + 30  # glass is much brighter than tissue
    domain = truth.domain[truth.in_tissue]
    means = np.array([inside[domain == d].mean(axis=0) for d in range(4)])
    gaps = [np.abs(means[a] - means[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 5  # every domain has its own colour


def test_corrupt_slides(dataset):
    out, summary = dataset
    root = os.path.join(out, "stimage", "Visium")
    assert cv2.imread(os.path.join(root, "image", "stimage_broken_image.png")) is None
    coords = pd.read_csv(os.path.join(root, "coord", "stimage_broken_coords_coord.csv"), index_col=0)
    width = cv2.imread(os.path.join(root, "image", "stimage_broken_coords.png")).shape[1]
    assert (coords.xaxis > width).any()
    with open(os.path.join(root, "gene_exp", "stimage_broken_counts_count.csv")) as handle:
        assert ",-3" in handle.read()
    with open(os.path.join(root, "gene_exp", "stimage_broken_float_count.csv")) as handle:
        assert ",1.5" in handle.read()
    dup = pd.read_csv(os.path.join(root, "coord", "stimage_dup_ids_coord.csv"), index_col=0)
    assert dup.index.duplicated().any()
    meta = pd.read_csv(os.path.join(out, "stimage", "meta", "meta_all_gene.csv"))
    assert set(summary["corrupt"]) <= set(meta.slide)


def test_sizes():
    full = SIZES["full"]
    assert full.visium_rows * full.visium_cols // 2 == 4992
    assert full.hd_bins ** 2 >= 100_000
    assert (full.st_nx, full.st_ny) == (33, 35)
    assert full.visium_genes >= 18000
    width_um = (full.visium_cols - 1) * 50 + 2 * full.visium_margin_um[0]
    assert 18000 <= width_um / full.visium_mpp <= 22000
    with pytest.raises(ValueError):
        synth.get_sizes("huge")
    with pytest.raises(ValueError):
        generate("/nonexistent-never-written", layouts=("visium", "nope"))


def test_every_reader_layout_has_a_synthetic_writer():
    from stlake.ingestion.readers import layout_names
    assert set(WRITERS) == set(layout_names())
    assert synth.LAYOUTS == tuple(WRITERS)


# ---------------------------------------------------------------- image writers

def test_png_stream_writer_matches_opencv(tmp_path):
    rng = np.random.default_rng(3)
    scene = Scene.build(rng, 400.0, 300.0, (50.0, 50.0, 350.0, 250.0))
    renderer = Renderer(scene, 333, 250, 1.2)
    image = render(renderer, Markers(np.array([100, 200]), np.array([60, 180]), np.array([7, 99])))
    image[:20, :20] = 255  # flat area: exercises the None/Up filters besides Paeth/Sub/Average
    path = str(tmp_path / "stream.png")
    write_png_stream(path, 333, 250, (image[a:b] for a, b in ((0, 1), (1, 64), (64, 200), (200, 250))))
    back = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert back is not None and np.array_equal(back[:, :, ::-1], image)
    assert decode_marker(back[60 - 10:60 + 10, 100 - 10:100 + 10]) == 7


def test_generate_stimage_slide_standalone(tmp_path, monkeypatch):
    import stlake.synth.imagefiles as imagefiles
    monkeypatch.setattr(imagefiles, "STREAM_PNG_PIXELS", 10_000)  # force the streamed PNG path
    root = str(tmp_path / "release")
    truth = generate_stimage_slide(root, StimageSpec("big_slide", "Visium", 120, 900, 80), seed=5)
    assert os.path.exists(os.path.join(root, "Visium", "coord", "big_slide_coord.csv"))
    assert truth.counts.shape == (120, 80) and len(truth.gene_names) == 80
    loaded = load_truth(root, "big_slide")
    assert np.array_equal(loaded.x, truth.x) and (loaded.counts != truth.counts).nnz == 0
    image = read_image(truth.image_path)
    assert image.shape == (truth.image_height, truth.image_width, 3)
    for i in range(0, 120, 7):
        x, y = int(truth.x[i]), int(truth.y[i])
        assert decode_marker(image[y - 10:y + 10, x - 10:x + 10]) == truth.code[i]
    meta = pd.read_csv(os.path.join(root, "meta", "meta_all_gene.csv"))
    assert list(meta.slide) == ["big_slide"]
    tiff = generate_stimage_slide(root, StimageSpec("tiff_slide", "ST", 30, 600, 60, image_format="tiff"), seed=5)
    with open(tiff.image_path, "rb") as handle:
        assert handle.read(4) == b"II*\x00"
    assert sorted(pd.read_csv(os.path.join(root, "meta", "meta_all_gene.csv")).slide) == ["big_slide", "tiff_slide"]
    with pytest.raises(ValueError, match="image side"):
        generate_stimage_slide(root, StimageSpec("cramped", "Visium", 5000, 300, 60), seed=5)
