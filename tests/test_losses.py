"""Tests of the BCE + soft Dice loss."""

from __future__ import annotations

import torch

from wmhseg.losses import per_slice_loss, segmentation_loss


def test_loss_ignores_label_two() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1, 1] = 1.0
    target[..., :2, 2:] = 2.0
    low = torch.zeros(1, 1, 4, 4)
    high = low.clone()
    high[..., :2, 2:] = 50.0  # confident WMH only where the label is ignored
    assert torch.allclose(per_slice_loss(high, target), per_slice_loss(low, target))


def test_loss_near_zero_for_perfect_prediction() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:5, 2:5] = 1.0
    logits = (target * 2 - 1) * 30.0
    assert float(segmentation_loss(logits, target)) < 1e-3


def test_loss_is_mean_over_slices() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.5).float()
    halves = (
        segmentation_loss(logits[:1], target[:1]) + 3 * segmentation_loss(logits[1:], target[1:])
    ) / 4
    assert torch.allclose(segmentation_loss(logits, target), halves)


def test_loss_finite_on_empty_slices() -> None:
    loss = segmentation_loss(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2.0))
    assert torch.isfinite(loss)
