"""The `wmhseg preprocess` command."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wmhseg import io
from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import InputImageError, PreprocessingError


class SkullstripMethod(StrEnum):
    """Skull-stripping methods that ``--skullstrip-method`` accepts."""

    DEEPBET = "deepbet"


@app.command()
@handle_errors
def preprocess(
    input_dir: Annotated[
        Path | None,
        typer.Argument(help="Folder of subjects (BIDS or <subject>/T1.nii.gz, FLAIR.nii.gz)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; one subfolder per subject.")
    ] = Path("preprocessed"),
    t1: Annotated[
        Path | None, typer.Option("--t1", help="T1-weighted image of one subject.")
    ] = None,
    flair: Annotated[
        Path | None, typer.Option("--flair", help="FLAIR image of one subject.")
    ] = None,
    wmh: Annotated[
        Path | None, typer.Option("--wmh", help="WMH label (0/1/2) of one subject.")
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="Subject name for --t1/--flair.")
    ] = None,
    skip: Annotated[
        str,
        typer.Option(
            "--skip",
            help="Comma-separated stages the input already had "
            "(register, n4, skullstrip, whitestripe).",
        ),
    ] = "",
    skullstrip_method: Annotated[
        SkullstripMethod,
        typer.Option("--skullstrip-method", help="Skull-stripping method."),
    ] = SkullstripMethod.DEEPBET,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Subjects processed in parallel.")
    ] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.")
    ] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not reuse cached stage results.")
    ] = False,
    use_qform: Annotated[
        bool,
        typer.Option("--use-qform", help="Use the qform of images whose sform is sheared."),
    ] = False,
) -> None:
    """Register, bias-correct, skull-strip and WhiteStripe-normalize raw T1 and/or FLAIR scans."""
    from wmhseg.preprocess.discovery import find_subjects
    from wmhseg.preprocess.parallel import Outcome, run_subjects
    from wmhseg.preprocess.pipeline import SubjectInputs, check_skip

    stages = check_skip({name.strip() for name in skip.split(",") if name.strip()})
    if input_dir is not None and (t1 or flair or wmh):
        raise PreprocessingError("give either an input folder or --t1/--flair, not both.")
    if input_dir is not None:
        subjects = find_subjects(input_dir)
    elif t1 or flair:
        source = flair or t1
        assert source is not None
        name = subject or io.strip_nifti_suffix(source)
        subjects = [SubjectInputs(name, t1=t1, flair=flair, wmh=wmh)]
    else:
        raise InputImageError(None, "no input: give an input folder, or --t1 and/or --flair.")
    io.prepare_output_dir(out)

    options: dict[str, object] = {
        "skip": stages,
        "skullstrip_method": skullstrip_method.value,
        "overwrite": overwrite,
        "use_cache": not no_cache,
        "allow_qform": use_qform,
        "command": shlex.join(["wmhseg", *sys.argv[1:]]),
    }
    progress = Progress(
        TextColumn("[bold]preprocess"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    )
    with progress:
        task = progress.add_task("", total=len(subjects))

        def done(outcome: Outcome) -> None:
            if outcome.error:
                state = "failed"
            elif outcome.up_to_date:
                state = "up to date"
            else:
                state = "done"
            progress.update(task, advance=1, description=f"{outcome.subject} {state}")

        outcomes = run_subjects(subjects, out, jobs=jobs, options=options, on_done=done)

    failures = [outcome for outcome in outcomes if outcome.error]
    unchanged = sum(1 for outcome in outcomes if outcome.up_to_date)
    summary = f"Preprocessed {len(outcomes) - len(failures)} of {len(outcomes)} subjects into {out}"
    if unchanged:
        summary += f" ({unchanged} already up to date, not recomputed)"
    console.print(summary)
    if failures:
        table = Table(title="Failed subjects")
        table.add_column("subject", overflow="fold")
        table.add_column("reason", overflow="fold")
        for outcome in failures:
            table.add_row(outcome.subject, outcome.error or "")
        console.print(table)
        raise typer.Exit(code=1)
