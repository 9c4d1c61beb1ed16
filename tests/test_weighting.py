"""Tests of the loss-weighting rules and the inner loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wmhseg.losses import segmentation_loss
from wmhseg.models import UNet
from wmhseg.weighting import (
    FixedWeighting,
    MapWeighting,
    SimpleWeighting,
    estimator_agreement,
    first_order_choice,
    inner_loop_scores,
    map_weights,
    split_batch,
    weighted_step,
)


def _batch(seed: int, count: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 1, size, size, generator=generator)
    labels = (torch.rand(count, 1, size, size, generator=generator) > 0.7).float()
    return images, labels


class BatchNormNet(nn.Module):
    """A tiny network with BatchNorm, whose running statistics the inner loop must not touch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


def test_map_weights_beta_by_hand() -> None:
    # (α + N − 1) / (α + β + n − 2) with α = β = 5, N = 3 of n = 4.
    assert map_weights((5.0, 5.0), (3, 1)) == pytest.approx((7 / 12, 5 / 12))


def test_map_weights_no_observations() -> None:
    assert map_weights((5.0, 5.0), (0, 0)) == pytest.approx((0.5, 0.5))


def test_map_weights_dirichlet_by_hand() -> None:
    # (α_k + N_k − 1) / (Σα + n − K) = ((2, 2, 5) / 9) for α = (2, 3, 4), N = (1, 0, 2).
    assert map_weights((2.0, 3.0, 4.0), (1, 0, 2)) == pytest.approx((2 / 9, 2 / 9, 5 / 9))


def test_map_window_slides() -> None:
    weighting = MapWeighting(mode="greedy", window=3, prior=(2.0, 2.0))
    for choice in (0, 0, 0, 1):
        weighting.observe_choice(choice)
    # The window holds (0, 0, 1): N = 2 of n = 3, so λ = (2 + 2 − 1) / (4 + 3 − 2) = 3/5.
    assert list(weighting.observations) == [0, 0, 1]
    assert weighting.weights() == pytest.approx((0.6, 0.4))


@pytest.mark.parametrize("prior", [(1.0, 5.0), (5.0, 0.5), (2.0, 2.0, 1.0)])
def test_map_prior_rejects_alpha_at_most_one(prior: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="greater than 1"):
        MapWeighting(prior=prior)


def test_map_lambda_stays_inside_interval() -> None:
    weighting = MapWeighting(mode="greedy", window=100, prior=(1.01, 1.01))
    values = []
    for _ in range(300):
        weighting.observe_choice(0)
        values.append(weighting.weights()[0])
    assert min(values) > 0.0
    assert max(values) < 1.0


def test_map_greedy_and_conservative_choose() -> None:
    scores = [0.8, 1.2]
    assert MapWeighting(mode="greedy").choose(scores) == 0
    assert MapWeighting(mode="conservative").choose(scores) == 1


def test_fixed_rejects_weights_not_summing_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        FixedWeighting([0.5, 0.6])


def test_simple_update_by_hand() -> None:
    weighting = SimpleWeighting(gamma=-0.1, initial=0.5)
    weighting.observe([2.0, 1.0])
    # λ + γ (H_A − H_B) / |H_A| = 0.5 − 0.1 · 0.5 = 0.45.
    assert weighting.weights() == pytest.approx((0.45, 0.55))


def test_simple_clips_to_unit_interval() -> None:
    weighting = SimpleWeighting(gamma=0.1, initial=0.99)
    weighting.observe([1.0, -5.0])
    assert weighting.weights()[0] == 1.0


def test_split_batch_too_small() -> None:
    images, labels = _batch(0, count=1)
    assert split_batch((images, labels), torch.Generator().manual_seed(0)) is None


