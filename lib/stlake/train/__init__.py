"""Reference training: a CLIP-style tile <-> expression model trained from stream batches.

``model`` (encoders, projection heads, symmetric InfoNCE), ``loop`` (AdamW training over any iterable
of batches, checkpoints, resume), ``metrics`` (retrieval recall@k, ridge linear probe), ``distributed``
(torchrun / DDP helpers). The job that wires them to the lake is ``job`` (``stlake train``, or
``jobs/train_clip.py`` under torchrun).

torch is imported on first use of the names below, so ``stlake.cli`` can register ``stlake train`` cheaply.
"""
from stlake.lazy import lazy_exports

ENCODERS = ("small", "resnet18")  # image encoders of stlake.train.model (here: no torch needed to list them)

__getattr__ = lazy_exports(__name__, {
    "init_distributed": "stlake.train.distributed",
    "OptimizerConfig": "stlake.train.loop", "load_checkpoint": "stlake.train.loop",
    "save_checkpoint": "stlake.train.loop", "train": "stlake.train.loop",
    "evaluate": "stlake.train.metrics", "linear_probe": "stlake.train.metrics",
    "retrieval_recall": "stlake.train.metrics",
    "ClipModel": "stlake.train.model", "ModelConfig": "stlake.train.model",
    "build_model": "stlake.train.model", "clip_loss": "stlake.train.model"})

__all__ = ["ClipModel", "ENCODERS", "ModelConfig", "OptimizerConfig", "build_model", "clip_loss", "evaluate",
           "init_distributed", "linear_probe", "load_checkpoint", "retrieval_recall", "save_checkpoint", "train"]
