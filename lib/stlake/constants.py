"""Numbers shared by the stream, the training job and the derived tables, importable without torch."""
from __future__ import annotations

#: ``target_sum`` of scanpy's ``normalize_total`` used by the stream and the HVG statistics (counts per 10k).
DEFAULT_TARGET_SUM = 1e4

#: Per-channel RGB mean and standard deviation of ImageNet (images scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
