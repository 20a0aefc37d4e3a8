"""Reference training: model shapes, InfoNCE, the loop on a synthetic dataset, checkpoints, metrics, DDP."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from stlake.train import distributed, job
from stlake.train.loop import (
    OptimizerConfig,
    build_optimizer,
    checkpoint_path,
    cycle,
    load_checkpoint,
    lr_factor,
    model_from_checkpoint,
    train,
)
from stlake.train.metrics import embed, evaluate, fit_ridge, linear_probe, pearson_per_column, retrieval_recall
from stlake.train.model import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    ClipModel,
    ModelConfig,
    ResNet18,
    build_model,
    clip_loss,
    count_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES, N_GENES, SIZE, BATCH = 8, 24, 32, 32


# ---------------------------------------------------------------- a dataset whose image predicts its expression

def synthetic_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiles whose colour and stripe texture encode a latent class and a continuous intensity; expression
    whose panel genes are a class profile scaled by the same intensity, plus noise. Returns
    (images B x 3 x S x S in [0, 1], expression B x G (log1p-like), classes, intensity)."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(1234)  # same class colours/profiles for every split
    colours = torch.rand(N_CLASSES, 3, generator=fixed) * 0.8 + 0.1
    profiles = torch.rand(N_CLASSES, N_GENES, generator=fixed) * 3
    classes = torch.randint(0, N_CLASSES, (n,), generator=g)
    intensity = torch.rand(n, generator=g) * 0.8 + 0.2
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    freq = (classes % 4 + 1).view(n, 1, 1).float()
    axis = torch.where((classes % 2 == 0).view(n, 1, 1), yy, xx).float()
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * axis / SIZE)
    images = colours[classes][:, :, None, None] * (0.5 + 0.5 * stripes[:, None]) * intensity.view(n, 1, 1, 1)
    images = (images + 0.04 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    expression = (profiles[classes] * intensity[:, None] + 0.2 * torch.randn(n, N_GENES, generator=g)).clamp(min=0)
    return images, expression, classes, intensity


def as_batches(images: torch.Tensor, expression: torch.Tensor, slide: str, batch_size: int = BATCH,
               classes: Optional[torch.Tensor] = None) -> list[dict]:
    """Stream-reader-shaped batches (labels ``class {c}`` of ``classes``, else none)."""
    out = []
    for start in range(0, len(images), batch_size):
        n = len(images[start:start + batch_size])
        labels = [None] * n if classes is None else [f"class {int(c)}" for c in classes[start:start + batch_size]]
        out.append({"image": images[start:start + batch_size], "expression": expression[start:start + batch_size],
                    "slide_id": [slide] * n, "spot_id": [f"{slide}-{start + i}" for i in range(n)],
                    "label": labels})
    return out


@pytest.fixture(scope="module")
def data() -> dict:
    train_images, train_expr, train_classes, _ = synthetic_pairs(768, seed=0)
    test_images, test_expr, test_classes, _ = synthetic_pairs(256, seed=1)
    return {"train": as_batches(train_images, train_expr, "train-slide", classes=train_classes),
            "holdout": as_batches(test_images, test_expr, "holdout-slide", classes=test_classes)}


@pytest.fixture(scope="module")
def trained(data) -> tuple[ClipModel, list[dict]]:
    """A small model trained 80 steps on the synthetic pairs."""
    torch.manual_seed(0)
    model = build_model(N_GENES, "small", small_width=16, embed_dim=64, gene_hidden=(128,))
    history = train(model, data["train"], steps=80, optimizer_cfg=OptimizerConfig(lr=3e-3, warmup_steps=5),
                    log_every=20)
    return model, history


# ---------------------------------------------------------------- model

def test_resnet18_matches_the_reference_layout():
    # torchvision's resnet18 without its fc layer has exactly 11,176,512 parameters.
    assert count_parameters(ResNet18()) == 11_176_512
    model = build_model(10, "resnet18", embed_dim=32)
    model.eval()
    with torch.no_grad():
        image_emb, expr_emb, scale = model(torch.rand(2, 3, 64, 64), torch.rand(2, 10))
    assert image_emb.shape == expr_emb.shape == (2, 32)
    assert torch.allclose(image_emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_logit_scale_init_and_clamp():
    model = build_model(5)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert math.isclose(model.temperature, 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model.scale().item(), 100.0, rel_tol=1e-5)  # clamped in the forward pass
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.item(), LOGIT_SCALE_MAX, rel_tol=1e-6)
    assert LOGIT_SCALE_INIT < LOGIT_SCALE_MAX


def test_clip_loss_is_symmetric_and_rewards_alignment():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    b = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    scale = torch.tensor(1 / 0.07)
    assert torch.isclose(clip_loss(a, b, scale), clip_loss(b, a, scale))
    assert clip_loss(a, a, torch.tensor(100.0)) < 0.01
    assert clip_loss(a, b, scale) > 1.0


def test_model_config_round_trips():
    config = ModelConfig(n_genes=7, encoder="small", gene_hidden=(32, 16), image_mean=None, image_std=None)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_unknown_encoder_is_rejected():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model(4, "vit")


# ---------------------------------------------------------------- the loop

def test_loss_decreases_on_a_predictive_synthetic_dataset(trained):
    _, history = trained
    losses = [row["loss"] for row in history]
    assert [row["step"] for row in history] == list(range(1, 81))
    assert set(history[0]) >= {"step", "loss", "temperature", "samples_per_s"}
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"\nloss: first {losses[0]:.4f} (mean of 5: {first:.4f}), last {losses[-1]:.4f} (mean of 5: {last:.4f})")
    assert losses[0] > math.log(BATCH) * 0.8  # starts near chance: ln(32) = 3.47
    assert last < 0.6 * first
    assert all(row["samples_per_s"] > 0 and 0 < row["temperature"] <= 1 for row in history)


def test_trained_model_retrieves_and_probes_held_out_pairs(trained, data):
    model, _ = trained
    metrics = evaluate(model, data["train"], data["holdout"], alpha=1.0,
                       gene_names=[f"G{i}" for i in range(N_GENES)])
    n = metrics["n_holdout"]
    print(f"\nheld-out: recall@1/5/10 {metrics['recall@1']:.3f}/{metrics['recall@5']:.3f}/{metrics['recall@10']:.3f}"
          f" (chance {1 / n:.3f}/{5 / n:.3f}/{10 / n:.3f}), probe mean r {metrics['pearson_mean']:.3f}, label probe "
          f"accuracy {metrics['label_accuracy']:.3f} (majority {metrics['label_majority_baseline']:.3f})")
    assert n == 256 and metrics["n_train"] == 768
    assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    assert metrics["recall@10"] > 5 * 10 / n  # chance is 10/256
    assert metrics["pearson_mean"] > 0.6
    assert metrics["n_label_classes"] == N_CLASSES and metrics["n_labelled_holdout"] == n
    assert metrics["label_accuracy"] > 3 * metrics["label_majority_baseline"]  # 8 classes: majority ~1/8
    assert set(metrics["pearson_per_gene"]) == {f"G{i}" for i in range(N_GENES)}


def test_checkpoint_save_and_resume(tmp_path, data):
    torch.manual_seed(0)
    cfg = OptimizerConfig(lr=1e-3)
    model = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    first = train(model, data["train"], steps=3, optimizer_cfg=cfg, checkpoint_dir=str(tmp_path), log=None)
    assert [r["step"] for r in first] == [1, 2, 3]
    path = checkpoint_path(str(tmp_path))
    state = load_checkpoint(path)
    assert state["step"] == 3 and state["optimizer"]["state"]  # AdamW moments saved

    fresh = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    optimizer = build_optimizer(fresh, cfg)
    resumed = train(fresh, data["train"], steps=5, optimizer_cfg=cfg, checkpoint_dir=str(tmp_path),
                    resume=True, optimizer=optimizer, log=None)
    assert [r["step"] for r in resumed] == [4, 5]
    assert load_checkpoint(path)["step"] == 5

    rebuilt, state = model_from_checkpoint(path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    again = train(rebuilt, data["train"], steps=5, optimizer_cfg=cfg, checkpoint_dir=str(tmp_path), resume=True,
                  log=None)
    assert again == []  # already at the target step


def test_train_continues_from_a_state_already_read(tmp_path, data, monkeypatch):
    """``resumed``: the loop restores a checkpoint read once by the caller and never reads the file again."""
    from stlake.train.loop import resume_state
    cfg = OptimizerConfig(lr=1e-3)
    model = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    train(model, data["train"], steps=2, optimizer_cfg=cfg, checkpoint_dir=str(tmp_path), log=None)
    assert resume_state(str(tmp_path), resume=False) is None and resume_state(None) is None
    state = resume_state(str(tmp_path))
    assert state["step"] == 2
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    fresh = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    history = train(fresh, data["train"], steps=4, optimizer_cfg=cfg, checkpoint_dir=str(tmp_path), resume=True,
                    resumed=state, log=None)
    assert [r["step"] for r in history] == [3, 4] and loads == []


def test_bf16_autocast_path_runs(data):
    """The CUDA path's bf16 autocast, exercised on CPU: finite float32 loss, float32 weights."""
    torch.manual_seed(0)
    model = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    history = train(model, data["train"][:3], steps=3, amp=True, log=None)
    assert len(history) == 3 and all(math.isfinite(r["loss"]) for r in history)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_one_shot_iterator_stops_early_and_lists_cycle(data):
    model = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    history = train(model, iter(data["train"][:2]), steps=10, log=None)
    assert len(history) == 2
    assert len(list(zip(range(7), cycle(data["train"][:3])))) == 7


