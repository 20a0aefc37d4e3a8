"""The layout registry, dispatch, and every reader against the synthetic dataset's truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stlake.ingestion.readers import (
    LAYOUTS,
    ReaderOptions,
    anndata,
    hest,
    layout_names,
    read_slide,
    st,
    stimage,
    technologies,
    visium,
    visiumhd,
)
from stlake.ingestion.records import SlideError, SlideRef


def test_read_slide_dispatch():
    assert {name: layout.read for name, layout in LAYOUTS.items()} == {
        "stimage": stimage.read, "visium": visium.read, "visiumhd": visiumhd.read, "st": st.read,
        "hest": hest.read, "anndata": anndata.read}
    assert layout_names() == ("stimage", "visium", "visiumhd", "st", "hest", "anndata")
    assert technologies() == ("ST", "Visium", "VisiumHD")
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
    if truth.labels is not None and (record.label_sets or record.ref.layout not in ("anndata", "hest")):
        assert list(record.spots.label) == list(truth.labels)  # obs labels need the manifest's annotation_columns
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
    assert {r.layout for r in scanned} == set(layout_names())
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
