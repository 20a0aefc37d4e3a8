"""``stlake pairs``, ``stlake hvg`` and ``stlake stream`` (registered into :mod:`stlake.cli` by ``register``)."""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stlake.errors import UsageError, UserError, require_lake
from stlake.progress import Meter
from stlake.stream.spec import DEFAULT_PANEL, IMAGE_DTYPES, NORMALIZE_MODES, StreamSpec


def _list(text: str) -> list[str]:
    """The items of a comma-separated flag value."""
    return [part.strip() for part in text.split(",") if part.strip()]


#: ``stlake stream`` resizes tiles to this side unless ``--image-size`` says otherwise: a lake holds tiles of
#: several sizes (each technology's spot diameter), and a batch needs one size.
CLI_IMAGE_SIZE = 224


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Every :class:`~stlake.stream.StreamSpec` option as a flag (lists: repeat or comma-separate)."""
    default = StreamSpec.defaults()
    parser.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    parser.add_argument("--table", default=default["table"], help="lake table to stream")
    parser.add_argument("--version", type=int, help="Delta version to read (default: latest)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a `pairs` table older than the tables it joins (default: warn)")
    for flag, dest, what in (("--technology", "technologies", "technologies, e.g. Visium"),
                             ("--species", "species", "species, e.g. human"), ("--tissue", "tissues", "tissues"),
                             ("--label", "labels", "annotation labels"), ("--slide", "slide_ids", "slide ids")):
        parser.add_argument(flag, dest=dest, action="append", type=_list,
                            help=f"only these {what} (repeatable, or a,b,c; default: all)")
    parser.add_argument("--min-tissue-fraction", type=float, help="only tiles at least this much tissue, 0..1")
    parser.add_argument("--label-set", help="stream this annotation set's label, only spots it labels "
                                            "(default: spots.label, the set chosen at ingest)")
    parser.add_argument("--balance-labels", action="store_true", help="sample labelled spots so classes even out")
    parser.add_argument("--panel", type=_list, help="explicit panel: gene ids / symbols, comma-separated")
    parser.add_argument("--panel-name", help=f"stored panel (default: {DEFAULT_PANEL} when no --panel)")
    parser.add_argument("--normalize", choices=NORMALIZE_MODES, default=default["normalize"],
                        help="expression transform")
    parser.add_argument("--target-sum", type=float, default=default["target_sum"],
                        help="counts per spot after normalize_total; 0 = median of total counts (scanpy)")
    parser.add_argument("--image-size", type=int, default=CLI_IMAGE_SIZE,
                        help="resize tiles to this side; 0 keeps the stored size (one size needed per batch)")
    parser.add_argument("--image-dtype", choices=IMAGE_DTYPES, default=default["image_dtype"],
                        help="uint8 0..255, or float32 0..1")
    parser.add_argument("--image-normalize", action="store_true", help="ImageNet mean/std (needs float32)")
    parser.add_argument("--augment", action="store_true", help="random flips, 90-degree rotations, colour jitter")
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="read in file order")
    parser.add_argument("--seed", type=int, default=default["seed"], help="shuffle / augmentation seed")
    parser.add_argument("--cur-shard", type=int, help="this process's shard, 0..shard-count-1 (default: no sharding)")
    parser.add_argument("--shard-count", type=int, help="number of shards (training processes)")
    parser.add_argument("--epochs", dest="num_epochs", type=int, default=default["num_epochs"], help="0 = forever")
    parser.add_argument("--batch-size", type=int, default=default["batch_size"], help="samples per batch")
    parser.add_argument("--drop-last", action="store_true", help="drop a last, smaller batch")
    parser.add_argument("--shuffle-buffer", type=int, default=default["shuffle_buffer"],
                        help="rows mixed across row groups")
    parser.add_argument("--workers", dest="workers_count", type=int, default=default["workers_count"],
                        help="Petastorm reader threads")
    parser.add_argument("--decode-threads", type=int, help="JPEG decode threads (default: one per core)")


def spec_from_args(args: argparse.Namespace) -> StreamSpec:
    """The :class:`StreamSpec` of parsed ``stream`` flags."""
    values = {name: getattr(args, name) for name in StreamSpec.field_names() if hasattr(args, name)}
    for name in ("technologies", "species", "tissues", "labels", "slide_ids"):
        if values.get(name) is not None:
            values[name] = [v for group in values[name] for v in group]
    if values.get("target_sum") == 0:
        values["target_sum"] = None
    if values.get("num_epochs") == 0:
        values["num_epochs"] = None
    if values.get("image_size") == 0:
        values["image_size"] = None
    try:
        return StreamSpec(**values)
    except ValueError as error:  # options that do not go together
        raise UsageError(str(error)) from error


def cmd_stream(args: argparse.Namespace) -> int:
    """Stream a few batches; print their shapes and the throughput."""
    spec = spec_from_args(args)
    require_lake(spec.lake)
    from stlake.derived.pairs import check_fresh
    from stlake.stream import make_loader
    problem = check_fresh(spec.lake, spec.version, spec.slide_ids) if spec.strict and spec.table == "pairs" else ""
    if problem:  # --strict on an out-of-date pairs: one line, no traceback (the loader would raise StalePairs)
        raise UserError(problem)  # it says what to do
    with make_loader(spec) as loader:
        print(f"{spec.table} v{loader.version}: {len(loader.files)} files, panel of {loader.panel.n_genes} genes "
              f"({', '.join(map(str, loader.panel.symbols[:5]))}{', ...' if loader.panel.n_genes > 5 else ''})"
              + (f"; {len(loader.vocabulary)} label classes" if loader.vocabulary else ""))
        start, samples, batches = time.perf_counter(), 0, 0
        for batch in loader:
            batches += 1
            samples += len(batch["slide_id"])
            if batches <= 3:
                print(f"batch {batches}: image {tuple(batch['image'].shape)} {batch['image'].dtype}, "
                      f"expression {tuple(batch['expression'].shape)}, first {batch['slide_id'][0]}/"
                      f"{batch['spot_id'][0]} label={batch['label'][0]}")
            if args.batches and batches >= args.batches:
                break
        elapsed = time.perf_counter() - start
    print(f"{samples} samples in {batches} batches, {elapsed:.2f} s: {samples / max(elapsed, 1e-9):,.0f} samples/s")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """``stlake pairs``: (re)build the pairs table with Spark (only changed slides); print its version."""
    require_lake(args.lake)
    from stlake.cli import session_from_args
    from stlake.derived.pairs import build_pairs, incremental_plan, pairs_version
    slide_ids = args.slide_ids
    if not args.full and slide_ids is None:
        slide_ids = incremental_plan(args.lake)  # decided before Spark starts
        if slide_ids == []:
            print(f"pairs: version {pairs_version(args.lake)}, up to date (no slide's rows changed)")
            return 0
    spark = session_from_args(args, "stlake-pairs")
    rebuilt = "every slide" if slide_ids is None else f"{len(slide_ids)} slides"
    with spark_meter(spark, args, "pairs") as meter:
        version = build_pairs(spark, args.lake, slide_ids=slide_ids)
        meter.close(f"pairs: version {version} ({rebuilt} rebuilt)")
    print(f"pairs: version {version} ({rebuilt} rebuilt)")
    return 0


def cmd_hvg(args: argparse.Namespace) -> int:
    """``stlake hvg``: compute and store an HVG panel with Spark; print its top genes."""
    require_lake(args.lake)
    from stlake.cli import session_from_args
    from stlake.derived.hvg import compute_hvg
    spark = session_from_args(args, "stlake-hvg")
    try:
        with spark_meter(spark, args, "hvg") as meter:
            rows = compute_hvg(spark, args.lake, k=args.k, name=args.name, min_spots=args.min_spots)
            meter.close(f"hvg: {rows.num_rows} genes")
    except ValueError as error:  # a bad --name or run id: one line, no traceback
        raise UserError(str(error)) from error
    name = args.name or f"hvg{args.k}"
    print(f"{name}: {rows.num_rows} genes")
    for row in rows.slice(0, 10).to_pylist():
        gene = row["symbol"] or row["gene_id"]
        print(f"  {row['species']:8s} #{row['rank']:<4d} {gene!s:16s} score {row['score']:.2f}")
    return 0


@contextmanager
def spark_meter(spark: Any, args: argparse.Namespace, label: str) -> Iterator[Meter]:
    """A live line of the Spark tasks a command runs (stderr; ``--progress``)."""
    from stlake.progress import ConsoleProgress, spark_tasks
    with ConsoleProgress(getattr(args, "progress", "auto")).meter(label, 1, "tasks") as meter, \
            spark_tasks(spark, meter.tasks):
        yield meter



def register(sub: argparse._SubParsersAction) -> None:
    """Add ``stream``, ``pairs`` and ``hvg`` to the ``stlake`` command line."""
    from stlake.cli import add_session_arguments  # stlake.cli is loaded: it calls this
    stream = sub.add_parser("stream", help="stream batches from the lake (Petastorm -> torch) and time them",
                            description="Stream (tile, expression) batches from a lake table into torch tensors, "
                                        "print the first batches' shapes and the throughput.")
    add_stream_arguments(stream)
    stream.add_argument("--batches", type=int, default=5, help="stop after this many batches (0 = all)")
    stream.set_defaults(run=cmd_stream)
    pairs = sub.add_parser("pairs", help="join spots + expression + slides into the pairs table (Spark)",
                           description="Build the training table `pairs` (spots joined with expression and slides); "
                                       "only slides whose rows changed since the last build unless --full.")
    pairs.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    pairs.add_argument("--slide", dest="slide_ids", action="append",
                       help="rebuild only these slides (repeatable; default: the changed ones)")
    pairs.add_argument("--full", action="store_true",
                       help="rebuild every slide (default: only slides whose rows changed since the last build)")
    add_session_arguments(pairs)
    pairs.set_defaults(run=cmd_pairs)
    hvg = sub.add_parser("hvg", help="top-k highly variable genes per species -> gene_panels (Spark)",
                         description="Compute the top-k highly variable genes per species and store them as a "
                                     "panel of `gene_panels` (for `stlake stream --panel-name`).")
    hvg.add_argument("--lake", default="./lake", help="lake root: a local folder or s3://bucket/prefix")
    hvg.add_argument("--k", type=int, default=256, help="genes per species")
    hvg.add_argument("--name", help="panel name (default: hvg{k})")
    hvg.add_argument("--min-spots", type=int, default=3, help="only genes detected in at least this many spots")
    add_session_arguments(hvg)
    hvg.set_defaults(run=cmd_hvg)
