"""The Petastorm stream over a Delta snapshot: rows, filters, panels, normalisation, shards, order."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from stlake.derived import hvg as panel_mod
from stlake.lake import tables
from stlake.stream import StreamSpec, make_loader, resolve_panel
from stlake.stream.fs import petastorm_inputs
from stlake.stream.reader import RowBuffer
from stlake.stream.snapshot import select_files
from stlake.stream.transforms import densify, flatten_lists, jittered_planes
from stlake.testing import lake as tl

N_GENES = 30
SLIDES = [tl.FakeSlide("a0", 0, "Visium"), tl.FakeSlide("a1", 1, "ST"),
          tl.FakeSlide("a2", 2, "Visium", tissue="liver"), tl.FakeSlide("m3", 3, "VisiumHD", species="mouse"),
          tl.FakeSlide("a4", 4, "ST", base_spots=9)]
REINGESTED = tl.FakeSlide("a1", 1, "ST", variant=1)  # 13 spots, other counts, other colours
CURRENT = [REINGESTED if s.slide_id == "a1" else s for s in SLIDES]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("lake"))
    tl.write_genes(lake, ["human", "mouse"], N_GENES)
    tl.write_pairs(lake, SLIDES, N_GENES, run_id="r1")
    tl.write_pairs(lake, [REINGESTED], N_GENES, run_id="r2")  # old a1 file leaves the snapshot, stays on disk
    ids = tl.gene_ids("human", N_GENES)
    rows = pa.table({"panel": ["mini"] * 3, "rank": pa.array([1, 2, 3], pa.int32()),
                     "gene_id": pa.array(ids[[6, 2, 9]], pa.int64()), "species": ["human"] * 3,
                     "symbol": ["GENE006", "GENE002", "GENE009"], "score": [3.0, 2.0, 1.0]})
    panel_mod.write_panel(lake, "mini", rows)
    return lake


def spots(slides=CURRENT):
    """{(slide_id, spot_id): (slide, j)} of the given slides."""
    return {(s.slide_id, f"{s.slide_id}-s{j:04d}"): (s, j) for s in slides for j in range(s.n_spots)}


def stream(lake: str, **options) -> list[dict]:
    options.setdefault("panel", ["GENE000"])
    options.setdefault("batch_size", 7)
    with make_loader(StreamSpec(lake=lake, **options)) as loader:
        return list(loader)


def keys(batches: list[dict]) -> list[tuple[str, str]]:
    return [k for b in batches for k in zip(b["slide_id"], b["spot_id"])]


def expected_dense(slide, j, columns: list[int], mode="none", target_sum=1e4) -> np.ndarray:
    counts = tl.spot_counts(slide, j, N_GENES)
    total = sum(counts.values())
    raw = np.array([counts.get(g, 0) if g is not None else 0 for g in columns], np.float64)
    if mode == "none":
        return raw
    if mode == "normalize_total_log1p":
        raw = raw / total * target_sum  # scanpy.pp.normalize_total, then scanpy.pp.log1p
    return np.log1p(raw)


# ---------------------------------------------------------------- rows of the snapshot

def test_reader_reads_exactly_the_snapshot_after_a_slide_was_reingested(lake):
    table_dir = os.path.join(lake, "pairs")
    on_disk = [f for f in os.listdir(table_dir) if f.endswith(".parquet")]
    assert len(on_disk) == len(SLIDES) + 1 and len(tables.active_files(lake, "pairs")) == len(SLIDES)
    for shuffle in (False, True):
        got = keys(stream(lake, shuffle=shuffle))
        assert len(got) == len(set(got))  # no duplicates
        assert set(got) == set(spots())  # none missing, none from the removed file
    assert Counter(s for s, _ in got)["a1"] == REINGESTED.n_spots == 13
    pinned = keys(stream(lake, version=0))  # the snapshot before the re-ingest
    assert set(pinned) == set(spots(SLIDES)) and Counter(s for s, _ in pinned)["a1"] == 12


def test_batches_have_the_documented_types_and_rgb_tiles(lake):
    batches = stream(lake, shuffle=False, image_size=20)
    first = batches[0]
    assert first["image"].shape == (7, 3, 20, 20) and first["image"].dtype == torch.uint8
    assert first["expression"].dtype == torch.float32 and first["expression"].shape == (7, 1)
    assert all(isinstance(v, str) for v in first["slide_id"] + first["spot_id"])
    truth = spots()
    for batch in batches:
        for image, slide_id, spot_id, label in zip(batch["image"], batch["slide_id"], batch["spot_id"], batch["label"]):
            slide, j = truth[(slide_id, spot_id)]
            assert np.allclose(image.float().mean((1, 2)).numpy(), tl.spot_color(slide, j), atol=4)  # R, G, B
            assert label == tl.spot_label(slide, j)
    assert sum(len(b["slide_id"]) for b in batches) == len(truth)
    assert [len(b["slide_id"]) for b in batches[:-1]] == [7] * (len(batches) - 1)
    assert stream(lake, slide_ids=["a0"])[0]["image"].shape == (7, 3, 16, 16)  # image_size=None: stored size
    assert all(len(b["slide_id"]) == 7 for b in stream(lake, drop_last=True))


def test_float_images_and_imagenet_normalisation(lake):
    plain = stream(lake, shuffle=False, image_size=8, image_dtype="float32", slide_ids=["a0"])[0]["image"]
    assert plain.dtype == torch.float32 and 0.0 <= plain.min() and plain.max() <= 1.0
    normed = stream(lake, shuffle=False, image_size=8, image_dtype="float32", image_normalize=True,
                    slide_ids=["a0"])[0]["image"]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normed, (plain - mean) / std, atol=1e-5)


# ---------------------------------------------------------------- filters

@pytest.mark.parametrize("options, keep", [
    ({"technologies": ["ST"]}, lambda s, j: s.technology == "ST"),
    ({"slide_ids": ["a0", "m3"]}, lambda s, j: s.slide_id in ("a0", "m3")),
    ({"species": ["mouse"]}, lambda s, j: s.species == "mouse"),
    ({"species": ["Mus musculus"]}, lambda s, j: s.species == "mouse"),  # normalised like the lake's species
    ({"tissues": ["liver"]}, lambda s, j: s.tissue == "liver"),
    ({"labels": ["tumor"]}, lambda s, j: tl.spot_label(s, j) == "tumor"),
    ({"labels": ["stroma", None]}, lambda s, j: tl.spot_label(s, j) in ("stroma", None)),
    ({"min_tissue_fraction": 0.5}, lambda s, j: tl.tissue_fraction(s, j) >= 0.5),
    ({"technologies": ["Visium"], "labels": ["tumor"], "min_tissue_fraction": 0.3},
     lambda s, j: s.technology == "Visium" and tl.spot_label(s, j) == "tumor" and tl.tissue_fraction(s, j) >= 0.3),
])
def test_filters_select_exactly_the_matching_rows(lake, options, keep):
    got = keys(stream(lake, **options))
    expected = {k for k, (s, j) in spots().items() if keep(s, j)}
    assert expected and len(got) == len(set(got)) and set(got) == expected


def test_file_statistics_prune_files_and_decide_row_checks(lake):
    selection = select_files(StreamSpec(lake=lake, panel=["GENE000"], slide_ids=["a0", "m3"], technologies=["Visium"]))
    assert len(selection.files) == 1 and selection.row_columns == []  # a0 only, decided by min/max stats
    selection = select_files(StreamSpec(lake=lake, panel=["GENE000"], labels=["tumor"], min_tissue_fraction=0.95))
    assert selection.row_columns == ["label", "tissue_fraction"]
    assert len(selection.files) < len(SLIDES)  # files whose max tissue_fraction < 0.95 are skipped
    assert select_files(StreamSpec(lake=lake, panel=["GENE000"], technologies=["Xenium"])).files == []
    assert stream(lake, technologies=["Xenium"]) == []


# ---------------------------------------------------------------- expression

def test_explicit_panel_of_symbols_and_ids_densifies_only_those_genes(lake):
    human = tl.gene_ids("human", N_GENES)
    panel = ["GENE004", int(human[7]), "NOT_A_GENE", "gene010", "ENSG00000000012.3"]
    gene_ids, symbols = resolve_panel(lake, StreamSpec(lake=lake, panel=panel))
    assert symbols == ["GENE004", "GENE007", "NOT_A_GENE", "GENE010", "GENE012"] and gene_ids[2] == -1
    columns = [4, 7, None, 10, 12]
    mouse_columns = [4, None, None, 10, 12]  # a human gene id does not match mouse genes; symbols match both
    batches = stream(lake, panel=panel, shuffle=False)
    truth = spots()
    for batch in batches:
        assert batch["expression"].shape[1] == 5
        for row, key in zip(batch["expression"].numpy(), zip(batch["slide_id"], batch["spot_id"])):
            slide, j = truth[key]
            want = expected_dense(slide, j, mouse_columns if slide.species == "mouse" else columns)
            assert np.array_equal(row, want.astype(np.float32))
    assert all((b["expression"][:, 2] == 0).all() for b in batches)  # missing gene -> zeros


def test_species_are_normalised_for_rows_and_genes_alike(lake):
    assert StreamSpec(lake=lake, species="Homo sapiens").species == ["human"]
    assert StreamSpec(lake=lake, species=["MOUSE", "Mus_musculus"]).species == ["mouse", "mouse"]
    panel = resolve_panel(lake, StreamSpec(lake=lake, panel=["GENE004"], species=["Homo sapiens"]))
    assert panel.lookup_ids.tolist() == [tl.gene_ids("human", N_GENES)[4]]  # the human gene only
    stored = resolve_panel(lake, StreamSpec(lake=lake, panel_name="mini", species=["Homo sapiens"]))
    assert stored.symbols == ["GENE006", "GENE002", "GENE009"]


def test_stored_panel_by_name(lake):
    gene_ids, symbols = resolve_panel(lake, StreamSpec(lake=lake, panel_name="mini"))
    assert symbols == ["GENE006", "GENE002", "GENE009"]
    batches = stream(lake, panel=None, panel_name="mini", slide_ids=["a0"], shuffle=False)
    slide = SLIDES[0]
    for j, row in enumerate(np.concatenate([b["expression"].numpy() for b in batches])):
        assert np.array_equal(row, expected_dense(slide, j, [6, 2, 9]).astype(np.float32))
    with pytest.raises(LookupError):
        stream(lake, panel=None, panel_name="hvg999")


@pytest.mark.parametrize("mode, target_sum", [("log1p", 1e4), ("normalize_total_log1p", 1e4),
                                              ("normalize_total_log1p", 50.0), ("normalize_total_log1p", None)])
def test_normalisation_matches_scanpy_definitions(lake, mode, target_sum):
    columns = [0, 3, 5, 8]
    batches = stream(lake, panel=[f"GENE{g:03d}" for g in columns], normalize=mode, target_sum=target_sum,
                     species=["human"])
    truth = spots()
    if target_sum is None:  # scanpy's default: the median of the spots' total counts
        target_sum = float(np.median([sum(tl.spot_counts(s, j, N_GENES).values())
                                      for (s, j) in truth.values() if s.species == "human"]))
    for batch in batches:
        for row, key in zip(batch["expression"].numpy(), zip(batch["slide_id"], batch["spot_id"])):
            slide, j = truth[key]
            assert np.allclose(row, expected_dense(slide, j, columns, mode, target_sum), rtol=1e-6, atol=1e-6)


def test_densify_matches_a_naive_scatter():
    rng = np.random.default_rng(1)
    rows = [np.sort(rng.choice(1000, rng.integers(0, 50), replace=False)) for _ in range(40)]
    counts = [rng.integers(1, 9, len(r)) for r in rows]
    panel = rng.choice(1000, 64, replace=False)
    flat_ids, offsets = flatten_lists(rows)
    flat_counts, _ = flatten_lists(counts)
    order = np.argsort(panel)
    dense = densify(flat_ids, flat_counts, offsets, np.array([c.sum() for c in counts]), panel[order], order,
                    len(panel))
    naive = np.zeros((40, 64), np.float32)
    column = {g: i for i, g in enumerate(panel)}
    for i, (r, c) in enumerate(zip(rows, counts)):
        for g, v in zip(r, c):
            if g in column:
                naive[i, column[g]] = v
    assert np.array_equal(dense, naive)


# ---------------------------------------------------------------- shards, shuffling, epochs

def test_shards_are_disjoint_and_cover_the_filtered_snapshot(lake):
    for options in ({}, {"labels": ["tumor", "stroma"]}):
        parts = [keys(stream(lake, cur_shard=i, shard_count=3, seed=5, **options)) for i in range(3)]
        assert all(parts)
        union = [k for part in parts for k in part]
        assert len(union) == len(set(union))  # disjoint
        assert set(union) == set(keys(stream(lake, **options)))  # complete
        slides_per_shard = [{s for s, _ in part} for part in parts]  # whole row groups (= files here) per shard
        assert sum(len(s) for s in slides_per_shard) == len(set().union(*slides_per_shard))


def test_more_shards_than_row_groups_split_rows_instead(lake):
    """One slide's file is one row group: four shards each keep their own rows (none fails, none overlaps)."""
    from stlake.stream.reader import build_plan
    one_file = StreamSpec(lake, panel=["GENE000"], slide_ids=["a0"], cur_shard=3, shard_count=4)
    assert build_plan(one_file).row_shard == (3, 4)
    assert build_plan(StreamSpec(lake, panel=["GENE000"], cur_shard=0, shard_count=2)).row_shard is None
    parts = [keys(stream(lake, cur_shard=i, shard_count=4, slide_ids=["a0"])) for i in range(4)]
    union = [k for part in parts for k in part]
    assert len(union) == len(set(union)) and set(union) == set(keys(stream(lake, slide_ids=["a0"])))
    assert sum(bool(part) for part in parts) >= 2