def test_lr_schedule_warms_up_then_decays():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] >= 0.1


# ---------------------------------------------------------------- metrics

def test_retrieval_recall_perfect_and_shuffled():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert retrieval_recall(emb, emb) == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    shuffled = retrieval_recall(emb, emb[rng.permutation(50)], ks=(1, 50))
    assert shuffled["recall@50"] == 1.0 and shuffled["recall@1"] < 0.2


def test_ridge_probe_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w = rng.normal(size=(6, 3))
    y = x @ w + 2.0 + 0.01 * rng.normal(size=(400, 3))
    weights, bias = fit_ridge(x, y, alpha=1e-3)
    assert np.allclose(weights, w, atol=0.01) and np.allclose(bias, 2.0, atol=0.01)
    result = linear_probe(x[:300], y[:300], x[300:], y[300:], alpha=1e-3, gene_names=["a", "b", "c"])
    assert result["pearson_mean"] > 0.99 and set(result["pearson_per_gene"]) == {"a", "b", "c"}


def test_pearson_is_nan_for_constant_genes():
    r = pearson_per_column(np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]),
                           np.array([[2.0, 1.0], [4.0, 1.0], [6.5, 1.0]]))
    assert r[0] > 0.99 and np.isnan(r[1])


def test_embed_keeps_ids(data):
    model = build_model(N_GENES, small_width=8, embed_dim=16, gene_hidden=(32,))
    out = embed(model, data["holdout"][:2])
    assert out["image_emb"].shape == (2 * BATCH, 16) and out["expression"].shape == (2 * BATCH, N_GENES)
    assert out["spot_id"][:2] == ["holdout-slide-0", "holdout-slide-1"] and model.training


