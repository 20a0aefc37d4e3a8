"""The hest reader (HEST-1k roots and saved samples) on small inline samples written with anndata."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stlake.ingestion.discover import discover
from stlake.ingestion.readers import hest, read_slide
from stlake.ingestion.records import SlideError, SlideRef
from test_reader_anndata import COUNTS, make_h5ad

META = {"id": "S1", "st_technology": "Visium", "species": "Homo sapiens", "organ": "Bowel",
        "oncotree_code": "COAD", "spot_diameter": 55.0, "inter_spot_dist": 100.0,
        "pixel_size_um_estimated": 0.5, "pixel_size_um_embedded": 0.2634}


def make_root(root, samples=("S1",), meta=META, wsi=True):
    """A HEST-1k root: st/{id}.h5ad, wsis/{id}.tif, metadata/{id}.json and folders stlake ignores."""
    for sample in samples:
        (root / "st").mkdir(parents=True, exist_ok=True)
        make_h5ad(root / "st" / f"{sample}.h5ad", COUNTS.astype(np.float32), libraries=("ST",))
        (root / "wsis").mkdir(exist_ok=True)
        if wsi:
            (root / "wsis" / f"{sample}.tif").write_bytes(b"II*\x00")
        (root / "metadata").mkdir(exist_ok=True)
        (root / "metadata" / f"{sample}.json").write_text(json.dumps({**meta, "id": sample}))
    for junk in ("patches", "thumbnails", "tissue_seg"):
        (root / junk).mkdir(exist_ok=True)
        (root / junk / "x.h5ad").write_bytes(b"")  # never read
    return root


def test_root_is_recognised_and_metadata_lands_in_the_record(tmp_path):
    root = make_root(tmp_path / "hest", samples=("S1", "S2"))
    refs = discover(str(tmp_path))
    assert [(r.slide_id, r.layout) for r in refs] == [("S1", "hest"), ("S2", "hest")]
    record = read_slide(refs[0])
    assert record.image_uri == str(root / "wsis" / "S1.tif") and record.image_source == "fullres"
    assert record.microns_per_pixel == pytest.approx(0.5) and record.spot_diameter_px == pytest.approx(110.0)
    assert record.ref.technology == "Visium" and record.ref.species == "Homo sapiens" and record.ref.tissue == "Bowel"
    assert record.ref.meta["oncotree_code"] == "COAD" and record.ref.meta["inter_spot_dist"] == "100.0"
    np.testing.assert_allclose(record.spots.x, [400, 440])  # level-0 pixels, in tissue only
    assert record.expression.options["matrix"] == "X"
    manifest = hest.complete(SlideRef("S2", "hest", "Visium", {"root": str(root)}), {})
    assert manifest.paths["h5ad"] == str(root / "st" / "S2.h5ad") and manifest.paths["image"].endswith("S2.tif")


def test_technologies_and_xenium(tmp_path):
    for given, expected in (("Spatial Transcriptomics", "ST"), ("Visium HD", "VisiumHD")):
        root = make_root(tmp_path / given.replace(" ", ""), meta={**META, "st_technology": given})
        assert read_slide(discover(str(root))[0]).ref.technology == expected
    root = make_root(tmp_path / "xen", meta={**META, "st_technology": "Xenium"})
    with pytest.raises(SlideError) as error:
        read_slide(discover(str(root))[0])
    assert error.value.reason == "unsupported_technology" and "Xenium" in error.value.detail


def test_scale_falls_back_and_the_embedded_image_is_used_without_a_wsi(tmp_path):
    root = make_root(tmp_path / "h", meta={"st_technology": "Visium", "spot_diameter": 55.0}, wsi=False)
    record = read_slide(discover(str(root))[0])
    assert record.image_uri.endswith("S1.h5ad::/uns/spatial/ST/images/hires") and record.coord_scale == 0.25
    assert record.microns_per_pixel == pytest.approx(2.0)  # 55 µm / 110 px fullres, then / 0.25
    (root / "metadata" / "S1.json").unlink()
    record = read_slide(discover(str(root))[0])
    assert [reason for reason, _ in record.warnings] == ["meta_missing", "hires_image"]
    bad = make_root(tmp_path / "bad", meta={**META, "pixel_size_um_estimated": -1})
    with pytest.raises(SlideError) as error:
        read_slide(discover(str(bad))[0])
    assert error.value.reason == "implausible_geometry"


def test_a_saved_sample_folder(tmp_path):
    folder = tmp_path / "sampleA"
    folder.mkdir()
    make_h5ad(folder / "aligned_adata.h5ad", libraries=("ST",))
    (folder / "aligned_fullres_HE.tif").write_bytes(b"II*\x00")
    (folder / "metrics.json").write_text(json.dumps(META))
    [ref] = discover(str(tmp_path))
    assert (ref.slide_id, ref.layout) == ("sampleA", "hest")
    assert read_slide(ref).image_uri == str(folder / "aligned_fullres_HE.tif")
