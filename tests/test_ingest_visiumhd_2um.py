"""VisiumHD at 2 µm end to end: a small synthetic slide's 2 µm level ingested, checked against exact truth."""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
import scipy.sparse as sp
import tifffile

from stlake.ingestion.driver import ingest
from stlake.ingestion.options import IngestOptions
from stlake.lake import genes, tables
from stlake.synth import generate, load_truth
from stlake.synth.specs import get_sizes

HD_BINS = 16  # 8 µm bins per side: 64 x 64 = 4,096 2-µm bins


@pytest.fixture(scope="module")
def hd_lake(spark, tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("hd2") / "data")
    generate(root, size=dataclasses.replace(get_sizes("small"), hd_bins=HD_BINS), layouts=("visiumhd",))
    lake_dir = str(tmp_path_factory.mktemp("hd2lake"))
    options = IngestOptions(source=os.path.join(root, "manifest.csv"), lake=lake_dir, encoding="png", bin_size_um=2)
    return {"root": root, "dir": lake_dir, "report": ingest(spark, options), "truth": load_truth(root, "visiumhd_1")}


def _rows(lake_dir: str, table: str, columns: list[str]) -> list[dict]:
    data = tables.read_table(lake_dir, table, columns=["slide_id", *columns])
    return data.filter(pc.equal(data["slide_id"], "visiumhd_1")).to_pylist()


def test_synth_levels_nest_exactly(hd_lake):
    """8 µm counts are the sums of their 4 x 4 2-µm bins; the three Space Ranger folders are written."""
    truth, extra = hd_lake["truth"], hd_lake["truth"].extra
    folder = os.path.join(hd_lake["root"], "visiumhd", "visiumhd_1", "binned_outputs")
    assert sorted(os.listdir(folder)) == ["square_002um", "square_008um", "square_016um"]
    for level in os.listdir(folder):
        assert os.path.exists(os.path.join(folder, level, "filtered_feature_bc_matrix.h5"))
        assert os.path.exists(os.path.join(folder, level, "spatial", "tissue_positions.parquet"))
    n2 = len(extra["bin002_spot_id"])
    assert n2 == (4 * HD_BINS) ** 2 and str(extra["bin002_spot_id"][1]) == "s_002um_00000_00001-1"
    counts2 = sp.csr_matrix((extra["bin002_data"], extra["bin002_indices"], extra["bin002_indptr"]),
                            shape=(n2, truth.counts.shape[1]))
    parent = sp.csr_matrix((np.ones(n2), (extra["bin002_parent"], np.arange(n2))), shape=(len(truth), n2))
    assert abs(parent @ counts2 - truth.counts).sum() == 0


def test_2um_bins_land_with_their_exact_counts_and_pixels(hd_lake):
    truth, extra = hd_lake["truth"], hd_lake["truth"].extra
    report = hd_lake["report"]
    assert report.landed == ["visiumhd_1"] and not report.rejected
    keep = np.flatnonzero(extra["bin002_in_tissue"])
    ids = extra["bin002_spot_id"].astype(str)
    index = {str(ids[i]): i for i in keep}
    spots = _rows(hd_lake["dir"], "spots", ["spot_id", "x", "y", "tile", "tile_x0", "tile_y0", "tile_size_px"])
    assert sorted(r["spot_id"] for r in spots) == sorted(index)
    image = tifffile.imread(truth.image_path)
    for row in spots:
        i = index[row["spot_id"]]
        assert (row["x"], row["y"]) == (extra["bin002_x"][i], extra["bin002_y"][i])
        assert row["tile_size_px"] == 4
        tile = cv2.cvtColor(cv2.imdecode(np.frombuffer(row["tile"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        x0, y0 = row["tile_x0"], row["tile_y0"]
        assert abs(x0 + 2 - row["x"]) <= 1 and abs(y0 + 2 - row["y"]) <= 1
        assert np.array_equal(tile, image[y0:y0 + 4, x0:x0 + 4, :3]), row["spot_id"]
    counts2 = sp.csr_matrix((extra["bin002_data"], extra["bin002_indices"], extra["bin002_indptr"]),
                            shape=(len(ids), truth.counts.shape[1]))
    species = genes.normalise_species("human")
    column_ids = np.array([genes.gene_id(species, genes.gene_key(name, species)[0]) for name in truth.gene_symbols])
    expression = _rows(hd_lake["dir"], "expression", ["spot_id", "gene_ids", "counts"])
    assert len(expression) == len(index)
    for row in expression:
        source = counts2[index[row["spot_id"]]]
        assert dict(zip(row["gene_ids"], row["counts"])) == dict(zip(column_ids[source.indices].tolist(),
                                                                      source.data.tolist())), row["spot_id"]
