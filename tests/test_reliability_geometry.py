"""Reliability corpus, geometry: implausible spot sizes, scales and spacings are rejected by name.

Classes 4 (last point), 5 and 7 of the reliability issue. Each case copies a good slide of one of the
four layouts and damages its geometry: a spot radius or diameter of zero, below zero, text or far too
large, a scale factor of zero, a positions file whose columns shifted, spots stacked on one pixel, a
spot spacing that does not match the diameter. Each must end as ``implausible_geometry`` (numbers that
cannot be a spot) or ``coords_unreadable`` (values that are not numbers), naming the file and never
quoting what was planted in it (``SECRET-4242``). A uniformly white image lands with the warning
``uniform_tiles``. The memory-budget tests at the end check that tile buffers and encoded tiles stay
within ``--memory-budget`` too, not only the decoded image.
"""
from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import pandas as pd
import pytest

import corpus
from stlake.ingestion import images, plan, tiling, units
from stlake.ingestion.driver import ingest
from stlake.ingestion.options import IngestOptions
from stlake.ingestion.readers.common import make_spots
from stlake.ingestion.records import SlideRef
from stlake.lake import tables
from stlake.synth import StimageSpec, generate_stimage_slide

SECRET = "SECRET-4242"
MARKS = ("SECRET", "4242")  # nothing of a planted value may reach a detail
STIMAGE = "stimage_st_1"
COORDS = f"{STIMAGE}_coord.csv"
SCALEFACTORS = "scalefactors_json.json"
HD_SCALEFACTORS = "binned_outputs/square_008um/spatial/scalefactors_json.json"
DETECTOR = "st_1_spot_detector.tsv"

Build = Callable[[Path, dict], list[corpus.Row]]


@dataclass(frozen=True)
class Expect:
    """What a case's detail must say: the file it names (a path suffix) and a phrase."""

    file: str
    phrase: str


# ---------------------------------------------------------------- damaging copies of good slides

def stimage_case(slide_id: str, change_coords: Optional[Callable[[pd.DataFrame], None]] = None,
                 image: Optional[Callable[[Path], None]] = None) -> Build:
    """A copy of ``stimage_st_1`` whose coordinates (a frame: yaxis, xaxis, r) or image are changed."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        roles = corpus.stimage_files(dataset, STIMAGE, folder)
        if change_coords is not None:
            frame = pd.read_csv(roles["coords"], index_col=0, dtype={"r": object})
            change_coords(frame)
            frame.to_csv(roles["coords"])
        if image is not None:
            image(Path(roles["image"]))
        return [corpus.entry(slide_id, "stimage", species="human", **roles)]
    return build


def set_column(column: str, value: Any) -> Callable[[pd.DataFrame], None]:
    """Every row's ``column`` becomes ``value``."""
    def change(frame: pd.DataFrame) -> None:
        frame[column] = value
    return change


def all_at(x: float, y: float) -> Callable[[pd.DataFrame], None]:
    """Every spot centre at one pixel."""
    def change(frame: pd.DataFrame) -> None:
        frame["xaxis"], frame["yaxis"] = x, y
    return change


def white_image(path: Path) -> None:
    """Replace the image with a white PNG of the same size."""
    height, width = cv2.imread(str(path)).shape[:2]
    cv2.imwrite(str(path), np.full((height, width, 3), 255, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])


def folder_case(slide_id: str, slide: str, layout: str, technology: str, damage: Callable[[Path], None]) -> Build:
    """A copy of the folder slide ``slide`` with ``damage(folder)`` applied."""
    def build(folder: Path, dataset: dict) -> list[corpus.Row]:
        damage(corpus.copy_slide(dataset, slide, folder))
        return [corpus.entry(slide_id, layout, technology=technology, species="human", path=str(folder))]
    return build


def set_factor(relative: str, key: str, value: Any) -> Callable[[Path], None]:
    """Set ``key`` of the scalefactors JSON at ``relative`` (under the slide folder) to ``value``."""
    def damage(folder: Path) -> None:
        path = folder / relative
        factors = json.loads(path.read_text())
        factors[key] = value
        path.write_text(json.dumps(factors))
    return damage


