"""The anndata reader (scanpy/squidpy ``.h5ad``), its matrix format and its image arrays, on tiny files
written with anndata itself."""
from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stlake.ingestion import images, matrices
from stlake.ingestion.discover import discover
from stlake.ingestion.readers import ReaderOptions, read_slide
from stlake.ingestion.readers import anndata as reader
from stlake.ingestion.records import ExpressionSource, SlideError, SlideRef

COUNTS = np.array([[0, 3, 0, 1], [2, 0, 0, 0], [0, 0, 7, 1]], dtype=np.int64)
IDS = ["AAAC-1", "AAAG-1", "AAAT-1"]
GENES = ["TP53", "ACTB", "GAPDH", "MT-CO1"]
FACTORS = {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05}


def make_h5ad(path, X=COUNTS, *, layers=None, raw=None, libraries=("lib",), spatial=True, image=None,
              in_tissue=(1, 0, 1)) -> str:
    """A small AnnData as scanpy's read_visium shapes it, written with ``write_h5ad``."""
    obs = pd.DataFrame({"in_tissue": list(in_tissue), "array_row": [0, 1, 2], "array_col": [0, 1, 0]},
                       index=pd.Index(IDS))
    var = pd.DataFrame({"gene_ids": [f"ENSG0000000000{i}" for i in range(4)],
                        "feature_types": ["Gene Expression"] * 3 + ["Antibody Capture"]}, index=pd.Index(GENES))
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    if spatial:
        adata.obsm["spatial"] = np.array([[400, 200], [420, 240], [440, 280]])
    hires = image if image is not None else np.zeros((100, 150, 3), np.float32)
    adata.uns["spatial"] = {lib: {"images": {"hires": hires}, "scalefactors": FACTORS} for lib in libraries}
    for name, matrix in (layers or {}).items():
        adata.layers[name] = matrix
    if raw is not None:
        adata.raw = anndata.AnnData(X=raw, obs=obs, var=var)
    adata.write_h5ad(path)
    return str(path)


def rows_of(source) -> dict:
    """spot id -> {gene name: count} of a whole matrix, read chunk by chunk (tiny chunks)."""
    plan = matrices.plan_expression(source, 8)
    out = {}
    for chunk in plan.chunks:
        for batch in matrices.read_chunk(source, plan, chunk):
            for i, spot in enumerate(batch.spot_ids):
                part = slice(batch.indptr[i], batch.indptr[i + 1])
                out[spot] = dict(zip(np.array(plan.genes)[batch.indices[part]].tolist(), batch.counts[part].tolist()))
    return out


EXPECTED = {"AAAC-1": {"ACTB": 3}, "AAAG-1": {"TP53": 2}, "AAAT-1": {"GAPDH": 7}}  # MT-CO1: not Gene Expression


@pytest.mark.parametrize("matrix", [COUNTS.astype(np.float32), sp.csr_matrix(COUNTS.astype(np.float32)),
                                    sp.csc_matrix(COUNTS.astype(np.int32))], ids=["dense", "csr", "csc"])
def test_counts_of_every_encoding_are_read_exactly(tmp_path, matrix):
    path = make_h5ad(tmp_path / "s.h5ad", matrix)
    record = read_slide(SlideRef("s", "anndata", "Visium", {"root": path}))
    assert (record.expression.kind, record.expression.options["matrix"]) == ("h5ad", "X")
    assert rows_of(record.expression) == EXPECTED


def test_spots_scale_and_embedded_hires_image(tmp_path):
    rgb = (np.arange(100 * 150 * 3) % 256).reshape(100, 150, 3).astype(np.uint8)
    path = make_h5ad(tmp_path / "s.h5ad", image=rgb.astype(np.float32) / 255.0)
    record = read_slide(SlideRef("s", "anndata", "Visium", {"root": path}))
    assert list(record.spots.spot_id) == ["AAAC-1", "AAAT-1"]  # in tissue only
    np.testing.assert_allclose(record.spots.x, [100, 110]) and np.testing.assert_allclose(record.spots.y, [50, 70])
    assert list(record.spots.array_row) == [0, 2]
    assert record.spot_diameter_px == pytest.approx(27.5) and record.microns_per_pixel == pytest.approx(2.0)
    assert record.image_uri == f"{path}::/uns/spatial/lib/images/hires" and record.image_source == "hires"
    assert record.warnings[0][0] == "hires_image"
    assert images.probe_image(record.image_uri).width == 150
    with images.open_region_reader(record.image_uri) as region:
        np.testing.assert_array_equal(region.read_region(10, 20, 30, 60), rgb[10:20, 30:60, ::-1])
    everything = read_slide(SlideRef("s", "anndata", "Visium", {"root": path}), ReaderOptions(in_tissue_only=False))
    assert len(everything.spots) == 3