def test_shuffle_is_deterministic_for_a_seed_and_differs_across_seeds_and_epochs(lake):
    options = dict(shuffle=True, shuffle_buffer=16, num_epochs=2, batch_size=8)
    first, again = keys(stream(lake, seed=11, **options)), keys(stream(lake, seed=11, **options))
    other = keys(stream(lake, seed=12, **options))
    assert first == again and first != other
    n = len(spots())
    assert len(first) == 2 * n and Counter(first) == Counter(k for k in spots() for _ in range(2))
    assert first[:n] != first[n:]  # each epoch has its own order
    assert keys(stream(lake, shuffle=False)) == keys(stream(lake, shuffle=False))
    assert keys(stream(lake, shuffle=False)) != first[:n]


def test_augmentations_are_seeded_and_keep_shapes(lake):
    options = dict(augment=True, image_size=12, slide_ids=["a0"], shuffle=False)
    one, two = stream(lake, seed=3, **options)[0], stream(lake, seed=3, **options)[0]
    plain = stream(lake, seed=3, image_size=12, slide_ids=["a0"], shuffle=False)[0]
    assert one["image"].shape == plain["image"].shape == (7, 3, 12, 12) and torch.equal(one["image"], two["image"])
    assert not torch.equal(one["image"], plain["image"])  # colour jitter changed the flat tiles


