"""CLIP-style contrastive model pairing spot tiles with their expression (as in STimage-1K4M).

Image encoder (a small CNN for CPU, or a ResNet-18 built here without downloaded weights) and gene
encoder (an MLP over the panel) each feed a projection head into one joint space; a symmetric InfoNCE
loss with a learnable temperature (``logit_scale``, CLIP's init ``ln(1/0.07)``, clamped at ``ln(100)``)
pulls a tile and its own spot's expression together.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from stlake.constants import IMAGENET_MEAN, IMAGENET_STD  # the stream's normalisation, when it applies it
from stlake.train import ENCODERS  # defined torch-free there, for `stlake train --encoder`

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class ModelConfig:
    """Shape of a :class:`ClipModel`; stored in checkpoints so a model can be rebuilt from one."""

    n_genes: int
    encoder: str = "small"  # "small" (CPU tests) | "resnet18" (GPU)
    embed_dim: int = 128  # joint space
    small_width: int = 32  # channels of the small CNN's first stage (doubles per stage)
    gene_hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.1
    # Per-channel normalisation applied inside the model to [0, 1] RGB input; None when the stream
    # already delivers normalised images.
    image_mean: Optional[tuple[float, float, float]] = IMAGENET_MEAN
    image_std: Optional[tuple[float, float, float]] = IMAGENET_STD
    logit_scale_init: float = LOGIT_SCALE_INIT
    logit_scale_max: float = LOGIT_SCALE_MAX

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """The config of :meth:`to_dict`'s values (lists read back from a checkpoint become tuples)."""
        values = dict(values)
        values["gene_hidden"] = tuple(values.get("gene_hidden", ()))
        for key in ("image_mean", "image_std"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# ---------------------------------------------------------------- image encoders

def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four conv stages (stride 2 each) and global average pooling: fast on CPU at 32-64 px tiles."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [conv_bn(c_in, c_out, stride=2), conv_bn(c_out, c_out)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S images -> B x ``out_dim`` features."""
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output: ReLU(convs(x) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 trunk (He et al. 2016; torchvision's layout, no classifier), randomly initialised."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.out_dim = 512
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions; each block's last BatchNorm scaled to zero."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():  # zero-init the last BN of each block: starts as identity
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S images -> B x 512 features."""
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


ImageEncoder = Union[SmallCNN, ResNet18]


def build_image_encoder(config: ModelConfig) -> ImageEncoder:
    """The configured image trunk; it exposes ``out_dim``."""
    if config.encoder == "small":
        return SmallCNN(config.small_width)
    if config.encoder == "resnet18":
        return ResNet18()
    raise ValueError(f"unknown encoder {config.encoder!r}; expected one of {ENCODERS}")


# ---------------------------------------------------------------- gene encoder, projection

class GeneEncoder(nn.Module):
    """MLP over the panel's (normalised log1p) expression."""

    def __init__(self, n_genes: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_genes
        for c_out in hidden:
            layers += [nn.Linear(c_in, c_out), nn.LayerNorm(c_out), nn.GELU(), nn.Dropout(dropout)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x G expression -> B x ``out_dim`` features."""
        return self.net(x)


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear with a residual around the second layer, then LayerNorm (BLEEP/CLIP-style)."""

    def __init__(self, c_in: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(c_in, dim)
        self.fc = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> B x ``dim`` joint-space vectors (not yet normalised)."""
        projected = self.proj(x)
        return self.norm(projected + self.dropout(self.fc(F.gelu(projected))))


# ---------------------------------------------------------------- the model

class ClipModel(nn.Module):
    """Image tower + expression tower into one L2-normalised space, and the learnable logit scale."""

    image_mean: torch.Tensor  # 1 x 3 x 1 x 1 buffers of the in-model normalisation
    image_std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = build_image_encoder(config)
        self.image_proj = ProjectionHead(self.image_encoder.out_dim, config.embed_dim, config.dropout)
        self.gene_encoder = GeneEncoder(config.n_genes, config.gene_hidden, config.dropout)
        self.gene_proj = ProjectionHead(self.gene_encoder.out_dim, config.embed_dim, config.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        mean = config.image_mean if config.image_mean is not None else (0.0, 0.0, 0.0)
        std = config.image_std if config.image_std is not None else (1.0, 1.0, 1.0)
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Trunk output (before projection) of B x 3 x S x S RGB images."""
        return self.image_encoder((image - self.image_mean) / self.image_std)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings of images."""
        return F.normalize(self.image_proj(self.image_features(image)), dim=-1)

    def encode_expression(self, expression: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings of B x G expression."""
        return F.normalize(self.gene_proj(self.gene_encoder(expression)), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at ``exp(logit_scale_max)`` (the gradient stops at the clamp)."""
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    @property
    def temperature(self) -> float:
        """1 / scale: CLIP's softmax temperature."""
        return float(1.0 / self.scale().detach())

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the parameter itself in [0, logit_scale_max] (CLIP clamps after every step)."""
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)

    def forward(self, image: torch.Tensor, expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, expression embeddings, logit scale)."""
        return self.encode_image(image), self.encode_expression(expression), self.scale()


def clip_loss(image_emb: torch.Tensor, expr_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->expression and expression->image cross-entropy over the batch."""
    logits = scale * image_emb.float() @ expr_emb.float().t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def build_model(n_genes: int, encoder: str = "small", **overrides: Any) -> ClipModel:
    """A :class:`ClipModel` for a panel of ``n_genes`` genes."""
    return ClipModel(ModelConfig(n_genes=n_genes, encoder=encoder, **overrides))


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
