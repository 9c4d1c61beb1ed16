"""The `wmhseg check` command: validate images and the output folder before a long run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wmhseg import validation
from wmhseg.cli.app import app, console, handle_errors
from wmhseg.errors import InputImageError, OutputError

# The table is the command's result, so it goes to stdout; messages go to stderr.
_stdout = Console(highlight=False)


def _format_sizes(check: validation.ImageCheck) -> str:
    if check.voxel_size_mm is None:
        return "-"
    return "×".join(f"{size:.3g}" for size in check.voxel_size_mm)


def _format_status(check: validation.ImageCheck) -> str:
    if not check.ok:
        return "[red]failed[/red]"
    if check.warnings:
        return "[yellow]warning[/yellow]"
    return "[green]ok[/green]"


def _display_path(path: Path) -> str:
    # Paths relative to the working folder keep the table narrow for cohort folders.
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _result_table(checks: list[validation.ImageCheck]) -> Table:
    table = Table(
        title="Input images",
        caption="orient: axis codes of the affine in use; s/q code: sform_code/qform_code",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("file", overflow="fold", min_width=10)
    table.add_column("status", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("voxel mm", no_wrap=True)
    table.add_column("orient", no_wrap=True)
    table.add_column("s/q code", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    for check in checks:
        codes = "-" if check.sform_code is None else f"{check.sform_code}/{check.qform_code}"
        table.add_row(
            escape(_display_path(check.path)),
            _format_status(check),
            "×".join(str(size) for size in check.shape) if check.shape else "-",
            _format_sizes(check),
            check.orientation or "-",
            codes,
            check.dtype or "-",
        )
    return table


@app.command()
@handle_errors
def check(
    images: Annotated[
        list[Path],
        typer.Argument(help="NIfTI images to validate.", show_default=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder to check for write access (not created here).",
        ),
    ] = None,
    use_qform: Annotated[
        bool,
        typer.Option(
            "--use-qform",
            help="Accept images whose sform is sheared when their qform is valid, as the "
            "other commands do with this flag.",
        ),
    ] = False,
) -> None:
    """Validate images (and an output folder) exactly as the other commands will read them.

    Run it over a cohort before a long run. The exit code is 2 if an image fails and 3 if the
    output folder is not writable.
    """
    checks = validation.check_images(images, allow_qform=use_qform)
    _stdout.print(_result_table(checks))

    for result in checks:
        for warning in result.warnings:
            console.print(
                f"[yellow]Warning:[/yellow] {escape(f'{result.path}: {warning}')}", soft_wrap=True
            )
        if result.error is not None:
            console.print(
                f"[red]Failed:[/red] {escape(f'{result.path}: {result.error}')}", soft_wrap=True
            )

    output = validation.check_output(out) if out is not None else None
    if output is not None and output.ok:
        state = "does not exist yet and can be created" if output.will_be_created else "is writable"
        console.print(f"Output folder {escape(str(output.path))} {state}.", highlight=False)
    elif output is not None:
        console.print(f"[red]Failed:[/red] {escape(str(output.error))}", soft_wrap=True)

    failed = sum(not result.ok for result in checks)
    console.print(f"{len(checks) - failed} of {len(checks)} image(s) passed.", highlight=False)
    if failed:
        raise typer.Exit(code=InputImageError.exit_code)
    if output is not None and not output.ok:
        raise typer.Exit(code=OutputError.exit_code)