def test_colour_jitter_composes_brightness_contrast_saturation():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (8, 8, 3)).astype(np.uint8)  # BGR
    b, c, s = 1.15, 0.85, 1.2
    x = image[..., ::-1].astype(np.float64) * b  # RGB, torchvision's order of operations, clamped at the end
    gray = lambda im: im @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    x = gray(x).mean() + (x - gray(x).mean()) * c
    x = gray(x)[..., None] + (x - gray(x)[..., None]) * s
    got = np.stack(jittered_planes(image, b, c, s)[::-1], -1).astype(np.float64)
    assert np.abs(got - np.clip(x, 0, 255)).max() <= 1.5


def test_loader_can_be_left_early_and_iterated_again(lake):
    with make_loader(StreamSpec(lake=lake, panel=["GENE000"], batch_size=4, num_epochs=None)) as loader:
        for i, _ in enumerate(loader):
            if i == 20:  # several epochs in: an endless stream
                break
        assert len(next(iter(loader))["slide_id"]) == 4


def test_row_buffer_draws_each_row_once():
    buffer, rng = RowBuffer(), np.random.default_rng(0)
    seen = []
    for start in range(0, 100, 30):
        ids = np.arange(start, min(start + 30, 100))
        buffer.add({"slide_id": ids.astype(object), "expression": ids[:, None].astype(np.float32)})
        while buffer.size >= 25:
            out = buffer.take(10, rng)
            assert np.array_equal(out["slide_id"].astype(int), out["expression"][:, 0].astype(int))
            seen += out["slide_id"].tolist()
    while buffer.size:
        seen += buffer.take(10, rng)["slide_id"].tolist()
    assert sorted(seen) == list(range(100)) and seen != list(range(100))