def test_fullres_image_beside_the_file_and_in_the_manifest(tmp_path):
    path = make_h5ad(tmp_path / "s.h5ad")
    (tmp_path / "s.tif").write_bytes(b"II*\x00")
    make_h5ad(tmp_path / "t.h5ad")
    refs = discover(str(tmp_path))
    assert [(r.slide_id, r.layout, r.paths.get("image")) for r in refs] == [
        ("s", "anndata", str(tmp_path / "s.tif")), ("t", "anndata", None)]
    record = read_slide(refs[0])
    assert record.image_uri == str(tmp_path / "s.tif") and record.coord_scale == 1.0
    np.testing.assert_allclose(record.spots.x, [400, 440])
    assert record.spot_diameter_px == 110.0 and record.microns_per_pixel == pytest.approx(0.5)
    other = reader.complete(SlideRef("s", "anndata", "Visium", {"root": path}), {})
    assert other.paths["image"] == str(tmp_path / "s.tif")


def test_raw_counts_are_chosen_over_a_normalised_x(tmp_path):
    logged = np.log1p(COUNTS).astype(np.float32)
    layered = make_h5ad(tmp_path / "a.h5ad", logged, layers={"counts": sp.csr_matrix(COUNTS)},
                        raw=sp.csr_matrix(logged))
    source = read_slide(SlideRef("a", "anndata", "Visium", {"root": layered})).expression
    assert source.options == {"matrix": "layers/counts", "var": "var"} and rows_of(source) == EXPECTED
    in_raw = make_h5ad(tmp_path / "b.h5ad", logged, raw=sp.csr_matrix(COUNTS.astype(np.float32)))
    source = read_slide(SlideRef("b", "anndata", "Visium", {"root": in_raw})).expression
    assert source.options == {"matrix": "raw/X", "var": "raw/var"} and rows_of(source) == EXPECTED
    only_logged = make_h5ad(tmp_path / "c.h5ad", logged)
    with pytest.raises(SlideError) as error:
        read_slide(SlideRef("c", "anndata", "Visium", {"root": only_logged}))
    assert error.value.reason == "normalised_counts" and "raw counts" in error.value.detail


def test_a_fraction_in_the_matrix_is_non_integer_counts(tmp_path):
    counts = COUNTS.astype(np.float32)
    counts[2, 2] = 0.5
    path = make_h5ad(tmp_path / "s.h5ad", sp.csr_matrix(counts))
    with pytest.raises(SlideError) as error:  # the reader's sample sees it: X is not counts
        read_slide(SlideRef("s", "anndata", "Visium", {"root": path}))
    assert error.value.reason == "normalised_counts"
    with pytest.raises(SlideError) as error:  # past the sample, the expression unit finds it
        rows_of(ExpressionSource("h5ad", path, {"matrix": "X", "var": "var"}))
    assert error.value.reason == "non_integer_counts" and "AAAT-1" in error.value.detail


def test_bad_files_are_named(tmp_path):
    cases = {
        "no_spatial": (make_h5ad(tmp_path / "n.h5ad", spatial=False), "coords_unreadable", "obsm['spatial']"),
        "two_libraries": (make_h5ad(tmp_path / "l.h5ad", libraries=("a", "b")), "coords_unreadable", "library_id"),
        "not_hdf5": (str(tmp_path / "x.h5ad"), "coords_unreadable", "not a readable HDF5"),
    }
    (tmp_path / "x.h5ad").write_bytes(b"not an hdf5 file")
    for name, (path, reason, words) in cases.items():
        with pytest.raises(SlideError) as error:
            read_slide(SlideRef(name, "anndata", "Visium", {"root": path}))
        assert error.value.reason == reason and words in error.value.detail, name
    named = SlideRef("l", "anndata", "Visium", {"root": str(tmp_path / "l.h5ad")}, meta={"library_id": "b"})
    chosen = read_slide(named)
    assert chosen.image_uri.endswith("/uns/spatial/b/images/hires")
