"""AnnData export: ingest synthetic slides, export them with the Spark job, read them back with anndata.

Counts are compared with the generator's truth, spot centres with the truth's pixel positions (a
slide with a full-resolution image and one with only the hires PNG), and the image + scale factors
with what ``sc.pl.spatial`` computes (spot centres times ``tissue_hires_scalef`` fall on the tiles).
"""
from __future__ import annotations

import os

import anndata as ad
import cv2
import numpy as np
import pytest
import scipy.sparse as sp

import corpus
from stlake.cli import main
from stlake.export.anndata import ExportError, to_anndata, var_names
from stlake.export.job import export_anndata
from stlake.ingestion import IngestOptions, ingest
from stlake.lake import genes
from stlake.synth import load_truth

SLIDES = ["visium_1", "visium_2"]


@pytest.fixture(scope="module")
def exported(spark, synthetic_dataset, tmp_path_factory) -> dict:
    """The two Visium slides ingested into a lake and exported to ``out``."""
    root = tmp_path_factory.mktemp("export")
    manifest = corpus.write_manifest(root / "manifest.csv", corpus.good_rows(synthetic_dataset, SLIDES))
    lake, out = str(root / "lake"), str(root / "h5ad")
    report = ingest(spark, IngestOptions(source=str(manifest), lake=lake))
    assert report.landed == SLIDES
    results = export_anndata(spark, lake, out)
    return {"lake": lake, "out": out, "results": results, "root": synthetic_dataset["root"]}


def landed_truth(root: str, slide_id: str):
    truth = load_truth(root, slide_id)
    return truth.take(np.flatnonzero(truth.in_tissue))


def test_one_file_per_slide(exported):
    assert [r.slide_id for r in exported["results"]] == SLIDES
    assert all(r.error is None and r.n_obs > 0 and r.bytes > 0 for r in exported["results"])
    assert sorted(os.listdir(exported["out"])) == [f"{s}.h5ad" for s in SLIDES]


@pytest.mark.parametrize("slide_id", SLIDES)
def test_counts_round_trip_exactly(exported, slide_id):
    adata = ad.read_h5ad(os.path.join(exported["out"], f"{slide_id}.h5ad"))
    truth = landed_truth(exported["root"], slide_id)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.int32
    assert sorted(adata.obs_names) == sorted(truth.spot_id.tolist())
    species = genes.normalise_species("human")
    truth_ids = np.array([genes.gene_id(species, genes.gene_key(s, species)[0]) for s in truth.gene_symbols])
    order = {spot: i for i, spot in enumerate(truth.spot_id.tolist())}
    expected = truth.counts.tocsr()[[order[s] for s in adata.obs_names]]
    column = {gid: j for j, gid in enumerate(adata.var["gene_id"].tolist())}
    dense = np.zeros((adata.n_obs, len(truth_ids)), np.int64)
    for j, gid in enumerate(truth_ids):
        if gid in column:
            dense[:, j] = adata.X[:, column[gid]].toarray().ravel()
    assert np.array_equal(dense, expected.toarray())
    assert adata.X.sum() == expected.sum()
    by_symbol = dict(zip(truth.gene_symbols, truth.gene_ids))
    symbols = [s for s in adata.var_names if s in by_symbol]
    assert symbols and all(adata.var.loc[s, "gene_ids"] == by_symbol[s] for s in symbols)