# ---------------------------------------------------------------- distributed

def test_init_distributed_falls_back_to_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    rank, world, local_rank, device = distributed.init_distributed(device="cpu")
    assert (rank, world, local_rank, device.type) == (0, 1, 0, "cpu")
    assert not distributed.is_distributed() and distributed.is_main_process()
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


DDP_WORKER = r"""
import sys, torch
from stlake.train import distributed
from stlake.train.loop import OptimizerConfig, train, unwrap
from stlake.train.model import build_model
rank, world, local_rank, device = distributed.init_distributed(device="cpu")
assert world == 2 and torch.distributed.get_backend() == "gloo"
torch.manual_seed(rank)  # different init per rank: DDP broadcasts rank 0's weights
model = distributed.wrap_model(build_model(6, small_width=4, embed_dim=8, gene_hidden=(8,)), device)
g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
batches = [{"image": torch.rand(8, 3, 16, 16, generator=g), "expression": torch.rand(8, 6, generator=g)}
           for _ in range(3)]
history = train(model, batches, steps=3, optimizer_cfg=OptimizerConfig(lr=1e-2), checkpoint_dir=sys.argv[1], log=None)
flat = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])
gathered = [torch.zeros_like(flat) for _ in range(world)]
torch.distributed.all_gather(gathered, flat)
assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
print(f"rank {rank} ok steps={len(history)}")
distributed.cleanup()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo_stay_in_sync(tmp_path):
    """Two ranks under the torchrun env contract (RANK/WORLD_SIZE/LOCAL_RANK) train in lockstep."""
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    assert "rank 0 ok steps=3" in outputs[0] and "rank 1 ok steps=3" in outputs[1]
    assert load_checkpoint(checkpoint_path(str(tmp_path / "ckpt")))["step"] == 3  # written by rank 0 only


# ------------------------------------------------ the job (stream faked: StreamSpec/make_loader contract)

def run_job(argv: list[str]) -> dict:
    """The job's summary for these flags (``main`` itself only returns the exit code)."""
    return job.train_and_evaluate(job.parse_args(argv))


