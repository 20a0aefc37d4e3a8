"""``stlake qc``: the PNGs exist, are valid PNGs and have their fixed sizes (a real Delta lake, no Spark)."""
from __future__ import annotations

import struct
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from stlake.cli import main
from stlake.lake import schemas, tables
from stlake.qc import figures
from stlake.qc.data import read_slide
from stlake.qc.mosaic import slide_mosaic
from stlake.testing import lake as tl

SLIDE = tl.FakeSlide("qc_slide", 0, base_spots=30)
PITCH, TILE = 40, 32


def gridded(rows: pa.Table) -> pa.Table:
    """Spots on a 6-column grid (as a Visium slide's), tiles cut around their centres."""
    j = np.arange(rows.num_rows)
    x, y = 20.0 + PITCH * (j % 6), 20.0 + PITCH * (j // 6)
    columns = {"x": pa.array(x), "y": pa.array(y), "tile_x0": pa.array((x - TILE / 2).astype(np.int32)),
               "tile_y0": pa.array((y - TILE / 2).astype(np.int32)),
               "tile_size_px": pa.array(np.full(len(j), TILE, np.int32))}
    for name, values in columns.items():
        rows = rows.set_column(rows.schema.get_field_index(name), name, values.cast(rows.schema.field(name).type))
    return rows


def reject_rows(run_id: str, n: int) -> pa.Table:
    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    return pa.Table.from_pylist([dict(run_id=run_id, slide_id=f"bad_{i}", stage="read", severity="error",
                                      reason="image_corrupt", detail=f"image.tif: truncated at byte {i}",
                                      source_uri=None, rejected_at=at) for i in range(n)], schema=schemas.REJECTS)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("qc") / "lake")
    tl.write_genes(lake, [SLIDE.species])
    parts = tl.source_tables(SLIDE, tile_px=TILE, run_id="r1")
    parts["spots"] = gridded(parts["spots"])
    for table in ("expression", "spots", "slides"):
        tables.commit(lake, table, tables.write_data_files(lake, table, parts[table], f"r1-{table}"), run_id="r1")
    rejects = [f for run, n in (("r1", 3), ("r2", 55)) for f in
               tables.write_data_files(lake, "rejects", reject_rows(run, n), f"{run}-rejects")]
    tables.commit(lake, "rejects", rejects, run_id="r2")
    return lake


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature and the chunk layout."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def expected_size(kind: str) -> tuple[int, int]:
    width, height = figures.SIZES[kind]
    return round(width * figures.DPI), round(height * figures.DPI)


def test_qc_writes_every_picture_with_its_size(lake, tmp_path, capsys):
    out = tmp_path / "qc"
    assert main(["qc", "--lake", lake, "--slide", SLIDE.slide_id, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    kinds = {"qc_slide_counts.png": "outline", "qc_slide_label.png": "outline", "qc_slide_tissue.png": "outline",
             "qc_slide_tiles.png": "tiles", "qc_slide_counts_hist.png": "histogram",
             "rejects_r1.png": "rejects", "rejects_r2.png": "rejects"}
    assert sorted(p.name for p in out.iterdir()) == sorted(kinds) == sorted(p.split("/")[-1] for p in printed)
    for name, kind in kinds.items():
        assert png_size(out / name) == expected_size(kind), name


def test_the_thumbnail_is_a_mosaic_of_the_tiles_at_their_places(lake):
    slide = read_slide(lake, SLIDE.slide_id)
    assert slide.n_spots == SLIDE.n_spots and (slide.total_counts > 0).all()
    canvas = slide_mosaic(slide)
    assert canvas.scale == 1.0 and canvas.image.shape == (PITCH * 4 + TILE, PITCH * 5 + TILE, 3)
    for j in (0, 7, 29):  # the centre pixel of spot j's tile has the spot's colour (flat JPEG tiles)
        x, y = canvas.to_canvas(np.array([20.0 + PITCH * (j % 6)]), np.array([20.0 + PITCH * (j // 6)]))
        assert np.abs(canvas.image[int(y[0]), int(x[0])].astype(int) - tl.spot_color(SLIDE, j)).max() <= 6
    small = slide_mosaic(slide, max_side=60)
    assert max(small.image.shape[:2]) <= 60 and small.scale < 1


def test_qc_errors_are_one_line(lake, tmp_path, capsys):
    assert main(["qc", "--lake", lake, "--slide", "nope", "--out", str(tmp_path)]) == 3
    assert main(["qc", "--lake", str(tmp_path / "none"), "--slide", "x", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no slide 'nope'" in err[0] and "qc_slide" in err[0] and "no lake" in err[1]
    assert list(tmp_path.iterdir()) == []
