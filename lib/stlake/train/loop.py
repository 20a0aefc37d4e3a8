"""The training loop: any iterable of stream batches in, a loss history out; checkpoints and resume.

A batch is a dict with ``image`` (B x 3 x S x S float32 RGB), ``expression`` (B x G float32) and
``slide_id`` / ``spot_id`` / ``label`` lists, as the stream reader yields them. The loop works on a
plain model or a DistributedDataParallel one (one process per GPU, torchrun); bf16 autocast on CUDA.
Progress goes to ``log`` (by default this module's logger, at INFO level).
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Optional, cast

import torch
from torch import nn

from stlake.train import distributed
from stlake.train.model import ClipModel, clip_loss

CHECKPOINT_NAME = "checkpoint.pt"
Batch = dict[str, Any]
logger = logging.getLogger(__name__)


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr`` over ``total_steps``."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    total_steps: Optional[int] = None  # None: the ``steps`` given to :func:`train`
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0


def unwrap(model: nn.Module) -> ClipModel:
    """The ClipModel inside a DDP (or other ``.module``) wrapper."""
    return cast(ClipModel, getattr(model, "module", model))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


# ---------------------------------------------------------------- optimizer, schedule

def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norm weights and the logit scale (1-D / scalar parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, cfg: OptimizerConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at 0-based ``step``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------- checkpoints

def checkpoint_path(checkpoint_dir: str) -> str:
    """Where the loop keeps its checkpoint in ``checkpoint_dir``."""
    return os.path.join(checkpoint_dir, CHECKPOINT_NAME)


def save_checkpoint(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int,
                    extra: Optional[dict[str, Any]] = None) -> None:
    """Write model + optimizer + step (+ model config) atomically (tmp file, then rename)."""
    inner = unwrap(model)
    state = {"step": step, "model": inner.state_dict(), "model_config": inner.config.to_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, "extra": extra or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def restore_checkpoint(state: dict[str, Any], model: Optional[nn.Module] = None,
                       optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Load a checkpoint's state into ``model`` / ``optimizer`` when given; returns its step."""
    if model is not None:
        unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def load_checkpoint(path: str, model: Optional[nn.Module] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                    map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint into ``model`` / ``optimizer`` when given; returns the raw state (``state["step"]``)."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    restore_checkpoint(state, model, optimizer)
    return state


def resume_state(checkpoint_dir: Optional[str], resume: bool = True,
                 map_location: Any = "cpu") -> Optional[dict[str, Any]]:
    """The state of ``checkpoint_dir/checkpoint.pt`` when resuming and it exists, else None."""
    if not (resume and checkpoint_dir and os.path.exists(checkpoint_path(checkpoint_dir))):
        return None
    return torch.load(checkpoint_path(checkpoint_dir), map_location=map_location, weights_only=False)


def model_from_checkpoint(path: str, map_location: Any = "cpu") -> tuple[ClipModel, dict[str, Any]]:
    """Rebuild the ClipModel stored in a checkpoint; returns (model, state)."""
    from stlake.train.model import ModelConfig
    state = torch.load(path, map_location=map_location, weights_only=False)
    model = ClipModel(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model, state


# ---------------------------------------------------------------- batches

def cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Batches forever when ``batches`` can be iterated again (a list); once through otherwise (a stream)."""
    while True:
        iterator = iter(batches)
        if iterator is batches:  # a one-shot iterator: no second pass
            yield from iterator
            return
        empty = True
        for batch in iterator:
            empty = False
            yield batch
        if empty:
            return


def to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, expression) of a batch on ``device`` as float32."""
    non_blocking = device.type == "cuda"
    image = torch.as_tensor(batch["image"]).to(device, torch.float32, non_blocking=non_blocking)
    expression = torch.as_tensor(batch["expression"]).to(device, torch.float32, non_blocking=non_blocking)
    return image, expression


def autocast(device: torch.device, amp: Optional[bool]) -> torch.autocast:
    """bf16 autocast on CUDA (``amp=None``: on when the device is CUDA); a no-op context otherwise."""
    enabled = (device.type == "cuda") if amp is None else amp
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------- the loop

def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor, expression: torch.Tensor,
               grad_clip: Optional[float], amp: Optional[bool] = None) -> float:
    """One optimisation step; returns the loss."""
    model.train()
    with autocast(image.device, amp):
        image_emb, expr_emb, scale = model(image, expression)
    loss = clip_loss(image_emb, expr_emb, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    unwrap(model).clamp_logit_scale()
    return float(loss.detach())


def step_record(step: int, loss: float, model: nn.Module, optimizer: torch.optim.Optimizer,
                samples_per_s: float) -> dict[str, Any]:
    """One history row: ``{step, loss, temperature, samples_per_s, lr}``."""
    return {"step": step, "loss": loss, "temperature": unwrap(model).temperature, "samples_per_s": samples_per_s,
            "lr": optimizer.param_groups[0]["lr"]}


def progress_line(row: dict[str, Any]) -> str:
    """The logged line of a history row."""
    return (f"step {row['step']:>6}  loss {row['loss']:.4f}  T {row['temperature']:.4f}  "
            f"{row['samples_per_s']:.0f} samples/s  lr {row['lr']:.2e}")


def train(model: nn.Module, batches: Iterable[Batch], steps: int, optimizer_cfg: Optional[OptimizerConfig] = None,
          checkpoint_dir: Optional[str] = None, log_every: int = 10, checkpoint_every: Optional[int] = None,
          resume: bool = False, optimizer: Optional[torch.optim.Optimizer] = None, amp: Optional[bool] = None,
          log: Optional[Callable[[str], None]] = logger.info,
          resumed: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Train until ``steps`` optimiser steps in total (counting resumed ones); returns the history.

    History: one dict per step run here, ``{step, loss, temperature, samples_per_s, lr}`` (``step`` is
    1-based; ``samples_per_s`` counts every rank). ``resume=True`` continues from
    ``checkpoint_dir/checkpoint.pt`` when it exists; ``resumed`` (a state from :func:`resume_state`)
    continues from a checkpoint already read. Rank 0 writes a checkpoint every
    ``checkpoint_every`` steps and at the end. Stops early when a one-shot ``batches`` runs out.
    """
    cfg = optimizer_cfg or OptimizerConfig()
    optimizer = optimizer or build_optimizer(model, cfg)
    device = model_device(model)
    state = resumed if resumed is not None else resume_state(checkpoint_dir, resume, device)
    start = 0 if state is None else restore_checkpoint(state, model, optimizer)
    if state is not None and log:
        log(f"resumed from {checkpoint_path(checkpoint_dir) if checkpoint_dir else 'a checkpoint'} at step {start}")
    total = cfg.total_steps or steps
    world = distributed.world_size()
    history: list[dict[str, Any]] = []
    step = start
    tick = time.perf_counter()
    source = cycle(batches)
    while step < steps:
        batch = next(source, None)
        if batch is None:
            break
        image, expression = to_device(batch, device)
        set_lr(optimizer, cfg.lr * lr_factor(step, cfg, total))
        loss = train_step(model, optimizer, image, expression, cfg.grad_clip, amp)
        step += 1
        now = time.perf_counter()
        history.append(step_record(step, loss, model, optimizer, image.shape[0] * world / max(now - tick, 1e-9)))
        tick = now
        if log and (step % max(1, log_every) == 0 or step == steps):
            log(progress_line(history[-1]))
        if checkpoint_dir and checkpoint_every and step % checkpoint_every == 0 and distributed.is_main_process():
            save_checkpoint(checkpoint_path(checkpoint_dir), model, optimizer, step)
    if checkpoint_dir and distributed.is_main_process() and step > start:
        save_checkpoint(checkpoint_path(checkpoint_dir), model, optimizer, step, {"optimizer_cfg": asdict(cfg)})
    return history
