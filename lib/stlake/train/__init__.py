"""Reference training: a CLIP-style tile <-> expression model trained from stream batches.

``model`` (encoders, projection heads, symmetric InfoNCE), ``loop`` (AdamW training over any iterable
of batches, checkpoints, resume), ``metrics`` (retrieval recall@k, ridge linear probe), ``distributed``
(torchrun / DDP helpers). The job that wires them to the lake is ``jobs/train_clip.py``.
"""
from stlake.train.distributed import init_distributed
from stlake.train.loop import OptimizerConfig, load_checkpoint, save_checkpoint, train
from stlake.train.metrics import evaluate, linear_probe, retrieval_recall
from stlake.train.model import ClipModel, ModelConfig, build_model, clip_loss

__all__ = ["ClipModel", "ModelConfig", "OptimizerConfig", "build_model", "clip_loss", "evaluate",
           "init_distributed", "linear_probe", "load_checkpoint", "retrieval_recall", "save_checkpoint", "train"]
