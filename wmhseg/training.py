"""The training loop: one network for all domains, loss weights from :mod:`wmhseg.weighting`.

Use it from Python::

    from wmhseg.training import TrainConfig, train
    result = train(TrainConfig(data_dir="prep", out_dir="runs/cons100", mode="conservative"))
    print(result.best_validation_dice)

The run folder (``out_dir``) receives ``config.json``, ``command.txt``, ``last.pt`` (written
after every epoch, for resuming), ``best.pt`` (best mean validation loss over domains),
``metrics.csv`` (one row per epoch), ``lambda.csv`` (one row per step) and ``lambda.png``.

Optimization follows the reference setup: SGD (lr 0.01, momentum 0.9), learning rate × 0.1
after ``lr_patience`` epochs without improvement, stop after ``stop_patience`` epochs without
improvement or at ``max_epochs``. An "epoch" is ``steps_per_epoch`` steps, so that validation
runs at a fixed rate whatever the data size. Without validation subjects the mean training
loss of the epoch takes the place of the validation loss.
"""

from __future__ import annotations

import csv
import io as bytes_io
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from wmhseg import __version__, checkpoint, data
from wmhseg.augment import AugmentationRange
from wmhseg.device import resolve_device
from wmhseg.errors import OutputError, TrainingError
from wmhseg.io import prepare_output_dir, write_bytes_atomic
from wmhseg.losses import IGNORE_LABEL, per_slice_loss
from wmhseg.models import build_model, count_parameters, size_divisor
from wmhseg.slicing import IN_PLANE_SPACING_MM
from wmhseg.weighting import (
    FixedWeighting,
    MapWeighting,
    SimpleWeighting,
    Weighting,
    check_prior,
    weighted_step,
)

logger = logging.getLogger(__name__)

WeightingMode = Literal["greedy", "conservative", "fixed", "simple"]

CONFIG_NAME = "config.json"
COMMAND_NAME = "command.txt"
METRICS_NAME = "metrics.csv"
LAMBDA_NAME = "lambda.csv"
LAMBDA_PLOT_NAME = "lambda.png"
VALIDATION_CHUNK = 16


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder."""

    data_dir: Path
    out_dir: Path
    # Loss weighting: "greedy"/"conservative" (MAP over a window), "fixed", "simple".
    mode: WeightingMode = "conservative"
    window: int = 100
    # Beta (two domains) or Dirichlet prior, one α per domain, each > 1.
    prior: tuple[float, ...] = (5.0, 5.0)
    # Fixed weight of the first domain (FLAIR) for mode "fixed"; the rest share 1 − λ equally.
    fixed_lambda: float = 0.5
    # Step of the Simple heuristic: −0.1 is Simple-G, +0.1 is Simple-C.
    gamma: float = -0.1
    estimator: Literal["exact", "first_order"] = "exact"
    model: Literal["unet", "lw"] = "unet"
    # Network width (channels of the first level / of every LW layer); None: model default.
    width: int | None = 16
    depth: int = 4
    batch_size: int = 8
    crop_size: tuple[int, int] = (128, 128)
    lesion_fraction: float = 0.5
    labelled_only: bool = False
    augment: bool = True
    lr: float = 0.01
    momentum: float = 0.9
    lr_patience: int = 20
    lr_factor: float = 0.1
    stop_patience: int = 50
    max_epochs: int = 30
    steps_per_epoch: int = 50
    # Stop after the first epoch that ends past this many minutes of training (None: no limit).
    time_limit_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    # Training subjects that keep their FLAIR: a count (random subjects) or names; None: all.
    flair_subjects: int | tuple[str, ...] | None = None
    # Explicit subject lists; None: every subject folder, split by validation_fraction.
    train_subjects: tuple[str, ...] | None = None
    validation_subjects: tuple[str, ...] | None = None
    validation_fraction: float = 0.2
    domains: tuple[str, ...] = data.DOMAINS
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    # The command line that started the run (recorded in the run folder and checkpoints).
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON-compatible values."""
        values = asdict(self)
        values["data_dir"] = str(self.data_dir)
        values["out_dir"] = str(self.out_dir)
        return values


@dataclass
class TrainProgress:
    """Passed to the ``progress`` callback after every step (``kind="step"``) and epoch."""

    kind: Literal["step", "epoch"]
    epoch: int
    step: int
    total_steps: int
    loss: float
    weights: tuple[float, ...]
    validation_dice: dict[str, float] = field(default_factory=dict)
    validation_loss: float | None = None
    lr: float = 0.0


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    epochs_run: int
    stop_reason: str
    best_score: float
    best_validation_dice: dict[str, float]
    final_weights: tuple[float, ...]
    device: str
    history: list[dict[str, Any]]
    seconds: float