@pytest.mark.parametrize("slide_id", SLIDES)
def test_spot_centres_and_image_line_up_like_scanpy_draws_them(exported, slide_id):
    adata = to_anndata(exported["lake"], slide_id)
    truth = landed_truth(exported["root"], slide_id)
    order = {spot: i for i, spot in enumerate(truth.spot_id.tolist())}
    index = [order[s] for s in adata.obs_names]
    coord_scale = adata.uns["stlake"]["coord_scale"]
    tiled = adata.obsm["spatial"] * coord_scale  # full resolution -> pixels of the tiled image (truth's)
    assert np.abs(tiled[:, 0] - truth.x[index]).max() <= 1 and np.abs(tiled[:, 1] - truth.y[index]).max() <= 1
    spatial = adata.uns["spatial"][slide_id]
    factors, image = spatial["scalefactors"], spatial["images"]["hires"]
    assert image.dtype == np.uint8 and image.ndim == 3 and max(image.shape[:2]) <= 2000
    assert factors["spot_diameter_fullres"] * coord_scale == pytest.approx(truth.spot_diameter_px, rel=0.02)
    # sc.pl.spatial: circles at obsm['spatial'] * tissue_hires_scalef on images['hires']
    drawn = np.round(adata.obsm["spatial"] * factors["tissue_hires_scalef"]).astype(int)
    assert (drawn >= 0).all() and (drawn[:, 0] < image.shape[1]).all() and (drawn[:, 1] < image.shape[0]).all()
    # under each spot (beside its centre marker): the slide's own pixels, pasted from its tiles
    source = cv2.cvtColor(cv2.imread(truth.image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    source = cv2.resize(source, image.shape[1::-1], interpolation=cv2.INTER_AREA)
    beside = 0.35 * factors["spot_diameter_fullres"] * factors["tissue_hires_scalef"]
    x, y = (np.round(drawn + [beside, 0]).astype(int)).T
    assert np.median(np.abs(image[y, x].astype(int) - source[y, x]).max(axis=1)) <= 15
    assert np.median(np.abs(255 - source[y, x].astype(int)).max(axis=1)) > 50  # tissue there, not white
    assert (image[0, 0] == 255).all()  # no tile in the corner
    low = spatial["images"]["lowres"]
    assert factors["tissue_lowres_scalef"] / factors["tissue_hires_scalef"] == pytest.approx(
        low.shape[1] / image.shape[1], rel=0.02)
    assert set(adata.obs.columns) >= {"in_tissue", "array_row", "array_col", "label", "tissue_fraction"}


def test_var_names_fall_back_to_the_gene_key_for_repeated_symbols():
    assert var_names(["TP53", "MATR3", "MATR3", None], ["TP53", "MATR3", "ENSG00000285053", "ENSG00000000001"]) \
        == ["TP53", "MATR3", "ENSG00000285053", "ENSG00000000001"]


def test_errors_end_in_one_line(exported, tmp_path, capsys):
    assert main(["export", "--lake", str(tmp_path / "nolake"), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("stlake export: no lake at") and "\n" not in err
    assert main(["export", "--lake", exported["lake"], "--slides", "nope", "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err.strip()
    assert "not in the lake's slides table: 'nope'" in err and "\n" not in err
    with pytest.raises(ExportError, match="is not in the lake"):
        to_anndata(exported["lake"], "nope")


def test_cli_exports_the_slides_a_where_selects(exported, tmp_path, capsys):
    out = tmp_path / "where"
    assert main(["export", "--lake", exported["lake"], "--where", "slide_id = 'visium_2'", "--out", str(out),
                 "--master", "local[2]"]) == 0
    assert os.listdir(out) == ["visium_2.h5ad"] and '"slide_id": "visium_2"' in capsys.readouterr().out


def test_scanpy_draws_the_spots_on_the_tissue(exported, tmp_path):
    """Where scanpy is installed (it is not a dependency): ``sc.pl.spatial`` reads the layout as its own."""
    sc = pytest.importorskip("scanpy")
    import matplotlib
    matplotlib.use("Agg")
    adata = ad.read_h5ad(os.path.join(exported["out"], "visium_2.h5ad"))
    for img_key in ("hires", "lowres"):
        axes = sc.pl.spatial(adata, img_key=img_key, color="tissue_fraction", show=False)
        assert axes and axes[0].images, img_key  # the tissue image is drawn under the spots
