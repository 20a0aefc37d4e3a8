"""torch.distributed helpers: one process per GPU under torchrun, or a single process.

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and the rendezvous address); each rank
reads its own shard of the stream (``cur_shard=rank``, ``shard_count=world_size``).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:<local_rank>`` when CUDA is present, else CPU; any other name as given."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def default_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: str = "auto", backend: Optional[str] = None) -> tuple[int, int, int, torch.device]:
    """(rank, world_size, local_rank, device); joins the process group when ``WORLD_SIZE`` > 1.

    NCCL on GPU, gloo on CPU (``backend`` overrides). A single process never creates a group.
    """
    rank, world_size, local_rank = env_ranks()
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": target} if target.type == "cuda" else {}
        dist.init_process_group(backend or default_backend(target), rank=rank, world_size=world_size, **kwargs)
    return rank, world_size, local_rank, target


def is_distributed() -> bool:
    """True when a process group is up."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op in a single process).

    Barrier first: rank 0 hosts the rendezvous store, and a rank still tearing down when it exits aborts.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, wrapped in DistributedDataParallel when a process group is up."""
    model = model.to(device)
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