def make_weighting(config: TrainConfig) -> Weighting:
    """Build the weighting rule that ``config`` selects."""
    count = len(config.domains)
    try:
        if config.mode == "fixed":
            if not 0.0 <= config.fixed_lambda <= 1.0:
                raise ValueError(f"fixed λ must be in [0, 1], got {config.fixed_lambda}")
            rest = (1.0 - config.fixed_lambda) / (count - 1)
            return FixedWeighting([config.fixed_lambda] + [rest] * (count - 1))
        if config.mode == "simple":
            if count != 2:
                raise ValueError("the Simple heuristic is defined for two domains only")
            return SimpleWeighting(gamma=config.gamma)
        if config.mode in ("greedy", "conservative"):
            prior = tuple(config.prior)
            if len(prior) != count:
                raise ValueError(f"prior has {len(prior)} values for {count} domains")
            check_prior(prior)
            return MapWeighting(mode=config.mode, window=config.window, prior=prior)
    except ValueError as error:
        raise TrainingError(f"invalid weighting options: {error}") from error
    raise TrainingError(f"unknown mode {config.mode!r}; use greedy, conservative, fixed or simple.")


def _model_kwargs(config: TrainConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if config.width is not None:
        kwargs["width"] = config.width
    if config.model == "unet":
        kwargs["depth"] = config.depth
    return kwargs


def _check_config(config: TrainConfig) -> None:
    per_domain = config.batch_size // len(config.domains)
    if per_domain < 1:
        raise TrainingError(
            f"batch size {config.batch_size} is smaller than the number of domains "
            f"({len(config.domains)}); every mini-batch needs slices of every domain."
        )
    needs_split = config.mode in ("greedy", "conservative", "simple")
    if needs_split and config.estimator == "exact" and per_domain < 2:
        raise TrainingError(
            f"batch size {config.batch_size} gives {per_domain} slice per domain; the "
            "inner loop splits each domain's slices in two, so use at least "
            f"{2 * len(config.domains)}."
        )
    if config.mode == "simple" and config.estimator != "exact":
        raise TrainingError("the Simple heuristic needs --estimator exact.")
    if config.max_epochs < 1 or config.steps_per_epoch < 1:
        raise TrainingError("max epochs and steps per epoch must be at least 1.")
    if config.lr <= 0 or not math.isfinite(config.lr):
        raise TrainingError(f"learning rate must be positive, got {config.lr}")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class _Data:
    train: list[data.SubjectVolumes]
    validation: list[data.SubjectVolumes]
    flair_kept: list[str]
    dataset: data.SliceDataset


def _load_data(config: TrainConfig) -> _Data:
    files = data.find_subjects(config.data_dir, domains=config.domains)
    names = [f.name for f in files]
    if config.train_subjects is not None:
        unknown = sorted(set(config.train_subjects) - set(names))
        if unknown:
            raise TrainingError(f"training subjects not found in the data folder: {unknown}")
        validation = list(config.validation_subjects or ())
        training = [n for n in names if n in set(config.train_subjects)]
        if set(training) & set(validation):
            raise TrainingError("a subject is in both the training and the validation set.")
    else:
        training, validation = data.split_subjects(
            names,
            validation_subjects=config.validation_subjects,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
        )
    by_name = {f.name: f for f in files}
    train_volumes = [data.load_subject(by_name[n]) for n in training]
    validation_volumes = [data.load_subject(by_name[n]) for n in validation]

    if isinstance(config.flair_subjects, int) or config.flair_subjects is None:
        kept = data.keep_flair_subjects(train_volumes, config.flair_subjects, seed=config.seed)
    else:
        wanted = set(config.flair_subjects)
        kept = []
        for subject in train_volumes:
            if subject.name in wanted and "FLAIR" in subject.images:
                kept.append(subject.name)
            else:
                subject.images.pop("FLAIR", None)

    options = data.SamplingOptions(
        crop_size=config.crop_size,
        lesion_fraction=config.lesion_fraction,
        labelled_only=config.labelled_only,
        augment=config.augment,
        augmentation=AugmentationRange(),
    )
    dataset = data.SliceDataset(train_volumes, domains=config.domains, options=options)
    logger.info(
        "training subjects %s, validation subjects %s, FLAIR kept for %s",
        training,
        validation,
        kept,
    )
    return _Data(train_volumes, validation_volumes, kept, dataset)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def evaluate(
    model: torch.nn.Module,
    subjects: Sequence[data.SubjectVolumes],
    *,
    domains: Sequence[str],
    device: torch.device,
    labelled_only: bool = False,
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Return the validation loss (mean over slices) and pooled Dice per domain.

    Dice counts voxels over all of a domain's validation slices, label 2 excluded, with the
    prediction ``sigmoid(logit) > threshold``. It is 1.0 when truth and prediction are empty.
    Domains without validation slices are left out.
    """
    model.eval()
    results: dict[str, dict[str, float]] = {}
    divisor = size_divisor(model)
    logit_threshold = math.log(threshold / (1.0 - threshold))
    with torch.no_grad():
        for domain in domains:
            losses: list[torch.Tensor] = []
            tp = fp = fn = 0
            for subject in subjects:
                if domain not in subject.images:
                    continue
                images, labels = data.validation_slices(
                    subject, domain, size_divisor=divisor, labelled_only=labelled_only
                )
                for start in range(0, images.shape[0], VALIDATION_CHUNK):
                    x = images[start : start + VALIDATION_CHUNK].to(device)
                    y = labels[start : start + VALIDATION_CHUNK].to(device)
                    logits = model(x)
                    losses.append(per_slice_loss(logits, y).cpu())
                    valid = y != IGNORE_LABEL
                    predicted = (logits > logit_threshold) & valid
                    truth = (y == 1) & valid
                    tp += int((predicted & truth).sum())
                    fp += int((predicted & ~truth).sum())
                    fn += int((~predicted & truth).sum())
            if not losses:
                continue
            total = 2 * tp + fp + fn
            results[domain] = {
                "loss": float(torch.cat(losses).mean()),
                "dice": 1.0 if total == 0 else 2.0 * tp / total,
            }
    model.train()
    return results


# --------------------------------------------------------------------------------------------
# Run folder records
# --------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = bytes_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _lambda_header(domains: Sequence[str]) -> list[str]:
    return (
        ["step", "epoch"]
        + [f"lambda_{d}" for d in domains]
        + ["choice"]
        + [f"H_{d}" for d in domains]
        + [f"loss_{d}" for d in domains]
    )


def _metrics_header(domains: Sequence[str]) -> list[str]:
    columns = ["epoch", "lr", "seconds"]
    columns += [f"train_loss_{d}" for d in domains]
    columns += [f"val_loss_{d}" for d in domains]
    columns += [f"val_dice_{d}" for d in domains]
    columns += ["score", "best"]
    return columns


def plot_lambda(history: Sequence[Sequence[Any]], domains: Sequence[str], path: Path) -> None:
    """Write a PNG of λ per domain over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row[0] for row in history]
    figure, axis = plt.subplots(figsize=(7, 3.2), dpi=100)
    for k, domain in enumerate(domains):
        axis.plot(steps, [row[2 + k] for row in history], label=f"λ {domain}", linewidth=1.2)
    axis.set_xlabel("training step")
    axis.set_ylabel("loss weight λ")
    axis.set_ylim(0.0, 1.0)
    axis.axhline(1.0 / len(domains), color="grey", linewidth=0.6, linestyle=":")
    axis.legend(loc="upper right")
    axis.set_title(path.parent.name)
    figure.tight_layout()
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def _prepare_run_dir(config: TrainConfig) -> Path:
    run_dir = prepare_output_dir(config.out_dir)
    last = run_dir / checkpoint.LAST_CHECKPOINT
    if last.exists() and not (config.resume or config.overwrite):
        raise OutputError(
            f"{run_dir}: the run folder has a checkpoint already; pass --resume to continue "
            "that run or --overwrite to start a new one in its place."
        )
    if config.overwrite and not config.resume:
        for name in (checkpoint.BEST_CHECKPOINT, checkpoint.LAST_CHECKPOINT):
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class _RunState:
    """The mutable state of a run; everything in it goes into ``last.pt``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    weighting: Weighting
    lambda_history: list[list[Any]] = field(default_factory=list)
    metrics_history: list[list[Any]] = field(default_factory=list)
    best_score: float = math.inf
    best_epoch: int = -1
    best_dice: dict[str, float] = field(default_factory=dict)
    without_improvement: int = 0
    start_epoch: int = 0

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def restore(self, path: Path) -> None:
        """Load the state of ``last.pt``, including the generator states."""
        state = checkpoint.read_checkpoint(path)
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scheduler.load_state_dict(state["scheduler_state"])
        self.weighting.load_state_dict(state["weighting_state"])
        self.lambda_history = [list(row) for row in state["lambda_history"]]
        self.metrics_history = [list(row) for row in state["metrics_history"]]
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["training"].get("best_epoch", -1))
        self.best_dice = dict(state["training"].get("best_validation_dice", {}))
        self.without_improvement = int(state["epochs_without_improvement"])
        self.start_epoch = int(state["epoch"]) + 1
        checkpoint.restore_rng_states(state["rng_states"])


def _new_run_state(config: TrainConfig, device: torch.device) -> _RunState:
    torch.manual_seed(config.seed)
    model = build_model(config.model, **_model_kwargs(config)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    return _RunState(model, optimizer, scheduler, make_weighting(config))


def _run_epoch(
    run: _RunState,
    config: TrainConfig,
    dataset: data.SliceDataset,
    epoch: int,
    *,
    device: torch.device,
    progress: Callable[[TrainProgress], None] | None,
) -> npt.NDArray[np.float64]:
    """Run one epoch of training steps; return the mean loss per domain."""
    domains = config.domains
    per_domain = config.batch_size // len(domains)
    total_steps = config.max_epochs * config.steps_per_epoch
    epoch_losses = np.zeros(len(domains))
    run.model.train()
    for index in range(config.steps_per_epoch):
        step = epoch * config.steps_per_epoch + index
        batches = dataset.sample_batch((config.seed, step), per_domain)
        batches = [(x.to(device), y.to(device)) for x, y in batches]
        generator = torch.Generator().manual_seed(_step_seed(config.seed, step))
        result = weighted_step(
            run.model,
            run.optimizer,
            batches,
            run.weighting,
            generator=generator,
            estimator=config.estimator,
        )
        if not all(math.isfinite(v) for v in result.losses):
            raise TrainingError(
                f"training diverged at step {step} (loss {result.losses}); lower the "
                "learning rate with --lr or check the input normalization."
            )
        epoch_losses += np.asarray(result.losses)
        scores = result.scores or [math.nan] * len(domains)
        run.lambda_history.append(
            [
                step,
                epoch,
                *result.weights,
                -1 if result.choice is None else result.choice,
                *scores,
                *result.losses,
            ]
        )
        if progress is not None:
            progress(
                TrainProgress(
                    kind="step",
                    epoch=epoch,
                    step=step + 1,
                    total_steps=total_steps,
                    loss=float(np.dot(result.weights, result.losses)),
                    weights=result.weights,
                    lr=run.lr(),
                )
            )
    return epoch_losses / config.steps_per_epoch


def _checkpoint_payload(
    run: _RunState,
    config: TrainConfig,
    epoch: int,
    *,
    training: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "model_name": config.model,
        "model_kwargs": _model_kwargs(config),
        "model_state": run.model.state_dict(),
        "size_divisor": size_divisor(run.model),
        "threshold": 0.5,
        "in_plane_spacing_mm": IN_PLANE_SPACING_MM,
        "domains": list(config.domains),
        "wmhseg_version": __version__,
        "epoch": epoch,
        "global_step": (epoch + 1) * config.steps_per_epoch,
        "training": training,
        "optimizer_state": run.optimizer.state_dict(),
        "scheduler_state": run.scheduler.state_dict(),
        "weighting_state": run.weighting.state_dict(),
        "lambda_history": run.lambda_history,
        "metrics_history": run.metrics_history,
        "best_score": run.best_score,
        "epochs_without_improvement": run.without_improvement,
        "rng_states": checkpoint.capture_rng_states(),
    }


def train(
    config: TrainConfig, *, progress: Callable[[TrainProgress], None] | None = None
) -> TrainResult:
    """Train a network with the options in ``config`` and return the run's outcome.

    With ``config.resume`` the run continues from ``out_dir/last.pt`` and reproduces the
    uninterrupted run's weights and learning rate: batches and splits are drawn from
    generators seeded by ``(seed, step)``, and the checkpoint contains the model, optimizer,
    scheduler, λ history and generator states. ``config.time_limit_minutes`` counts from the
    start of this call, not of the original run.

    Raises:
        TrainingError: on unusable data or options.
        OutputError: when the run folder cannot be written or contains a run already.
    """
    started = time.perf_counter()
    _check_config(config)
    make_weighting(config)  # rejects invalid weighting options before any file is written
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    run_dir = _prepare_run_dir(config)
    last_path = run_dir / checkpoint.LAST_CHECKPOINT
    best_path = run_dir / checkpoint.BEST_CHECKPOINT
    logger.info("training on device %s", device)

    loaded = _load_data(config)
    domains = list(config.domains)
    run = _new_run_state(config, device)
    if config.resume and last_path.exists():
        run.restore(last_path)
        logger.info("resumed %s after epoch %d", last_path, run.start_epoch - 1)
    elif config.resume:
        logger.info("no checkpoint in %s; starting a new run", run_dir)

    _write_text(run_dir / CONFIG_NAME, json.dumps(config.to_json(), indent=2) + "\n")
    command = config.command or shlex.join(sys.argv)
    if not (run_dir / COMMAND_NAME).exists() or not config.resume:
        _write_text(run_dir / COMMAND_NAME, command + "\n")

    data_record = {
        "data_dir": str(config.data_dir),
        "train_subjects": [s.name for s in loaded.train],
        "validation_subjects": [s.name for s in loaded.validation],
        "flair_subjects": loaded.flair_kept,
        "training_slices": {d: len(loaded.dataset.slices[d]) for d in domains},
    }
    logger.info(
        "%s with %d parameters, %d steps per epoch, batch %d",
        config.model,
        count_parameters(run.model),
        config.steps_per_epoch,
        config.batch_size,
    )

    stop_reason = "max_epochs"
    epoch = run.start_epoch - 1
    if run.start_epoch > 0 and run.without_improvement >= config.stop_patience:
        stop_reason = "early_stop"
    else:
        for epoch in range(run.start_epoch, config.max_epochs):
            epoch_started = time.perf_counter()
            train_losses = _run_epoch(
                run, config, loaded.dataset, epoch, device=device, progress=progress
            )
            validation = evaluate(
                run.model,
                loaded.validation,
                domains=domains,
                device=device,
                labelled_only=config.labelled_only,
            )
            validation_dice = {d: v["dice"] for d, v in validation.items()}
            if validation:
                score = float(np.mean([v["loss"] for v in validation.values()]))
            else:
                score = float(np.mean(train_losses))
            lr_used = run.lr()
            run.scheduler.step(score)
            improved = score < run.best_score
            if improved:
                run.best_score, run.best_epoch, run.best_dice = score, epoch, validation_dice
                run.without_improvement = 0
            else:
                run.without_improvement += 1
            run.metrics_history.append(
                [epoch, lr_used, round(time.perf_counter() - epoch_started, 2)]
                + [float(v) for v in train_losses]
                + [validation.get(d, {}).get("loss", math.nan) for d in domains]
                + [validation.get(d, {}).get("dice", math.nan) for d in domains]
                + [score, int(improved)]
            )

            training = {
                "command": command,
                "config": config.to_json(),
                "data": data_record,
                "validation_dice": validation_dice,
                "best_epoch": run.best_epoch,
                "best_validation_dice": run.best_dice,
                "device": str(device),
            }
            payload = _checkpoint_payload(run, config, epoch, training=training)
            if improved:
                best = {k: v for k, v in payload.items() if k not in checkpoint.RESUME_KEYS}
                checkpoint.save_checkpoint(best, best_path)
            # last.pt is written after best.pt, so a resumed run never lacks its best model.
            checkpoint.save_checkpoint(payload, last_path)
            _write_records(run_dir, domains, run.lambda_history, run.metrics_history)

            if progress is not None:
                progress(
                    TrainProgress(
                        kind="epoch",
                        epoch=epoch,
                        step=(epoch + 1) * config.steps_per_epoch,
                        total_steps=config.max_epochs * config.steps_per_epoch,
                        loss=float(np.mean(train_losses)),
                        weights=run.weighting.weights(),
                        validation_dice=validation_dice,
                        validation_loss=score,
                        lr=run.lr(),
                    )
                )
            if run.without_improvement >= config.stop_patience:
                stop_reason = "early_stop"
                break
            elapsed_minutes = (time.perf_counter() - started) / 60.0
            limit = config.time_limit_minutes
            if limit is not None and elapsed_minutes > limit:
                stop_reason = "time_limit"
                break

    history = [dict(zip(_metrics_header(domains), row, strict=True)) for row in run.metrics_history]
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_epoch=run.best_epoch,
        epochs_run=epoch + 1,
        stop_reason=stop_reason,
        best_score=run.best_score,
        best_validation_dice=run.best_dice,
        final_weights=run.weighting.weights(),
        device=str(device),
        history=history,
        seconds=time.perf_counter() - started,
    )


def _write_records(
    run_dir: Path,
    domains: Sequence[str],
    lambda_history: Sequence[Sequence[Any]],
    metrics_history: Sequence[Sequence[Any]],
) -> None:
    _write_text(run_dir / METRICS_NAME, _csv_text(_metrics_header(domains), metrics_history))
    _write_text(run_dir / LAMBDA_NAME, _csv_text(_lambda_header(domains), lambda_history))
    plot_lambda(lambda_history, domains, run_dir / LAMBDA_PLOT_NAME)