def test_a_broken_tile_raises_in_the_consumer(tmp_path):
    lake = str(tmp_path)
    rows = tl.pairs_rows(tl.FakeSlide("x", 0), N_GENES)
    tiles = rows.column("tile").to_pylist()
    tiles[3] = b"not an image"
    rows = rows.set_column(rows.schema.get_field_index("tile"), "tile", pa.array(tiles, pa.binary()))
    tables.commit(lake, "pairs", tables.write_data_files(lake, "pairs", rows, "bad"))
    with pytest.raises(ValueError, match="undecodable tile"):
        stream(lake, panel=[1], shuffle=False)
    with pytest.raises(FileNotFoundError, match="stlake pairs"):
        stream(str(tmp_path / "nothing"), panel=[1])


# ---------------------------------------------------------------- S3 inputs, CLI

def test_s3_files_are_handed_to_petastorm_as_paths_on_a_pyarrow_filesystem(monkeypatch):
    urls, fs = petastorm_inputs(["s3://bucket/lake/pairs/part-1.parquet", "s3://bucket/lake/pairs/part-2.parquet"])
    assert urls == ["file:///bucket/lake/pairs/part-1.parquet", "file:///bucket/lake/pairs/part-2.parquet"]
    assert fs.strip_root and fs._path("/bucket/lake/pairs/part-1.parquet") == "bucket/lake/pairs/part-1.parquet"
    assert fs.isfile("/bucket/lake/pairs/part-2.parquet")  # known from the Delta log: no request
    assert type(fs.fs).__name__ == "S3FileSystem"


def test_stream_command_prints_shapes_and_throughput(lake, capsys):
    from stlake.cli import main
    assert main(["stream", "--lake", lake, "--panel", "GENE001,GENE002", "--batch-size", "8", "--batches", "2",
                 "--image-size", "16", "--normalize", "normalize_total_log1p", "--technology", "ST"]) == 0
    out = capsys.readouterr().out
    assert "image (8, 3, 16, 16) torch.uint8" in out and "expression (8, 2)" in out and "samples/s" in out