def _helpful_domain_case() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    # Domain A: every voxel is WMH, so its step clearly lowers the loss. Domain B: every voxel
    # is ignored (label 2), so its loss is constant and its step changes nothing.
    model = nn.Conv2d(1, 1, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    images = torch.ones(4, 1, 6, 6)
    domain_a = (images, torch.ones(4, 1, 6, 6))
    domain_b = (images, torch.full((4, 1, 6, 6), 2.0))
    return model, [domain_a, domain_b]


def test_inner_loop_helpful_domain_scores_lower() -> None:
    model, (domain_a, domain_b) = _helpful_domain_case()
    train_half = [(domain_a[0][:2], domain_a[1][:2]), (domain_b[0][:2], domain_b[1][:2])]
    test_half = [(domain_a[0][2:], domain_a[1][2:]), (domain_b[0][2:], domain_b[1][2:])]
    scores = inner_loop_scores(model, train_half, test_half, lr=0.5)
    assert scores[0] < scores[1]


def test_greedy_conservative_pick_opposite() -> None:
    choices = {}
    for mode in ("greedy", "conservative"):
        model, batches = _helpful_domain_case()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        weighting = MapWeighting(mode=mode, window=10, prior=(2.0, 2.0))  # type: ignore[arg-type]
        result = weighted_step(
            model, optimizer, batches, weighting, generator=torch.Generator().manual_seed(0)
        )
        choices[mode] = result.choice
    assert choices["greedy"] == 0
    assert choices["conservative"] == 1


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _optimizer_with_state(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = _batch(5)
    segmentation_loss(model(images), labels).backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("network", ["batchnorm", "unet"])
def test_inner_loop_leaves_model_untouched(network: str) -> None:
    torch.manual_seed(0)
    model = BatchNormNet() if network == "batchnorm" else UNet(width=4, depth=1)
    optimizer = _optimizer_with_state(model)
    grads_before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    state_before = _state(model)
    optimizer_before = copy.deepcopy(optimizer.state_dict())

    inner_loop_scores(model, [_batch(1), _batch(2)], [_batch(3), _batch(4)], lr=0.1)

    for name, value in model.state_dict().items():
        assert torch.equal(value, state_before[name]), name
    grads_after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads_before, grads_after, strict=True))
    optimizer_after = optimizer.state_dict()
    for key, entry in optimizer_before["state"].items():
        assert torch.equal(
            entry["momentum_buffer"], optimizer_after["state"][key]["momentum_buffer"]
        )


def test_fixed_half_equals_plain_weighted_loss() -> None:
    torch.manual_seed(0)
    model = UNet(width=4, depth=1)
    reference = copy.deepcopy(model)
    batches = [_batch(1), _batch(2)]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weighted_step(
        model, optimizer, batches, FixedWeighting([0.5, 0.5]), generator=torch.Generator()
    )

    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    loss = 0.5 * segmentation_loss(reference(batches[0][0]), batches[0][1])
    loss = loss + 0.5 * segmentation_loss(reference(batches[1][0]), batches[1][1])
    loss.backward()
    reference_optimizer.step()

    for (name, value), expected in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.allclose(value, expected, atol=1e-6), name


@pytest.mark.parametrize("network", ["batchnorm", "unet"])
def test_meta_step_equals_weighted_loss(network: str) -> None:
    # Both execution paths (shared forward for GroupNorm, generic for BatchNorm) must apply
    # the plain weighted-loss update with the λ they report.
    torch.manual_seed(0)
    model = BatchNormNet() if network == "batchnorm" else UNet(width=4, depth=1)
    reference = copy.deepcopy(model)
    batches = [_batch(1), _batch(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = MapWeighting(mode="greedy", window=5, prior=(2.0, 2.0))
    result = weighted_step(
        model, optimizer, batches, weighting, generator=torch.Generator().manual_seed(3)
    )

    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss = sum(
        w * segmentation_loss(reference(x), y)
        for w, (x, y) in zip(result.weights, batches, strict=True)
    )
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    reference_optimizer.step()
    for (name, value), expected in zip(
        model.state_dict().items(),
        reference.state_dict().values(),
        strict=True,
    ):
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        assert torch.allclose(value, expected, atol=1e-5), name


def test_three_domain_step_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    model = UNet(width=4, depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = MapWeighting(mode="conservative", window=10, prior=(2.0, 2.0, 2.0))
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        result = weighted_step(
            model,
            optimizer,
            [_batch(step), _batch(10 + step), _batch(20 + step)],
            weighting,
            generator=generator,
        )
    assert len(result.weights) == 3
    assert sum(result.weights) == pytest.approx(1.0)


def test_small_batch_keeps_previous_lambda() -> None:
    model = UNet(width=4, depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = MapWeighting(window=10, prior=(2.0, 2.0))
    weighting.observe_choice(0)
    before = weighting.weights()
    result = weighted_step(
        model, optimizer, [_batch(1, count=1), _batch(2)], weighting, generator=torch.Generator()
    )
    assert result.skipped_inner_loop
    assert weighting.weights() == before


def test_first_order_choice_two_domains_by_norm() -> None:
    small = [torch.tensor([1.0, 0.0])]
    large = [torch.tensor([0.0, 3.0])]
    assert first_order_choice([small, large], "greedy") == 1
    assert first_order_choice([small, large], "conservative") == 0


def test_first_order_step_runs() -> None:
    torch.manual_seed(0)
    model = UNet(width=4, depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = MapWeighting(mode="greedy", window=10, prior=(2.0, 2.0))
    result = weighted_step(
        model,
        optimizer,
        [_batch(1), _batch(2)],
        weighting,
        generator=torch.Generator(),
        estimator="first_order",
    )
    assert result.choice in (0, 1)


def test_estimator_agreement_on_helpful_case() -> None:
    model, batches = _helpful_domain_case()
    exact, first_order = estimator_agreement(
        model, batches, mode="greedy", lr=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert exact == first_order == 0
