"""Segmentation networks: one input channel (T1 or FLAIR slice), one output channel of logits.

Both networks normalize with GroupNorm instead of BatchNorm, so a slice's output does not depend
on which other slices share its mini-batch. That keeps training and inference consistent for
batches of one domain or mixed domains, and lets the meta-learning step split a batch without
changing any result.
"""

from __future__ import annotations

from typing import Any

import torch

from wmhseg.models.lightweight import LightweightNet
from wmhseg.models.unet import UNet

MODEL_NAMES = ("unet", "lw")


def build_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a network by name (``"unet"`` or ``"lw"``) with keyword options."""
    if name == "unet":
        return UNet(**kwargs)
    if name == "lw":
        return LightweightNet(**kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def size_divisor(model: torch.nn.Module) -> int:
    """Return the number that the height and width of an input must be multiples of."""
    return int(getattr(model, "size_divisor", 1))


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "MODEL_NAMES",
    "LightweightNet",
    "UNet",
    "build_model",
    "count_parameters",
    "size_divisor",
]
