"""Reference training job: a CLIP-style tile <-> expression model streamed from the lake.

One process per GPU under torchrun (rank -> the stream's ``cur_shard``, world size -> ``shard_count``;
DDP over NCCL on GPU, gloo on CPU; bf16 autocast on CUDA), or a single process. After training, rank 0
evaluates on held-out slides (image->expression recall@1/5/10, ridge linear probe Pearson r per gene)
and writes ``metrics.json`` next to the checkpoint.

    python jobs/train_clip.py --lake ./lake --steps 200
    stlake train --lake ./lake --steps 200
    torchrun --nproc-per-node 8 jobs/train_clip.py --lake s3://bucket/lake --encoder resnet18 \
        --image-size 224 --batch-size 256 --steps 20000 --checkpoint-dir s3-mounted/ckpt --resume

torch (and the stream reader) are imported when the job runs, so ``stlake.cli`` can register
``stlake train`` without loading them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from stlake.train import ENCODERS

if TYPE_CHECKING:
    import torch

    from stlake.train.model import ClipModel


# ---------------------------------------------------------------- arguments

DESCRIPTION = """Train the reference CLIP-style tile <-> expression model on a lake table, then evaluate it on
held-out slides (recall@1/5/10, ridge probe Pearson r; metrics.json next to the checkpoint). One process
per GPU under torchrun (rank = the stream's shard), or a single process (CPU or one GPU).

    stlake train --lake ./lake --steps 200
    torchrun --nproc-per-node 8 jobs/train_clip.py --lake s3://bucket/lake --encoder resnet18
        --image-size 224 --batch-size 256 --steps 20000 --checkpoint-dir /ckpt --resume
"""

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The job's flags (shared by ``jobs/train_clip.py`` and ``stlake train``)."""
    p.add_argument("--lake", required=True, help="lake root: ./lake or s3://bucket/lake")
    p.add_argument("--panel-name", default=None, help="gene panel of the stream (default: the stream's default)")
    p.add_argument("--image-size", type=int, default=64, help="side of the tiles fed to the model")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--steps", type=int, default=200, help="total optimiser steps (resumed ones included)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--encoder", choices=ENCODERS, default="small", help="image encoder: a small CNN or ResNet-18")
    p.add_argument("--embed-dim", type=int, default=128, help="shared embedding size")
    p.add_argument("--train-slides", nargs="*", default=None, help="slide ids to train on")
    p.add_argument("--holdout-slides", nargs="*", default=None, help="slide ids held out for evaluation")
    p.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="fraction of slides held out when --holdout-slides is not given")
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoint.pt and metrics.json go (default: none)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="save every N steps (default: at the end)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/checkpoint.pt if present")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the stream and the model")
    p.add_argument("--log-every", type=int, default=10, help="print step, loss and samples/s every N steps")
    p.add_argument("--image-normalize", action="store_true",
                   help="the stream applies ImageNet mean/std (else the model does it on [0, 1] input)")
    p.add_argument("--augment", action="store_true", help="random flips, 90-degree rotations, colour jitter")
    p.add_argument("--table", default="pairs", help="lake table to stream")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="JPEG decode threads per process (default: the stream's, one per core)")
    p.add_argument("--ridge-alpha", type=float, default=1.0, help="ridge penalty of the linear probe")
    p.add_argument("--eval-train-batches", type=int, default=50, help="train batches embedded to fit the probe")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--metrics-out", default=None, help="metrics JSON (default: <checkpoint-dir>/metrics.json)")


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser (``jobs/train_clip.py``; torchrun runs one per rank)."""
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the job's flags (``sys.argv[1:]`` when ``argv`` is None)."""
    return build_parser().parse_args(argv)


