"""The `wmhseg train` command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import TrainingError
from wmhseg.training import TrainConfig, TrainProgress
from wmhseg.training import train as run_training


def _parse_subjects(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return names or None


@app.command()
@handle_errors
def train(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of subject folders with FLAIR.nii.gz and/or T1.nii.gz (WhiteStripe-"
            "normalized, as 'wmhseg preprocess' writes them) and wmh.nii.gz.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created if missing).")],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="Loss weighting: greedy or conservative (meta-learned λ), fixed, simple.",
        ),
    ] = "conservative",
    window: Annotated[
        int, typer.Option("--window", min=1, help="Window T: observations in the λ estimate.")
    ] = 100,
    prior: Annotated[
        tuple[float, float],
        typer.Option("--prior", help="Beta prior α β of λ (FLAIR, T1); both must exceed 1."),
    ] = (5.0, 5.0),
    fixed_lambda: Annotated[
        float,
        typer.Option("--lambda", min=0.0, max=1.0, help="FLAIR loss weight for --mode fixed."),
    ] = 0.5,
    gamma: Annotated[
        float,
        typer.Option("--gamma", help="Step of --mode simple: -0.1 Simple-G, 0.1 Simple-C."),
    ] = -0.1,
    estimator: Annotated[
        str,
        typer.Option(
            "--estimator",
            help="exact (inner loop) or first-order (gradient norms, about a plain step's cost).",
        ),
    ] = "exact",
    model: Annotated[str, typer.Option("--model", help="Network: unet or lw.")] = "unet",
    width: Annotated[
        int,
        typer.Option("--width", min=1, help="Channels of the first U-Net level or of LW layers."),
    ] = 16,
    depth: Annotated[int, typer.Option("--depth", min=1, help="U-Net pooling levels.")] = 4,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=2, help="Slices per step, split among domains.")
    ] = 8,
    crop: Annotated[
        tuple[int, int],
        typer.Option("--crop", help="Training patch height and width in voxels (1 mm)."),
    ] = (128, 128),
    lesion_fraction: Annotated[
        float,
        typer.Option(
            "--lesion-fraction", min=0.0, max=1.0, help="Share of patches centred on WMH."
        ),
    ] = 0.5,
    labelled_only: Annotated[
        bool, typer.Option("--labelled-only", help="Use only slices that contain WMH.")
    ] = False,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Random rotation, shear, scaling.")
    ] = True,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.01,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    lr_patience: Annotated[
        int, typer.Option("--lr-patience", help="Epochs without improvement before lr × 0.1.")
    ] = 20,
    stop_patience: Annotated[
        int, typer.Option("--stop-patience", help="Epochs without improvement before stopping.")
    ] = 50,
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1, help="Epoch limit.")] = 30,
    steps_per_epoch: Annotated[
        int, typer.Option("--steps-per-epoch", min=1, help="Training steps between validations.")
    ] = 50,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit", min=0.0, help="Stop after the epoch that ends past this many minutes."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    device: Annotated[
        str, typer.Option("--device", help="auto (GPU if available), cpu or cuda.")
    ] = "auto",
    flair_subjects: Annotated[
        int | None,
        typer.Option(
            "--flair-subjects",
            min=0,
            help="Keep FLAIR of only this many random training subjects (T1 stays).",
        ),
    ] = None,
    validation_subjects: Annotated[
        str | None,
        typer.Option("--validation-subjects", help="Comma-separated validation subject names."),
    ] = None,
    validation_fraction: Annotated[
        float,
        typer.Option(
            "--validation-fraction",
            min=0.0,
            max=0.95,
            help="Share of subjects held out for validation when none are named (0: none).",
        ),
    ] = 0.2,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for PyTorch.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start a new run in a run folder that has one.")
    ] = False,
) -> None:
    """Train one segmentation network on T1 and FLAIR slices with meta-learned loss weights."""
    if mode not in ("greedy", "conservative", "fixed", "simple"):
        raise TrainingError(f"--mode {mode!r}: use greedy, conservative, fixed or simple.")
    if model not in ("unet", "lw"):
        raise TrainingError(f"--model {model!r}: use unet or lw.")
    estimator_name = estimator.replace("-", "_")
    if estimator_name not in ("exact", "first_order"):
        raise TrainingError(f"--estimator {estimator!r}: use exact or first-order.")
    config = TrainConfig(
        data_dir=data_dir,
        out_dir=out,
        mode=mode,  # type: ignore[arg-type]
        window=window,
        prior=tuple(prior),
        fixed_lambda=fixed_lambda,
        gamma=gamma,
        estimator=estimator_name,  # type: ignore[arg-type]
        model=model,  # type: ignore[arg-type]
        width=width,
        depth=depth,
        batch_size=batch_size,
        crop_size=(crop[0], crop[1]),
        lesion_fraction=lesion_fraction,
        labelled_only=labelled_only,
        augment=augment,
        lr=lr,
        momentum=momentum,
        lr_patience=lr_patience,
        stop_patience=stop_patience,
        max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        time_limit_minutes=time_limit,
        seed=seed,
        device=device,
        flair_subjects=flair_subjects,
        validation_subjects=_parse_subjects(validation_subjects),
        validation_fraction=validation_fraction,
        threads=threads,
        resume=resume,
        overwrite=overwrite,
        command=shlex.join(["wmhseg", *sys.argv[1:]]),
    )

    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=max_epochs * steps_per_epoch, status="")

        def report(event: TrainProgress) -> None:
            weights = "/".join(f"{w:.2f}" for w in event.weights)
            if event.kind == "step":
                bar.update(task, completed=event.step, status=f"loss {event.loss:.3f} λ {weights}")
                return
            dice = " ".join(f"{d} {v:.3f}" for d, v in event.validation_dice.items())
            bar.console.print(
                f"epoch {event.epoch + 1}: loss {event.loss:.3f}, λ {weights}, "
                f"lr {event.lr:g}" + (f", validation Dice {dice}" if dice else "")
            )

        try:
            result = run_training(config, progress=report)
        except KeyboardInterrupt:
            console.print(
                f"[yellow]Interrupted. The last finished epoch is saved in {out}; continue with "
                "the same command and --resume.[/yellow]"
            )
            raise typer.Exit(130) from None

    console.print(f"Trained on device {result.device}; stopped: {result.stop_reason}.")
    dice = ", ".join(f"{d} {v:.3f}" for d, v in result.best_validation_dice.items())
    console.print(
        f"Best epoch {result.best_epoch + 1} (score {result.best_score:.4f})"
        + (f", validation Dice {dice}" if dice else "")
        + f". Run folder: {result.run_dir}"
    )
