"""The `wmhseg experiment` command: a cross-validated comparison of loss-weighting methods."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wmhseg import experiment, experiment_report
from wmhseg.cli.app import app, console, handle_errors


def _split_list(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """Accept repeated options and comma-separated values alike."""
    if not values:
        return list(default)
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@app.command("experiment")
@handle_errors
def experiment_command(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of labelled subjects: <subject>/{T1,FLAIR,wmh}.nii.gz (WhiteStripe-"
            "normalized, 0 outside the brain), as `wmhseg preprocess` writes them.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: runs/, runs.csv, summary.md, summary.csv, lambda.png. An "
            "existing folder of the same experiment is resumed.",
            show_default=False,
        ),
    ],
    folds: Annotated[int, typer.Option(help="Number of subject-level folds.")] = 5,
    repeats: Annotated[int, typer.Option(help="Training runs per fold, each seeded apart.")] = 5,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            help="Weighting method; repeat or separate with commas. F<a>-T<b> (fixed λ = a/100), "
            "fixed-<λ>, Simple-G, Simple-C, greedy-T<n>, conservative-T<n>. "
            f"Default: {', '.join(experiment.DEFAULT_METHODS)}.",
            show_default=False,
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Network: unet or lw; repeat or separate with commas. Default: unet, lw.",
            show_default=False,
        ),
    ] = None,
    flair: Annotated[
        list[str] | None,
        typer.Option(
            "--flair",
            help="FLAIR availability: 'all', or the number of training subjects that keep their "
            "FLAIR (the others train on T1 only); repeat for several setups. Default: all.",
            show_default=False,
        ),
    ] = None,
    max_epochs: Annotated[
        int, typer.Option(help="Maximum training epochs per run (early stopping may end sooner).")
    ] = 200,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(help="Training steps per epoch. Default: the training default.", min=1),
    ] = None,
    crop_size: Annotated[
        int | None,
        typer.Option(
            help="Side (pixels, 1 mm) of the square training crops. Default: the training default.",
            min=8,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Base seed; fold split and every run's seed derive from it.")
    ] = 0,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:N or auto.")] = "cpu",
    jobs: Annotated[
        int, typer.Option(help="Runs trained at the same time, each in its own process.")
    ] = 1,
    group_by: Annotated[
        str,
        typer.Option(
            help="What the table's mean ± s.d. is over: 'run' (every fold of every repeat) or "
            "'repeat' (each repeat's mean over folds).",
        ),
    ] = "run",
) -> None:
    """Train and test every method on subject-level folds and print the comparison table.

    The table lists DSC-F and DSC-T (mean ± s.d.) per setup and method,
    and GAIN-µ and GAIN-σ against F50-T50.
    An interrupted experiment resumes when run again with the same options.
    """
    if group_by not in ("run", "repeat"):
        raise typer.BadParameter("use 'run' or 'repeat'", param_hint="--group-by")
    grouping: experiment_report.GroupBy = "run" if group_by == "run" else "repeat"
    train_options: dict[str, object] = {}
    if steps_per_epoch is not None:
        train_options["steps_per_epoch"] = steps_per_epoch
    if crop_size is not None:
        train_options["crop_size"] = [crop_size, crop_size]
    subjects = experiment.find_subjects(data_dir)
    plan = experiment.make_plan(
        data_dir,
        subjects=subjects,
        n_folds=folds,
        repeats=repeats,
        methods=_split_list(methods, experiment.DEFAULT_METHODS),
        models=_split_list(models, experiment.DEFAULT_MODELS),
        flair_setups=_split_list(flair, ("all",)),
        seed=seed,
        max_epochs=max_epochs,
        device=device,
        train_options=train_options,
    )
    total = len(plan.cells())
    console.print(
        f"{len(subjects)} subjects, {len(plan.folds)} folds × {repeats} repeats × "
        f"{len(plan.methods)} methods × {len(plan.models)} models × "
        f"{len(plan.flair_setups)} FLAIR setups = {total} runs"
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=total)

        def report(record: experiment.RunRecord, done: int, _total: int) -> None:
            progress.update(task, completed=done)
            progress.console.print(
                f"{record.run_id}: DSC-F {record.dsc_flair:.3f}  DSC-T {record.dsc_t1:.3f}  "
                f"({record.seconds:.0f} s)",
                highlight=False,
            )

        records = experiment.run_experiment(plan, out, jobs=jobs, progress=report)
        progress.update(task, completed=total)

    outputs = experiment.write_report(
        records, out, method_order=[m.name for m in plan.methods], group_by=grouping
    )
    # Piped or redirected output has no terminal width; 120 columns keep each row on one line.
    table_console = Console()
    if not table_console.is_terminal:
        table_console = Console(width=120)
    table_console.print(
        experiment_report.to_rich_table(
            outputs.rows, title=f"Test Dice over {group_by}s (mean ± s.d.)"
        )
    )
    for path in outputs.paths:
        console.print(f"Wrote {path}", highlight=False)