def register(sub: Any) -> None:
    """Add the ``train`` subcommand to :mod:`stlake.cli`'s subparsers."""
    p = sub.add_parser("train", help="train the reference CLIP model on the lake (torchrun-aware)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(run=cmd_train)


# ---------------------------------------------------------------- slides and splits

def split_slides(slides: Sequence[str], train_slides: Optional[Sequence[str]] = None,
                 holdout_slides: Optional[Sequence[str]] = None, holdout_fraction: float = 0.2,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, holdout) slide ids; whole slides are held out, never spots of a training slide."""
    slides = sorted(slides)
    if holdout_slides is not None:
        holdout = sorted(holdout_slides)
    elif train_slides is not None:
        holdout = sorted(set(slides) - set(train_slides))
    else:
        holdout = random_holdout(slides, holdout_fraction, seed)
    train_ids = sorted(train_slides) if train_slides is not None else [s for s in slides if s not in set(holdout)]
    overlap = set(train_ids) & set(holdout)
    if overlap:
        raise ValueError(f"slides both trained on and held out: {sorted(overlap)}")
    if not train_ids:
        raise ValueError("no training slides")
    return train_ids, holdout


def random_holdout(slides: Sequence[str], holdout_fraction: float, seed: int) -> list[str]:
    """A seeded random ``holdout_fraction`` of the slides (at least one, and never all of them)."""
    shuffled = list(slides)
    random.Random(seed).shuffle(shuffled)
    n = min(len(slides) - 1, max(1, round(holdout_fraction * len(slides)))) if holdout_fraction > 0 else 0
    return sorted(shuffled[:max(n, 0)])


# ---------------------------------------------------------------- the stream

def pinned_snapshot(lake: str, table: str) -> tuple[int, list[str]]:
    """(version, slide ids) of the table's current snapshot, read by rank 0 and shared with every rank.

    Every rank streams that version, and the slides to split are those of that very snapshot.
    """
    import torch

    from stlake.derived.pairs import missing_table_error
    from stlake.lake import tables
    from stlake.train import distributed
    shared: list[Any] = [None, []]
    if distributed.is_main_process():
        delta = tables.open_table(lake, table)
        if delta is not None:
            shared = [delta.version(), tables.slide_ids(lake, table, delta.version())]
    if distributed.is_distributed():
        torch.distributed.broadcast_object_list(shared, src=0)
    if shared[0] is None:
        raise missing_table_error(lake, table)
    return shared[0], shared[1]


def stream_spec(args: argparse.Namespace, slide_ids: Sequence[str], shard: int, shards: int, shuffle: bool,
                num_epochs: Optional[int], seed: int, augment: bool = False, pin_memory: bool = False) -> Any:
    """A ``stlake.stream.StreamSpec`` for these slides and this shard (imported lazily)."""
    from stlake.stream import StreamSpec
    kwargs: dict[str, Any] = dict(
        lake=args.lake, normalize="normalize_total_log1p", image_size=args.image_size, image_dtype="float32",
        shuffle=shuffle, seed=seed, cur_shard=shard, shard_count=shards, num_epochs=num_epochs,
        batch_size=args.batch_size, slide_ids=list(slide_ids))
    for key, value in (("panel_name", args.panel_name), ("table", getattr(args, "table", None)),
                       ("version", getattr(args, "version", None)),
                       ("decode_threads", getattr(args, "decode_threads", None))):
        if value is not None:
            kwargs[key] = value
    if args.image_normalize:
        kwargs["image_normalize"] = True
    if augment:
        kwargs["augment"] = True
    if pin_memory:
        kwargs["pin_memory"] = True
    return StreamSpec(**kwargs)


# ---------------------------------------------------------------- model, training, evaluation

def build(args: argparse.Namespace, n_genes: int) -> ClipModel:
    """The model for ``n_genes`` panel genes; no in-model normalisation when the stream normalises."""
    from stlake.train.model import ClipModel, ModelConfig
    config = ModelConfig(n_genes=n_genes, encoder=args.encoder, embed_dim=args.embed_dim)
    if args.image_normalize:  # the stream already subtracts the mean and divides by the std
        config.image_mean = config.image_std = None
    return ClipModel(config)


def run_training(args: argparse.Namespace, train_ids: list[str], rank: int, world: int,
                 device: torch.device) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Stream this rank's shard of the training slides (endless epochs, so every rank runs ``--steps``).

    A resumed run reseeds the shuffle with the step it starts from, so it does not replay the first batches;
    its checkpoint is read once, here, and handed to the loop.
    """
    import torch

    from stlake.stream import make_loader
    from stlake.train import distributed
    from stlake.train.loop import OptimizerConfig, resume_state, train
    state = resume_state(args.checkpoint_dir, args.resume)
    start = int(state["step"]) if state is not None else 0
    spec = stream_spec(args, train_ids, rank, world, shuffle=True, num_epochs=None, seed=args.seed + start,
                       augment=args.augment, pin_memory=device.type == "cuda")
    with make_loader(spec) as loader:
        torch.manual_seed(args.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        model = distributed.wrap_model(build(args, loader.panel.n_genes), device)
        cfg = OptimizerConfig(lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps)
        history = train(model, loader, args.steps, cfg, checkpoint_dir=args.checkpoint_dir,
                        log_every=args.log_every, checkpoint_every=args.checkpoint_every, resumed=state,
                        log=print if rank == 0 else None)
    if not history and start < args.steps:
        raise RuntimeError("the stream yielded no batch: no spots in the training slides?")
    return model, history


def run_evaluation(args: argparse.Namespace, model: torch.nn.Module, train_ids: list[str],
                   holdout_ids: list[str]) -> dict[str, Any]:
    """Rank 0: embed (unsharded, one epoch, no shuffle) train and held-out slides; retrieval + probe."""
    from stlake.stream import make_loader
    from stlake.train.metrics import evaluate
    train_spec = stream_spec(args, train_ids, 0, 1, shuffle=True, num_epochs=1, seed=args.seed + 1)
    holdout_spec = stream_spec(args, holdout_ids, 0, 1, shuffle=False, num_epochs=1, seed=args.seed)
    with make_loader(train_spec) as train_batches, make_loader(holdout_spec) as holdout_batches:
        metrics = evaluate(model, train_batches, holdout_batches, alpha=args.ridge_alpha,
                           gene_names=holdout_batches.panel.symbols,
                           max_train_batches=args.eval_train_batches)
    metrics.update({"train_slides": train_ids, "holdout_slides": holdout_ids})
    return metrics


def write_metrics(args: argparse.Namespace, metrics: dict[str, Any]) -> Optional[str]:
    """Write ``metrics`` to ``--metrics-out`` (default ``<checkpoint-dir>/metrics.json``); the path, or None."""
    path = args.metrics_out or (os.path.join(args.checkpoint_dir, "metrics.json") if args.checkpoint_dir else None)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
    return path


def loss_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last step, first and last loss of a training history (None each when it is empty)."""
    return {"steps": history[-1]["step"] if history else None,
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None}


def evaluate_and_report(args: argparse.Namespace, model: torch.nn.Module, train_ids: list[str],
                        holdout_ids: list[str], summary: dict[str, Any]) -> None:
    """Rank 0: evaluate on the held-out slides, write ``metrics.json``, print the metrics (into ``summary``)."""
    summary["eval"] = run_evaluation(args, model, train_ids, holdout_ids)
    summary["metrics_path"] = write_metrics(args, summary["eval"])
    shown = {k: v for k, v in summary["eval"].items() if k != "pearson_per_gene"}
    print(json.dumps(shown, indent=2, default=str))


def train_and_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate on held-out slides (rank 0), return the summary (``steps``, losses, ``eval``, ``history``)."""
    from stlake.train import distributed
    rank, world, _, device = distributed.init_distributed(args.device)
    try:
        args.version, slides = pinned_snapshot(args.lake, args.table)
        train_ids, holdout_ids = split_slides(slides, args.train_slides, args.holdout_slides,
                                              args.holdout_fraction, args.seed)
        if rank == 0:
            print(f"world {world} on {device}; train slides {len(train_ids)}, held-out {len(holdout_ids)}")
        model, history = run_training(args, train_ids, rank, world, device)
        summary = loss_summary(history)
        distributed.barrier()
        if rank == 0 and holdout_ids and not args.no_eval:
            evaluate_and_report(args, model, train_ids, holdout_ids, summary)
        distributed.barrier()
        summary["history"] = history
        return summary
    finally:
        distributed.cleanup()


def cmd_train(args: argparse.Namespace) -> int:
    """``stlake train``: run the job on parsed flags; 0 on success (errors raise)."""
    train_and_evaluate(args)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``jobs/train_clip.py``: parse ``argv`` (default ``sys.argv[1:]``), train, evaluate."""
    return cmd_train(parse_args(argv))
