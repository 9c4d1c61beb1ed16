"""The `wmhseg preprocess` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wmhseg import io
from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import InputImageError, PreprocessingError


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
        str, typer.Option("--skullstrip-method", help="Skull-stripping method.")
    ] = "deepbet",
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
        "skullstrip_method": skullstrip_method,
        "overwrite": overwrite,
        "use_cache": not no_cache,
        "allow_qform": use_qform,
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
            state = "failed" if outcome.error else "done"
            progress.update(task, advance=1, description=f"{outcome.subject} {state}")

        outcomes = run_subjects(subjects, out, jobs=jobs, options=options, on_done=done)

    failures = [outcome for outcome in outcomes if outcome.error]
    console.print(
        f"Preprocessed {len(outcomes) - len(failures)} of {len(outcomes)} subjects into {out}"
    )
    if failures:
        table = Table(title="Failed subjects")
        table.add_column("subject")
        table.add_column("reason")
        for outcome in failures:
            table.add_row(outcome.subject, outcome.error or "")
        console.print(table)
        raise typer.Exit(code=1)
