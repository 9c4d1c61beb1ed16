"""Loss weighting between domains, estimated by inner-loop meta-learning.

Implements the method of A. Sicilia et al., "Multi-domain learning by meta-learning: taking
optimal steps in multi-domain loss landscapes by inner-loop learning", IEEE ISBI 2021, for any
``torch.nn.Module`` and K ≥ 2 domains. Domain 0 is "A" (FLAIR in wmhseg), domain 1 is "B" (T1).

One training step (:func:`weighted_step`):

1. Each domain's mini-batch is split at random into a meta-train and a meta-test half.
2. For each domain k, a hypothetical SGD step on its meta-train half gives
   ``θ_k = θ − η ∇L_k(meta-train_k)`` (first order: no gradient flows through it).
3. Each hypothetical model is scored on all meta-test halves: ``H_k = Σ_j L_j(meta-test_j; θ_k)``.
4. The observation is the domain whose step gave the lowest H ("greedy") or the highest H
   ("conservative"). These follow the paper's text and its Taylor analysis; its Algorithm 1
   prints the two-domain comparison the other way round.
5. λ is the MAP estimate under a Beta/Dirichlet prior over the last ``window`` observations.
6. The real update uses ``Σ_k λ_k L_k`` over the whole mini-batch.

Hypothetical parameters are evaluated with :func:`torch.func.functional_call` on detached
tensors, and the meta-test passes run under ``torch.no_grad()``. The model's parameters,
buffers and ``.grad`` fields and the optimizer state are not modified by the inner loop.

Two execution paths give the same result:

* the *shared-forward* path, used when no module in the model computes batch statistics
  (no BatchNorm in training mode): the outer step reuses the half-batch forward passes and the
  meta-train gradients, so the inner loop adds only the meta-test forward passes. This is exact
  because the loss of :mod:`wmhseg.losses` is a mean over slices.
* the *generic* path for any other model: a separate forward/backward over the full batch.

The first-order estimator (``estimator="first_order"``) skips the inner loop. By Taylor
expansion ``H_k ≈ Σ_j L_j − η g_k · G`` with ``g_k`` the domain's gradient and ``G = Σ_j g_j``,
so the lowest H belongs to the largest ``g_k · G``. For two domains this is
``H_A − H_B ≈ η (‖g_B‖² − ‖g_A‖²)``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from wmhseg.losses import per_slice_loss

Mode = Literal["greedy", "conservative"]
Estimator = Literal["exact", "first_order"]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Weighting rules
# --------------------------------------------------------------------------------------------


class Weighting:
    """Base class of weighting rules, which store the current weights λ (one per domain, sum 1)."""

    #: Whether the rule needs the inner-loop scores H (or their first-order proxy).
    needs_scores: bool = False

    def __init__(self, num_domains: int) -> None:
        if num_domains < 2:
            raise ValueError(f"weighting needs at least 2 domains, got {num_domains}")
        self.num_domains = num_domains

    def weights(self) -> tuple[float, ...]:
        """Return the current weights λ_k."""
        raise NotImplementedError

    def observe(self, scores: Sequence[float]) -> None:
        """Update λ from the inner-loop scores ``H_k`` (lower is better)."""

    def observe_choice(self, choice: int) -> None:
        """Update λ from a chosen domain index (used by the first-order estimator)."""

    def choose(self, scores: Sequence[float]) -> int:
        """Return the domain that ``scores`` select (only rules with a mode choose)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Return the state needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`."""


class FixedWeighting(Weighting):
    """Constant weights, e.g. F50-T50 (``FixedWeighting([0.5, 0.5])``)."""

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__(len(weights))
        values = [float(w) for w in weights]
        if any(w < 0 or not math.isfinite(w) for w in values):
            raise ValueError(f"fixed weights must be finite and non-negative, got {values}")
        if abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"fixed weights must sum to 1, got {values} (sum {sum(values)})")
        self._weights = tuple(values)

    def weights(self) -> tuple[float, ...]:
        return self._weights


def check_prior(prior: Sequence[float]) -> tuple[float, ...]:
    """Validate a Beta/Dirichlet prior: every α must be finite and greater than 1.

    With α ≤ 1 the posterior mode can lie on the boundary (λ = 0 or 1) or be undefined, so
    such priors are rejected.
    """
    values = tuple(float(a) for a in prior)
    if len(values) < 2:
        raise ValueError(f"prior needs one value per domain (at least 2), got {values}")
    bad = [a for a in values if not math.isfinite(a) or a <= 1.0]
    if bad:
        raise ValueError(
            f"prior {values} has values ≤ 1: the MAP estimate of λ is only defined inside "
            "(0, 1) when every prior parameter is greater than 1. Use e.g. --prior 5 5."
        )
    return values


def map_weights(prior: Sequence[float], counts: Sequence[int]) -> tuple[float, ...]:
    """Return the Dirichlet posterior mode ``(α_k + N_k − 1) / (Σα + n − K)``.

    ``counts[k]`` is how often domain k was chosen among the last n observations
    (``n = sum(counts)``). For two domains this is the Beta mode
    ``(α + N − 1) / (α + β + n − 2)``.
    """
    alphas = check_prior(prior)
    if len(counts) != len(alphas):
        raise ValueError(f"{len(counts)} counts for {len(alphas)} prior values")
    n = sum(counts)
    denominator = sum(alphas) + n - len(alphas)
    return tuple((a + c - 1.0) / denominator for a, c in zip(alphas, counts, strict=True))


class MapWeighting(Weighting):
    """λ as the MAP estimate over a sliding window of greedy or conservative observations."""

    needs_scores = True

    def __init__(
        self,
        *,
        mode: Mode = "conservative",
        window: int = 100,
        prior: Sequence[float] = (5.0, 5.0),
    ) -> None:
        super().__init__(len(prior))
        if mode not in ("greedy", "conservative"):
            raise ValueError(f"mode must be 'greedy' or 'conservative', got {mode!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.mode: Mode = mode
        self.window = int(window)
        self.prior = check_prior(prior)
        self.observations: deque[int] = deque(maxlen=self.window)
        self._weights = map_weights(self.prior, [0] * self.num_domains)

    def weights(self) -> tuple[float, ...]:
        return self._weights

    def choose(self, scores: Sequence[float]) -> int:
        """Return argmin H (greedy) or argmax H (conservative); ties go to the lower index."""
        if len(scores) != self.num_domains:
            raise ValueError(f"{len(scores)} scores for {self.num_domains} domains")
        values = list(scores)
        target = min(values) if self.mode == "greedy" else max(values)
        return values.index(target)

    def observe(self, scores: Sequence[float]) -> None:
        self.observe_choice(self.choose(scores))

    def observe_choice(self, choice: int) -> None:
        if not 0 <= choice < self.num_domains:
            raise ValueError(f"choice {choice} outside 0..{self.num_domains - 1}")
        self.observations.append(choice)
        counts = [0] * self.num_domains
        for index in self.observations:
            counts[index] += 1
        self._weights = map_weights(self.prior, counts)

    def state_dict(self) -> dict[str, Any]:
        return {"observations": list(self.observations), "weights": list(self._weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observations = deque((int(i) for i in state["observations"]), maxlen=self.window)
        self._weights = tuple(float(w) for w in state["weights"])


class SimpleWeighting(Weighting):
    """The "Simple" heuristic: ``λ ← clip(λ + γ (H_A − H_B) / |H_A|, 0, 1)``, two domains.

    ``γ = −0.1`` is "Simple-G", ``γ = +0.1`` is "Simple-C". Unlike the MAP rule, λ can reach
    0 or 1.
    """

    needs_scores = True

    def __init__(self, *, gamma: float = -0.1, initial: float = 0.5) -> None:
        super().__init__(2)
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"initial λ must be in [0, 1], got {initial}")
        self.gamma = float(gamma)
        self.value = float(initial)

    def weights(self) -> tuple[float, ...]:
        return (self.value, 1.0 - self.value)

    def observe(self, scores: Sequence[float]) -> None:
        h_a, h_b = float(scores[0]), float(scores[1])
        if h_a == 0.0:
            return  # NOTE: the heuristic divides by |H_A|; a zero loss leaves λ unchanged.
        self.value = min(1.0, max(0.0, self.value + self.gamma * (h_a - h_b) / abs(h_a)))

    def observe_choice(self, choice: int) -> None:
        raise ValueError("the Simple heuristic needs the exact inner-loop scores, not a choice")

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


# --------------------------------------------------------------------------------------------
# Inner loop
# --------------------------------------------------------------------------------------------


def has_batch_statistics(model: nn.Module) -> bool:
    """Return whether a module normalizes with batch statistics in its current mode."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()
    )


def split_batch(batch: Batch, generator: torch.Generator) -> tuple[Batch, Batch] | None:
    """Split a domain's mini-batch at random into meta-train and meta-test halves.

    Returns None when the batch has fewer than 2 slices.
    """
    images, labels = batch
    count = images.shape[0]
    if count < 2:
        return None
    order = torch.randperm(count, generator=generator).to(images.device)
    half = count // 2
    train_index, test_index = order[:half], order[half:]
    return (images[train_index], labels[train_index]), (images[test_index], labels[test_index])


def _named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def meta_test_scores(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    gradients: Sequence[Sequence[torch.Tensor]],
    meta_test: Sequence[Batch],
    *,
    lr: float,
    loss_fn: LossFunction,
) -> list[float]:
    """Return ``H_k = Σ_j L_j(meta_test_j; θ − lr·g_k)`` for each domain gradient ``g_k``.

    Evaluated with :func:`torch.func.functional_call` under ``no_grad`` on copies of the
    buffers, so the model's own parameters and buffers (BatchNorm running statistics) stay
    as they are.
    """
    names = list(params)
    scores = []
    with torch.no_grad():
        for grads in gradients:
            hypothetical = {
                name: params[name].detach() - lr * grad
                for name, grad in zip(names, grads, strict=True)
            }
            buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
            total = 0.0
            for images, labels in meta_test:
                logits = functional_call(model, (hypothetical, buffers), (images,))
                total += float(loss_fn(logits, labels))
            scores.append(total)
    return scores


def inner_loop_scores(
    model: nn.Module,
    meta_train: Sequence[Batch],
    meta_test: Sequence[Batch],
    *,
    lr: float,
    loss_fn: LossFunction | None = None,
) -> list[float]:
    """Return the inner-loop scores ``H_k`` for any model (generic path).

    Takes one hypothetical first-order SGD step per domain on its meta-train half and scores
    it on all meta-test halves. Parameters, buffers, ``.grad`` and any optimizer are untouched.
    """
    loss_fn = loss_fn or _mean_loss
    params = _named_trainable(model)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    gradients = []
    for images, labels in meta_train:
        logits = functional_call(model, (params, buffers), (images,))
        loss = loss_fn(logits, labels)
        gradients.append(_grads_or_zeros(loss, list(params.values()), retain_graph=False))
    return meta_test_scores(model, params, gradients, meta_test, lr=lr, loss_fn=loss_fn)


def _mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return per_slice_loss(logits, labels).mean()


def first_order_choice(gradients: Sequence[Sequence[torch.Tensor]], mode: Mode) -> int:
    """Return the domain chosen by the first-order estimate from per-domain gradients.

    ``H_k ≈ const − η g_k · G`` with ``G = Σ_j g_j``: greedy takes the largest ``g_k · G``,
    conservative the smallest. For two domains that is the larger (greedy) or smaller
    (conservative) gradient norm.
    """
    total = [sum(parts) for parts in zip(*gradients, strict=True)]
    products = [
        float(sum((g * t).sum() for g, t in zip(grads, total, strict=True))) for grads in gradients
    ]
    target = max(products) if mode == "greedy" else min(products)
    return products.index(target)


# --------------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """Outcome of one call of :func:`weighted_step`."""

    losses: list[float]
    weights: tuple[float, ...]
    scores: list[float] | None = None
    choice: int | None = None
    skipped_inner_loop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _grads_or_zeros(
    loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool
) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _apply_gradient(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach().clone()
    optimizer.step()


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _choose_and_observe(weighting: Weighting, scores: list[float]) -> int | None:
    choice = weighting.choose(scores) if isinstance(weighting, MapWeighting) else None
    weighting.observe(scores)
    return choice


def weighted_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    weighting: Weighting,
    *,
    generator: torch.Generator,
    estimator: Estimator = "exact",
    loss_fn: LossFunction | None = None,
) -> StepResult:
    """Run one outer training step with λ re-estimated first (when the rule needs it).

    ``batches[k]`` is domain k's mini-batch ``(images, labels)``; ``loss_fn`` must be a mean
    over slices (default: BCE + soft Dice of :mod:`wmhseg.losses`). ``generator`` draws the
    meta-train/meta-test splits. The optimizer's learning rate is the inner step size η.
    """
    if len(batches) != weighting.num_domains:
        raise ValueError(f"{len(batches)} domain batches for {weighting.num_domains} weights")
    loss_fn = loss_fn or _mean_loss
    model.train()
    optimizer.zero_grad(set_to_none=True)

    if not weighting.needs_scores:
        return _fixed_step(model, optimizer, batches, weighting, loss_fn)
    if estimator == "first_order":
        if not isinstance(weighting, MapWeighting):
            raise ValueError("the first-order estimator needs greedy or conservative weighting")
        return _first_order_step(model, optimizer, batches, weighting, loss_fn)
    if estimator != "exact":
        raise ValueError(f"estimator must be 'exact' or 'first_order', got {estimator!r}")

    splits = [split_batch(batch, generator) for batch in batches]
    if any(split is None for split in splits):
        # A domain with fewer than 2 slices cannot be split: keep the previous λ.
        result = _fixed_step(model, optimizer, batches, weighting, loss_fn)
        result.skipped_inner_loop = True
        return result
    meta_train = [split[0] for split in splits if split is not None]
    meta_test = [split[1] for split in splits if split is not None]
    if has_batch_statistics(model):
        return _generic_exact_step(
            model, optimizer, batches, meta_train, meta_test, weighting, loss_fn
        )
    return _shared_forward_step(model, optimizer, meta_train, meta_test, weighting, loss_fn)


def _fixed_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    weighting: Weighting,
    loss_fn: LossFunction,
) -> StepResult:
    weights = weighting.weights()
    # One forward pass per domain: with 1 thread on a 2-core CPU, two passes over 4 slices of
    # 256×256 measured faster than one pass over 8 (docs/benchmarks.md), and it keeps BatchNorm
    # statistics per domain as in the other paths.
    losses = [loss_fn(model(images), labels) for images, labels in batches]
    total = sum(w * loss for w, loss in zip(weights, losses, strict=True))
    assert isinstance(total, torch.Tensor)
    total.backward()
    optimizer.step()
    return StepResult(losses=[float(loss.detach()) for loss in losses], weights=weights)


def _generic_exact_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    meta_train: Sequence[Batch],
    meta_test: Sequence[Batch],
    weighting: Weighting,
    loss_fn: LossFunction,
) -> StepResult:
    scores = inner_loop_scores(
        model, meta_train, meta_test, lr=_current_lr(optimizer), loss_fn=loss_fn
    )
    choice = _choose_and_observe(weighting, scores)
    result = _fixed_step(model, optimizer, batches, weighting, loss_fn)
    result.scores, result.choice = scores, choice
    return result


def _shared_forward_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta_train: Sequence[Batch],
    meta_test: Sequence[Batch],
    weighting: Weighting,
    loss_fn: LossFunction,
) -> StepResult:
    named = _named_trainable(model)
    params = list(named.values())

    # The meta-train gradients are both the hypothetical steps and part of the outer gradient.
    train_losses, train_grads = [], []
    for images, labels in meta_train:
        loss = loss_fn(model(images), labels)
        train_losses.append(loss.detach())
        train_grads.append(_grads_or_zeros(loss, params, retain_graph=False))

    scores = meta_test_scores(
        model, named, train_grads, meta_test, lr=_current_lr(optimizer), loss_fn=loss_fn
    )
    choice = _choose_and_observe(weighting, scores)
    weights = weighting.weights()

    # L_k(full batch) = (n_train L_k(train) + n_test L_k(test)) / n, since the loss is a mean
    # over slices; so the outer gradient needs a backward pass over the meta-test halves only.
    test_losses = []
    outer_test = torch.zeros((), device=params[0].device)
    train_shares = []
    for k, (train, test) in enumerate(zip(meta_train, meta_test, strict=True)):
        n_train, n_test = train[0].shape[0], test[0].shape[0]
        share = n_test / (n_train + n_test)
        loss = loss_fn(model(test[0]), test[1])
        test_losses.append(loss.detach())
        outer_test = outer_test + weights[k] * share * loss
        train_shares.append(weights[k] * (1.0 - share))
    test_grads = _grads_or_zeros(outer_test, params, retain_graph=False)
    outer = [
        test_grad + sum(s * grads[i] for s, grads in zip(train_shares, train_grads, strict=True))
        for i, test_grad in enumerate(test_grads)
    ]
    _apply_gradient(optimizer, params, outer)

    losses = []
    for train, test, train_loss, test_loss in zip(
        meta_train, meta_test, train_losses, test_losses, strict=True
    ):
        n_train, n_test = train[0].shape[0], test[0].shape[0]
        losses.append(float((n_train * train_loss + n_test * test_loss) / (n_train + n_test)))
    return StepResult(losses=losses, weights=weights, scores=scores, choice=choice)


def _first_order_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    weighting: MapWeighting,
    loss_fn: LossFunction,
) -> StepResult:
    params = list(_named_trainable(model).values())
    losses, gradients = [], []
    for images, labels in batches:
        loss = loss_fn(model(images), labels)
        losses.append(float(loss.detach()))
        gradients.append(_grads_or_zeros(loss, params, retain_graph=False))
    choice = first_order_choice(gradients, weighting.mode)
    weighting.observe_choice(choice)
    weights = weighting.weights()
    outer = [
        sum(w * grads[i] for w, grads in zip(weights, gradients, strict=True))
        for i in range(len(params))
    ]
    _apply_gradient(optimizer, params, outer)  # type: ignore[arg-type]
    return StepResult(losses=losses, weights=weights, choice=choice)


def estimator_agreement(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    mode: Mode,
    lr: float,
    generator: torch.Generator,
    loss_fn: LossFunction | None = None,
) -> tuple[int, int]:
    """Return the domains chosen by the exact inner loop and by the first-order estimate.

    Neither changes the model. Call it on many mini-batches and count how often the two agree.
    """
    loss_fn = loss_fn or _mean_loss
    splits = [split_batch(batch, generator) for batch in batches]
    if any(split is None for split in splits):
        raise ValueError("every domain needs at least 2 slices to compare the estimators")
    meta_train = [split[0] for split in splits if split is not None]
    meta_test = [split[1] for split in splits if split is not None]
    scores = inner_loop_scores(model, meta_train, meta_test, lr=lr, loss_fn=loss_fn)
    exact = MapWeighting(mode=mode, prior=[2.0] * len(batches)).choose(scores)

    params = _named_trainable(model)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    gradients = []
    for images, labels in batches:
        logits = functional_call(model, (params, buffers), (images,))
        gradients.append(
            _grads_or_zeros(loss_fn(logits, labels), list(params.values()), retain_graph=False)
        )
    return exact, first_order_choice(gradients, mode)
