"""Benchmark: samples/s to ready torch tensors, stlake's stream vs the file-per-tile + dense-CSV loader.

Workload (both loaders): batches of 256, tiles decoded to 3 x 224 x 224 uint8 RGB tensors (138 px
tiles resized to 224), a 256-gene panel of ``log1p(normalize_total)`` float32 expression, shuffled,
3 timed epochs after a warm-up epoch, all cores. Tiles are cut in tissue from 1,600 px slides drawn
by ``stlake.synth``'s H&E renderer at 0.4 µm/px (a tile spans a 55 µm Visium spot), like the tiles
of the ingest benchmark.

- **stlake**: ``make_loader`` over a ``pairs`` Delta table (JPEG q90 tiles, sparse counts).
- **file-per-tile baseline**: the STimage-1K4M release's own loader — a map-style ``Dataset`` that
  opens one PNG crop per spot with PIL (``./crop/{spot}.png``) and reads the spot's row of a dense
  ``gene_exp`` CSV (spots x genes), behind ``torch.utils.data.DataLoader(shuffle=True)``. Made fair:
  one worker process per core (persistent), the CSV row is found through a precomputed byte-offset
  index (one seek + one line parse, never a scan) and parsed with numpy.

    PYTHONPATH=lib python bench/bench_stream.py [--spots 5000] [--genes 3000] [--epochs 3]

Writes ``bench/results/stream.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Optional

import cv2
import numpy as np
import pyarrow as pa
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from stlake.lake import schemas, tables  # noqa: E402
from stlake.stream import StreamSpec, make_loader  # noqa: E402
from stlake.stream.reader import default_decode_threads  # noqa: E402
from stlake.synth.image import Renderer, Scene, render  # noqa: E402

BATCH, SIZE, PANEL, TILE = 256, 224, 256, 138
SLIDE_PX = 1600  # side of each synthetic slide image
MPP = 55.0 / TILE  # µm/px: a tile spans a 55 µm Visium spot
RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"


# ---------------------------------------------------------------- data (both layouts from the same spots)

def slide_image(rng: np.random.Generator) -> tuple[np.ndarray, Scene]:
    """An H&E-like RGB slide (``stlake.synth``'s renderer: tissue on glass, four domains, nuclei) and its scene.

    At ``MPP`` µm/px a ``TILE`` px tile spans a Visium spot (55 µm), as in the ingest's tiles.
    """
    side_um = SLIDE_PX * MPP
    margin = 0.04 * side_um
    scene = Scene.build(rng, side_um, side_um, (margin, margin, side_um - margin, side_um - margin), 0.85)
    return render(Renderer(scene, SLIDE_PX, SLIDE_PX, MPP, seed=int(rng.integers(2 ** 31)))), scene


def tile_corners(rng: np.random.Generator, scene: Scene, n: int) -> np.ndarray:
    """``n`` (x, y) top-left corners of ``TILE`` px tiles whose centre lies in tissue."""
    corners = np.zeros((0, 2), np.int64)
    while len(corners) < n:
        xy = rng.integers(0, SLIDE_PX - TILE, (4 * n, 2))
        centre_um = (xy + TILE / 2) * MPP
        inside = scene.tissue_um_at(centre_um[:, 0], centre_um[:, 1]) > 0
        corners = np.concatenate([corners, xy[inside]])
    return corners[:n]


def spot_counts(rng: np.random.Generator, n_spots: int, n_genes: int) -> np.ndarray:
    """Dense counts, ~15% non-zero, gene-specific rates."""
    rates = rng.gamma(0.6, 3.0, n_genes)
    counts = rng.poisson(rates, (n_spots, n_genes)).astype(np.int32)
    counts[rng.random((n_spots, n_genes)) > 0.15] = 0
    return counts


def jpeg_q90(tile: np.ndarray) -> bytes:
    """JPEG q90 bytes of an RGB tile (the lake's tile encoding)."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("OpenCV could not encode a tile")
    return jpeg.tobytes()


def pair_row(slide_id: str, spot: str, jpeg: bytes, gene_ids: np.ndarray, counts: np.ndarray) -> dict:
    """One ``pairs`` row: the tile and the spot's sparse counts."""
    nz = np.flatnonzero(counts)
    return dict(slide_id=slide_id, spot_id=spot, technology="Visium", species="human", tissue="breast", label=None,
                tissue_fraction=0.9, tile=jpeg, tile_format="jpeg", gene_ids=gene_ids[nz].tolist(),
                counts=counts[nz].tolist(), total_counts=int(counts.sum()))


class ReleaseWriter:
    """The release layout: one PNG crop per spot and a dense CSV with a byte-offset index of its rows."""

    def __init__(self, workdir: Path, n_genes: int) -> None:
        self.crops, self.csv = workdir / "crop", workdir / "gene_exp.csv"
        self.crops.mkdir(parents=True)
        self.handle = open(self.csv, "w")
        self.handle.write("spot," + ",".join(f"G{g}" for g in range(n_genes)) + "\n")
        self.offsets: list[int] = []
        self.spots: list[str] = []

    def add(self, spot: str, tile: np.ndarray, counts: np.ndarray) -> None:
        """Save the spot's PNG crop (PIL) and append its CSV row."""
        Image.fromarray(tile).save(self.crops / f"{spot}.png")
        self.offsets.append(self.handle.tell())
        self.handle.write(spot + "," + ",".join(map(str, counts)) + "\n")
        self.spots.append(spot)

    def close(self) -> None:
        """Close the CSV."""
        self.handle.close()


def write_slide(index: int, rng: np.random.Generator, n_spots: int, gene_ids: np.ndarray, lake: Path,
                release: ReleaseWriter) -> tuple[list, int]:
    """One slide's spots into the lake (one data file) and the release; returns (data files, JPEG bytes)."""
    slide_id = f"slide{index:02d}"
    image, scene = slide_image(rng)
    counts = spot_counts(rng, n_spots, len(gene_ids))
    rows: dict[str, list] = {name: [] for name in schemas.PAIRS.names}
    jpeg_bytes = 0
    for j, (x, y) in enumerate(tile_corners(rng, scene, n_spots)):
        tile = image[y:y + TILE, x:x + TILE]  # RGB
        spot = f"{slide_id}_{j:05d}"
        release.add(spot, tile, counts[j])
        jpeg = jpeg_q90(tile)
        jpeg_bytes += len(jpeg)
        for name, value in pair_row(slide_id, spot, jpeg, gene_ids, counts[j]).items():
            rows[name].append(value)
    files = tables.write_data_files(str(lake), "pairs", pa.table(rows, schema=schemas.PAIRS), f"bench-{index:02d}")
    return files, jpeg_bytes


def build(workdir: Path, n_spots: int, n_genes: int, n_slides: int, seed: int = 0) -> dict:
    """Write the lake (pairs, JPEG tiles) and the release layout (PNG crops + dense CSV)."""
    rng = np.random.default_rng(seed)
    lake = workdir / "lake"
    gene_ids = np.sort(rng.choice(2 ** 62, n_genes, replace=False)).astype(np.int64)
    panel = np.sort(rng.choice(n_genes, PANEL, replace=False))
    release = ReleaseWriter(workdir, n_genes)
    files, jpeg_bytes = [], 0
    try:
        for index in range(n_slides):
            slide_files, slide_jpeg_bytes = write_slide(index, rng, n_spots // n_slides, gene_ids, lake, release)
            files += slide_files
            jpeg_bytes += slide_jpeg_bytes
    finally:
        release.close()
    tables.commit(str(lake), "pairs", files, run_id="bench")
    n_tiles = len(release.spots)
    png_bytes = sum(p.stat().st_size for p in release.crops.iterdir())
    return {"lake": str(lake), "csv": str(release.csv), "crops": str(release.crops),
            "offsets": np.array(release.offsets, np.int64), "spots": release.spots, "panel_ids": gene_ids[panel],
            "panel_cols": panel,
            "bytes": {"jpeg_per_tile": jpeg_bytes / n_tiles, "png_per_tile": png_bytes / n_tiles,
                      "csv": release.csv.stat().st_size, "pairs": sum(f.size for f in files)}}


# ---------------------------------------------------------------- the file-per-tile baseline

class FilePerTileDataset(torch.utils.data.Dataset):
    """One PNG per tile (PIL, as the release's ``image_gene_data``), one dense CSV row per spot."""

    def __init__(self, crops: str, spots: list[str], csv: str, offsets: np.ndarray, panel_cols: np.ndarray) -> None:
        self.crops, self.spots, self.csv, self.offsets, self.panel = crops, spots, csv, offsets, panel_cols
        self.handle: Optional[BinaryIO] = None

    def __len__(self) -> int:
        return len(self.spots)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.handle is None:  # one handle per worker process
            self.handle = open(self.csv, "rb")
        image = Image.open(os.path.join(self.crops, self.spots[i] + ".png")).convert("RGB")
        image = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR))
        self.handle.seek(self.offsets[i])
        line = self.handle.readline()
        counts = np.array(line[line.index(b",") + 1:].split(b","), dtype=np.float64)
        total = counts.sum()
        expression = np.log1p(counts[self.panel] / (total if total > 0 else 1.0) * 1e4).astype(np.float32)
        return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(), torch.from_numpy(expression)


def baseline_loader(data: dict, workers: int) -> torch.utils.data.DataLoader:
    dataset = FilePerTileDataset(data["crops"], data["spots"], data["csv"], data["offsets"], data["panel_cols"])
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


# ---------------------------------------------------------------- timing

def time_epochs(batches_of_epoch: Callable[[], Iterable[Any]], epochs: int) -> dict:
    """Warm-up epoch, then ``epochs`` timed epochs; samples/s and time to the first batch."""
    for _ in batches_of_epoch():
        pass
    samples, first, start = 0, None, time.perf_counter()
    for _ in range(epochs):
        for batch in batches_of_epoch():
            image, expression = (batch["image"], batch["expression"]) if isinstance(batch, dict) else batch
            assert image.shape[1:] == (3, SIZE, SIZE) and expression.shape[1] == PANEL
            samples += image.shape[0]
            first = first or time.perf_counter() - start
    elapsed = time.perf_counter() - start
    return {"samples": samples, "seconds": elapsed, "samples_per_s": samples / elapsed, "first_batch_s": first}


STLAKE_RUNS = {  # name -> extra StreamSpec options
    "stlake stream (uint8)": {},
    "stlake stream (float32, ImageNet-normalised)": {"image_dtype": "float32", "image_normalize": True},
    "stlake stream (uint8, augment)": {"augment": True},
}
BASELINE = "file-per-tile PNG + dense CSV (STimage-1K4M loader)"


def time_stlake(data: dict, options: dict, args: argparse.Namespace) -> dict:
    spec = StreamSpec(lake=data["lake"], panel=data["panel_ids"].tolist(), normalize="normalize_total_log1p",
                      image_size=SIZE, batch_size=BATCH, shuffle=True, seed=1, num_epochs=1,
                      workers_count=args.reader_threads, **options)
    with make_loader(spec) as loader:
        return time_epochs(lambda: iter(loader), args.epochs)


def time_baseline(data: dict, workers: int, epochs: int) -> dict:
    loader = baseline_loader(data, workers)
    return time_epochs(lambda: iter(loader), epochs)


def print_built(args: argparse.Namespace, sizes: dict, seconds: float) -> None:
    print(f"built {args.spots} spots x {args.genes} genes in {seconds:.1f} s: "
          f"JPEG {sizes['jpeg_per_tile'] / 1024:.1f} KiB/tile, PNG {sizes['png_per_tile'] / 1024:.1f} KiB/tile, "
          f"CSV {sizes['csv'] / 2 ** 20:.0f} MiB, pairs {sizes['pairs'] / 2 ** 20:.0f} MiB")


def run(args: argparse.Namespace) -> dict:
    n_cores = default_decode_threads()  # all cores of this process (no torchrun here)
    workdir = Path(tempfile.mkdtemp(prefix="stlake-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        data = build(workdir, args.spots, args.genes, args.slides)
        print_built(args, data["bytes"], time.perf_counter() - t0)
        results = {}
        for name, options in STLAKE_RUNS.items():
            results[name] = time_stlake(data, options, args)
            print(f"{name}: {results[name]['samples_per_s']:,.0f} samples/s")
        results[BASELINE] = time_baseline(data, n_cores, args.epochs)
        print(f"{BASELINE}: {results[BASELINE]['samples_per_s']:,.0f} samples/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for value in results.values():
        value["samples_per_s_per_core"] = value["samples_per_s"] / n_cores
    stlake, baseline = results["stlake stream (uint8)"]["samples_per_s"], results[BASELINE]["samples_per_s"]
    return {"workload": {"spots": args.spots, "genes": args.genes, "slides": args.slides, "batch": BATCH,
                         "image": f"3x{SIZE}x{SIZE} from {TILE}px tiles", "panel": PANEL, "epochs_timed": args.epochs,
                         "normalize": "normalize_total_log1p", "shuffle": True},
            "machine": {"cores": n_cores, "cpu": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "torch": torch.__version__},
            "data_bytes": data["bytes"], "results": results, "ratio_stlake_vs_file_per_tile": stlake / baseline,
            "targets": {"ratio_min": 3.0, "samples_per_s_per_core_min": 1500, "ratio_met": stlake / baseline >= 3.0,
                        "per_core_met": stlake / n_cores >= 1500}}


def print_table(report: dict) -> None:
    print(f"\n{'loader':55s} {'samples/s':>10s} {'per core':>9s} {'1st batch':>9s}")
    for name, value in report["results"].items():
        print(f"{name:55s} {value['samples_per_s']:10,.0f} {value['samples_per_s_per_core']:9,.0f} "
              f"{value['first_batch_s']:8.2f}s")
    print(f"ratio stlake (uint8) / file-per-tile: {report['ratio_stlake_vs_file_per_tile']:.1f}x "
          f"on {report['machine']['cores']} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spots", type=int, default=5000)
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--slides", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--reader-threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where to build the data (default: temp dir)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    report = run(args)
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
