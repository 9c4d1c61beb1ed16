"""Segmentation losses: binary cross-entropy plus soft Dice, computed per slice.

Label values: 0 background, 1 WMH, 2 "other pathology", which is ignored (those voxels add
nothing to either term). A domain's loss is the mean of its per-slice losses. Because it is a
mean over slices, the loss of a mini-batch equals the slice-count-weighted mean of the losses
of any split of it, which lets the meta-learning step reuse its half-batch gradients exactly
(see :mod:`wmhseg.weighting`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

IGNORE_LABEL = 2

# Additive smoothing of the soft Dice ratio; keeps the loss finite on slices with no WMH.
DICE_SMOOTH = 1.0


def per_slice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return BCE + soft Dice loss for each slice, shape ``(N,)``.

    ``logits`` and ``target`` have shape ``(N, 1, H, W)``; ``target`` holds 0, 1 or 2.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}"
        )
    valid = (target != IGNORE_LABEL).to(logits.dtype)
    truth = (target == 1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    dims = tuple(range(1, logits.dim()))
    bce_mean = (bce * valid).sum(dims) / valid.sum(dims).clamp_min(1.0)

    prob = torch.sigmoid(logits) * valid
    intersection = (prob * truth).sum(dims)
    total = prob.sum(dims) + (truth * valid).sum(dims)
    dice = (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return bce_mean + (1.0 - dice)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean BCE + soft Dice loss over the slices of one domain's mini-batch."""
    return per_slice_loss(logits, target).mean()