def test_split_slides_holds_out_whole_slides():
    slides = [f"s{i}" for i in range(10)]
    train_ids, holdout = job.split_slides(slides, holdout_fraction=0.2, seed=3)
    assert len(holdout) == 2 and sorted(train_ids + holdout) == slides
    assert job.split_slides(slides, holdout_fraction=0.2, seed=3) == (train_ids, holdout)  # deterministic
    assert job.split_slides(slides, holdout_slides=["s1"])[1] == ["s1"]
    assert job.split_slides(slides, train_slides=["s0", "s2"])[0] == ["s0", "s2"]
    train_two, holdout_two = job.split_slides(["a", "b"], holdout_fraction=0.9)
    assert len(train_two) == len(holdout_two) == 1  # one slide always stays for training
    with pytest.raises(ValueError):
        job.split_slides(slides, train_slides=["s1"], holdout_slides=["s1"])


class FakeSpec:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def fake_stream(specs: list) -> object:
    """A stand-in for ``stlake.stream``: batches of the synthetic pairs, per slide, honouring the spec."""
    import contextlib

    def make_loader(spec):
        specs.append(spec)
        epochs = spec.num_epochs

        def batches():
            epoch = 0
            while epochs is None or epoch < epochs:
                for i, slide in enumerate(spec.slide_ids):
                    images, expr, _, _ = synthetic_pairs(64, seed=i + 10 * epoch)
                    images = torch.nn.functional.interpolate(images, size=spec.image_size)
                    yield from as_batches(images, expr, slide, spec.batch_size)
                epoch += 1
        return contextlib.nullcontext(FakeLoader(batches))

    return types.SimpleNamespace(StreamSpec=FakeSpec, make_loader=make_loader)


class FakeLoader:
    """Like ``StreamLoader``: every ``iter()`` streams again; ``panel`` names the expression columns."""

    panel = types.SimpleNamespace(n_genes=N_GENES, symbols=[f"G{i}" for i in range(N_GENES)])

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return self.batches()


