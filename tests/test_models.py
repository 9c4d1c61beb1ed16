"""Tests of the segmentation networks."""

from __future__ import annotations

import pytest
import torch

from wmhseg.models import LightweightNet, UNet, build_model, count_parameters, size_divisor


@pytest.mark.parametrize("depth", [1, 3])
def test_unet_output_shape(depth: int) -> None:
    model = UNet(width=4, depth=depth)
    side = 2**depth * 3
    assert model(torch.zeros(2, 1, side, side * 2)).shape == (2, 1, side, side * 2)


def test_unet_size_divisor() -> None:
    assert size_divisor(UNet(width=4, depth=3)) == 8


def test_lw_keeps_any_shape() -> None:
    model = LightweightNet(width=8)
    assert model(torch.zeros(1, 1, 17, 23)).shape == (1, 1, 17, 23)


def test_lw_has_no_pooling() -> None:
    names = {type(m).__name__ for m in LightweightNet().modules()}
    assert not any("Pool" in name for name in names)


def test_lw_about_three_percent_of_unet() -> None:
    ratio = count_parameters(LightweightNet()) / count_parameters(UNet())
    assert 0.02 < ratio < 0.04


def test_output_independent_of_batch() -> None:
    # GroupNorm: a slice's logits must not depend on the other slices in the batch.
    torch.manual_seed(0)
    model = UNet(width=4, depth=2).train()
    batch = torch.randn(3, 1, 16, 16)
    together = model(batch)
    alone = model(batch[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5)


def test_build_model_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