def edit_text(relative: str, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Rewrite the text file at ``relative`` with ``change`` applied to its lines."""
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    return damage


def extra_field(every: bool) -> Callable[[list[str]], list[str]]:
    """Each line (``every``) or only the third line gets one more field."""
    def change(lines: list[str]) -> list[str]:
        return [line + f",{SECRET}" if every or n == 2 else line for n, line in enumerate(lines)]
    return change


def detector(change: Callable[[pd.DataFrame], None]) -> Callable[[Path], None]:
    """Rewrite the ST spot detector TSV after ``change`` edits its frame."""
    def damage(folder: Path) -> None:
        path = folder / DETECTOR
        frame = pd.read_csv(path, sep="\t")
        change(frame)
        frame.to_csv(path, sep="\t", index=False)
    return damage


def one_pixel(frame: pd.DataFrame) -> None:
    """Every detector spot at the first one's pixel."""
    frame["pixel_x"], frame["pixel_y"] = frame["pixel_x"].iloc[0], frame["pixel_y"].iloc[0]


def array_times_ten(frame: pd.DataFrame) -> None:
    """Array coordinates ten times too large: the fitted pixel pitch is a tenth of the real one."""
    frame["new_x"], frame["new_y"] = frame["new_x"] * 10, frame["new_y"] * 10


# ---------------------------------------------------------------- the cases

GEOMETRY = "implausible_geometry"
UNREADABLE = "coords_unreadable"
CASES = [
    corpus.Case("geo_stimage_radius_zero", stimage_case("geo_stimage_radius_zero", set_column("r", 0)), GEOMETRY),
    corpus.Case("geo_stimage_radius_negative", stimage_case("geo_stimage_radius_negative", set_column("r", -12)),
                GEOMETRY),
    corpus.Case("geo_stimage_radius_huge", stimage_case("geo_stimage_radius_huge", set_column("r", 5000)), GEOMETRY),
    corpus.Case("geo_stimage_radius_tiny", stimage_case("geo_stimage_radius_tiny", set_column("r", 1.0)), GEOMETRY),
    corpus.Case("geo_stimage_radius_text", stimage_case("geo_stimage_radius_text", set_column("r", SECRET)),
                UNREADABLE),
    corpus.Case("geo_stimage_one_pixel", stimage_case("geo_stimage_one_pixel", all_at(600.0, 500.0)), GEOMETRY),
    corpus.Case("geo_visium_diameter_zero", folder_case("geo_visium_diameter_zero", "visium_1", "visium", "Visium",
                                                        set_factor(f"spatial/{SCALEFACTORS}", "spot_diameter_fullres",
                                                                   0)), GEOMETRY),
    corpus.Case("geo_visium_diameter_negative",
                folder_case("geo_visium_diameter_negative", "visium_1", "visium", "Visium",
                            set_factor(f"spatial/{SCALEFACTORS}", "spot_diameter_fullres", -55.0)), GEOMETRY),
    corpus.Case("geo_visium_diameter_text",
                folder_case("geo_visium_diameter_text", "visium_1", "visium", "Visium",
                            set_factor(f"spatial/{SCALEFACTORS}", "spot_diameter_fullres", SECRET)), UNREADABLE),
    corpus.Case("geo_visium_diameter_huge",
                folder_case("geo_visium_diameter_huge", "visium_1", "visium", "Visium",
                            set_factor(f"spatial/{SCALEFACTORS}", "spot_diameter_fullres", 12000)), GEOMETRY),
    corpus.Case("geo_visium_hires_scalef_zero",
                folder_case("geo_visium_hires_scalef_zero", "visium_2", "visium", "Visium",
                            set_factor(f"spatial/{SCALEFACTORS}", "tissue_hires_scalef", 0)), GEOMETRY),
    corpus.Case("geo_visium_positions_extra_column",
                folder_case("geo_visium_positions_extra_column", "visium_1", "visium", "Visium",
                            edit_text("spatial/tissue_positions_list.csv", extra_field(every=True))), UNREADABLE),
    corpus.Case("geo_visium_positions_extra_field",
                folder_case("geo_visium_positions_extra_field", "visium_2", "visium", "Visium",
                            edit_text("spatial/tissue_positions.csv", extra_field(every=False))), UNREADABLE),
    corpus.Case("geo_visiumhd_bin_size_text",
                folder_case("geo_visiumhd_bin_size_text", "visiumhd_1", "visiumhd", "VisiumHD",
                            set_factor(HD_SCALEFACTORS, "bin_size_um", SECRET)), UNREADABLE),
    corpus.Case("geo_visiumhd_bin_size_negative",
                folder_case("geo_visiumhd_bin_size_negative", "visiumhd_1", "visiumhd", "VisiumHD",
                            set_factor(HD_SCALEFACTORS, "bin_size_um", -8)), GEOMETRY),
    corpus.Case("geo_visiumhd_mpp_zero",
                folder_case("geo_visiumhd_mpp_zero", "visiumhd_1", "visiumhd", "VisiumHD",
                            set_factor(HD_SCALEFACTORS, "microns_per_pixel", 0)), GEOMETRY),
    corpus.Case("geo_st_one_pixel", folder_case("geo_st_one_pixel", "st_1", "st", "ST", detector(one_pixel)),
                GEOMETRY),
    corpus.Case("geo_st_pitch_implausible",
                folder_case("geo_st_pitch_implausible", "st_1", "st", "ST", detector(array_times_ten)), GEOMETRY),
    corpus.Case("geo_uniform_white_image", stimage_case("geo_uniform_white_image", image=white_image),
                "uniform_tiles", severity="warning"),
]

#: The file each case's detail names, and a phrase saying what is wrong.
EXPECT = {
    "geo_stimage_radius_zero": Expect(COORDS, "column 'r'"),
    "geo_stimage_radius_negative": Expect(COORDS, "zero or negative"),
    "geo_stimage_radius_huge": Expect(f"{STIMAGE}.png", "shorter side"),
    "geo_stimage_radius_tiny": Expect(f"{STIMAGE}.png", "median spot spacing"),
    "geo_stimage_radius_text": Expect(COORDS, "non-numeric"),
    "geo_stimage_one_pixel": Expect(f"{STIMAGE}.png", "lie exactly on another spot"),
    "geo_visium_diameter_zero": Expect(SCALEFACTORS, "'spot_diameter_fullres'"),
    "geo_visium_diameter_negative": Expect(SCALEFACTORS, "positive"),
    "geo_visium_diameter_text": Expect(SCALEFACTORS, "is text, not a number"),
    "geo_visium_diameter_huge": Expect("image.tif", "shorter side"),
    "geo_visium_hires_scalef_zero": Expect(SCALEFACTORS, "'tissue_hires_scalef'"),
    "geo_visium_positions_extra_column": Expect("tissue_positions_list.csv", "have 7 fields"),
    "geo_visium_positions_extra_field": Expect("tissue_positions.csv", "line 3"),
    "geo_visiumhd_bin_size_text": Expect(SCALEFACTORS, "'bin_size_um' in"),
    "geo_visiumhd_bin_size_negative": Expect(SCALEFACTORS, "'bin_size_um' in"),
    "geo_visiumhd_mpp_zero": Expect(SCALEFACTORS, "'microns_per_pixel' in"),
    "geo_st_one_pixel": Expect(DETECTOR, "spot spacing"),
    "geo_st_pitch_implausible": Expect("st_1_HE.jpg", "median spot spacing"),
    "geo_uniform_white_image": Expect(f"{STIMAGE}.png", "one colour"),
}


@pytest.fixture(scope="module")
def run(spark, synthetic_dataset, tmp_path_factory) -> corpus.CorpusRun:
    """Every case ingested once, together with the good slides."""
    return corpus.run_corpus(spark, tmp_path_factory.mktemp("geometry"), synthetic_dataset, CASES)


def test_corpus_covers_every_layout():
    assert len(CASES) >= 15 and set(EXPECT) == {case.id for case in CASES}
    prefixes = ("geo_stimage_", "geo_visium_", "geo_visiumhd_", "geo_st_")
    assert all(any(case.id.startswith(prefix) for case in CASES) for prefix in prefixes)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_case_is_rejected_by_name_and_detail_says_where(run, case):
    corpus.assert_case(run, case)
    row = corpus.case_row(run, case)
    expect = EXPECT[case.id]
    assert expect.file in row["detail"] and expect.phrase in row["detail"], row["detail"]
    assert not any(mark in row["detail"] for mark in MARKS), row["detail"]
    assert "Traceback" not in row["detail"]


def test_no_case_ends_as_internal_error(run):
    assert not [row for row in run.rejects if row["reason"] == "internal_error"]


def test_good_slides_identical(run, corpus_baseline):
    corpus.assert_good_slides_identical(run, corpus_baseline)


def test_nothing_written_outside_the_lake(run):
    assert run.written_outside_lake == []


# ---------------------------------------------------------------- the memory budget holds for tiles too

def visium_ref(dataset: dict, tmp_path: Path, diameter: float) -> SlideRef:
    """A copy of ``visium_1`` (a 1900 px image) with ``spot_diameter_fullres`` set to ``diameter``."""
    folder = corpus.copy_slide(dataset, "visium_1", tmp_path / "visium")
    set_factor(f"spatial/{SCALEFACTORS}", "spot_diameter_fullres", diameter)(folder)
    return SlideRef("visium_big", "visium", "Visium", {"root": str(folder)})


def test_the_issue_slide_is_rejected_before_any_tile_is_cut(synthetic_dataset, tmp_path):
    """spot_diameter_fullres 12000 on a 1900 px image with a 256M budget: rejected at planning."""
    ref = visium_ref(synthetic_dataset, tmp_path, 12000)
    slide = plan.plan_slide(ref, IngestOptions(source="", lake="", memory_budget=256 << 20))
    assert slide.error is not None and slide.error.reason == GEOMETRY and not slide.units
    assert "12000 px" in slide.error.detail


def test_one_tile_over_the_budget_rejects_the_slide(synthetic_dataset, tmp_path):
    """A plausible diameter, but one tile's buffers do not fit the tile half of the budget."""
    ref = visium_ref(synthetic_dataset, tmp_path, 110.0)
    options = IngestOptions(source="", lake="", tile_px=400, memory_budget=4 << 20)
    slide = plan.plan_slide(ref, options)
    assert slide.error is not None and slide.error.reason == GEOMETRY, slide.error
    assert "400 px tile" in slide.error.detail and "memory budget" in slide.error.detail
    fits = plan.plan_slide(ref, IngestOptions(source="", lake="", tile_px=400, memory_budget=64 << 20))
    assert fits.error is None and fits.units


@pytest.fixture(scope="module")
def tiff_slide(tmp_path_factory) -> dict:
    """One STimage Visium slide of 300 spots on a 1600 px tiled TIFF."""
    root = tmp_path_factory.mktemp("budget") / "raw"
    truth = generate_stimage_slide(str(root), StimageSpec("budget_1", "Visium", 300, 1600, 60, image_format="tiff"),
                                   seed=7)
    return {"root": str(root), "truth": truth}


def test_tiles_and_encoded_output_stay_within_the_budget(spark, tiff_slide, tmp_path):
    """Large tiles and a small budget: tiles are written in batches, the slide lands identical to a free run.

    Like the decoded-region budget tests of test_ingest: the run's peak decoded bytes stay within the
    decode half of the budget, and each tile unit's tile buffers within the other half.
    """
    budget, free_lake, lake = 4 << 20, str(tmp_path / "free"), str(tmp_path / "tight")
    options = {"source": tiff_slide["root"], "tile_px": 160, "max_spots_per_task": 150}
    free = ingest(spark, IngestOptions(lake=free_lake, **options))
    report = ingest(spark, IngestOptions(lake=lake, memory_budget=budget, **options))
    assert report.landed == free.landed == ["budget_1"], report.rejected
    assert 0 < report.peak_decoded_bytes["budget_1"] <= tiling.decode_budget(budget)
    assert len(tables.active_files(lake, "spots")) > len(tables.active_files(free_lake, "spots"))  # batches
    assert corpus.landed(Path(lake), "spots", ["budget_1"]).equals(corpus.landed(Path(free_lake), "spots",
                                                                                 ["budget_1"]))


def tile_unit(tiff_slide: dict, budget: int, size: int = 160) -> plan.TileUnit:
    """A tile unit of every spot of the TIFF slide."""
    truth = tiff_slide["truth"]
    spots = make_spots(truth.spot_id, truth.x.astype(float), truth.y.astype(float))
    spec = tiling.TileSpec(size_px=size, encoding="png")
    return plan.TileUnit("budget_1", "Visium", truth.image_path, spots, spec, budget, (), 0)


def test_a_tile_unit_holds_at_most_its_budget(tiff_slide, tmp_path):
    """Traced allocations (decoded band, tile squares, encoded tiles, their rows) stay within the budget."""
    budget = 6 << 20
    free = units.run_tile_unit(tile_unit(tiff_slide, 1 << 30), str(tmp_path / "free"), "run")  # imports done
    unit = tile_unit(tiff_slide, budget)
    with images.open_region_reader(unit.image_uri) as reader:
        info = reader.info
    tiling.check_tile_fits(unit.spec, info, budget)
    tracemalloc.start()
    try:
        result = units.run_tile_unit(unit, str(tmp_path / "lake"), "run")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows == len(unit.spots) and len([f for f in result.files if f.table == "spots"]) > 1
    assert result.peak_decoded_bytes + result.peak_tile_bytes <= budget
    assert peak <= budget, f"{peak / 2**20:.1f} MiB traced, budget {budget / 2**20:.1f} MiB"
    assert len([f for f in free.files if f.table == "spots"]) == 1 and free.rows == result.rows