def test_job_trains_evaluates_and_resumes(tmp_path, monkeypatch):
    specs: list = []
    monkeypatch.setitem(sys.modules, "stlake.stream", fake_stream(specs))
    monkeypatch.setattr(job, "pinned_snapshot", lambda lake, table: (None, ["a", "b", "c", "d"]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ckpt = tmp_path / "ckpt"
    argv = ["--lake", str(tmp_path / "lake"), "--steps", "4", "--batch-size", "16", "--image-size", "24",
            "--holdout-slides", "d", "--checkpoint-dir", str(ckpt), "--device", "cpu", "--log-every", "2"]
    summary = run_job(argv)
    assert summary["steps"] == 4 and summary["eval"]["holdout_slides"] == ["d"]
    train_spec = specs[0]
    assert (train_spec.cur_shard, train_spec.shard_count, train_spec.num_epochs) == (0, 1, None)
    assert train_spec.slide_ids == ["a", "b", "c"] and train_spec.normalize == "normalize_total_log1p"
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert {"recall@1", "recall@5", "recall@10", "pearson_mean"} <= set(metrics)
    assert set(metrics["pearson_per_gene"]) == {f"G{i}" for i in range(N_GENES)} and metrics["n_holdout"] == 64

    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    resumed = run_job(argv[:3] + ["6"] + argv[4:] + ["--resume", "--no-eval"])
    monkeypatch.setattr(torch, "load", real_load)
    assert [row["step"] for row in resumed["history"]] == [5, 6] and "eval" not in resumed
    assert len(loads) == 1  # the checkpoint is read once (its step reseeds the stream, its state the loop)
    assert job.main(argv[:3] + ["7"] + argv[4:] + ["--resume", "--no-eval"]) == 0  # the exit code
    assert load_checkpoint(checkpoint_path(str(ckpt)))["step"] == 7


def test_pinned_snapshot_lists_the_slides_of_the_streamed_version(tmp_path):
    """Slides come from the very snapshot every rank streams (``pairs`` at the pinned version)."""
    from stlake.testing import lake as tl
    lake = str(tmp_path / "lake")
    with pytest.raises(FileNotFoundError, match="stlake pairs"):
        job.pinned_snapshot(lake, "pairs")
    tl.write_pairs(lake, [tl.FakeSlide("s1", 1), tl.FakeSlide("s0", 0)], run_id="r1")
    version = tl.write_pairs(lake, [tl.FakeSlide("s2", 2)], run_id="r2")
    assert job.pinned_snapshot(lake, "pairs") == (version, ["s0", "s1", "s2"])  # no `slides` table needed


def test_train_command_and_job_script_help():
    """``stlake train`` takes the job's flags; ``jobs/train_clip.py`` is a thin entry point, --help needs no torch."""
    from stlake import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    parsed = vars(cli.build_parser().parse_args(["train", "--lake", "x", "--steps", "3"]))
    assert parsed.pop("command") == "train" and parsed.pop("run") is job.cmd_train
    for common in ("verbose", "debug", "progress"):  # cli.COMMON_FLAGS: every stlake command has them
        parsed.pop(common)
    assert parsed == vars(job.parse_args(["--lake", "x", "--steps", "3"]))
    # the installed package, as under torchrun: no PYTHONPATH, run from another folder; --help imports no torch
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = str(ROOT / "jobs" / "train_clip.py")
    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, script], env=env, capture_output=True, text=True,
                            timeout=120, cwd=str(ROOT / "jobs"))
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert "--lake" in result.stdout and "torchrun --nproc-per-node 8" in result.stdout


# ---------------------------------------------------------------- the job on a real lake (make test-slow)

@pytest.fixture(scope="module")
def small_lake(spark, tmp_path_factory) -> str:
    """synth (small) -> Spark ingest -> pairs -> a 64-gene HVG panel."""
    from stlake.derived.hvg import compute_hvg
    from stlake.derived.pairs import build_pairs
    from stlake.ingestion.driver import ingest
    from stlake.ingestion.options import IngestOptions
    from stlake.synth import generate
    root = tmp_path_factory.mktemp("train-lake")
    generate(str(root / "synth"), size="small")
    lake = str(root / "lake")
    report = ingest(spark, IngestOptions(source=str(root / "synth" / "manifest.csv"), lake=lake))
    assert report.landed
    build_pairs(spark, lake)
    compute_hvg(spark, lake, k=64)
    return lake


@pytest.mark.slow
def test_job_on_a_streamed_lake(small_lake, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ckpt = tmp_path / "ckpt"
    summary = run_job(["--lake", small_lake, "--panel-name", "hvg64", "--steps", "12", "--batch-size", "32",
                       "--image-size", "32", "--holdout-fraction", "0.2", "--checkpoint-dir", str(ckpt),
                       "--device", "auto", "--log-every", "4"])
    assert summary["steps"] == 12 and summary["last_loss"] < summary["first_loss"]
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["n_holdout"] > 0 and len(metrics["pearson_per_gene"]) == 64
    assert 0 <= metrics["recall@1"] <= metrics["recall@10"] <= 1
    assert not set(metrics["train_slides"]) & set(metrics["holdout_slides"])


@pytest.mark.slow
def test_job_under_torchrun_two_ranks(small_lake, tmp_path):
    """torchrun, 2 CPU processes (gloo), each streaming its own shard; then a resumed run."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    base = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(ROOT / "jobs" / "train_clip.py"),
            "--lake", small_lake, "--panel-name", "hvg64", "--batch-size", "16", "--image-size", "32",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--device", "cpu", "--log-every", "2"]
    first = subprocess.run(base + ["--steps", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "world 2 on cpu" in first.stdout and (tmp_path / "ckpt" / "metrics.json").exists()
    second = subprocess.run(base + ["--steps", "6", "--resume", "--no-eval"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step      6" in second.stdout
    assert load_checkpoint(checkpoint_path(str(tmp_path / "ckpt")))["step"] == 6
