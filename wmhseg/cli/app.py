"""The Typer application, its global options and the error handling shared by all commands."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from wmhseg import __version__
from wmhseg.errors import WmhsegError

app = typer.Typer(
    name="wmhseg",
    help="Segment white matter hyperintensities in T1-weighted or FLAIR MRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help text: Rich's boxed help truncates long option names at 80 columns.
    rich_markup_mode=None,
)

# Messages, logs and progress bars go to stderr so that stdout stays clean for results.
console = Console(stderr=True)


class _State:
    debug = False


state = _State()

P = ParamSpec("P")
R = TypeVar("R")


def configure_logging(level: int) -> None:
    """Send wmhseg's log records and Python warnings to the terminal through Rich."""
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=True, markup=False)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("wmhseg").setLevel(level)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn :class:`WmhsegError` into one message and an exit code; tracebacks only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except WmhsegError as error:
            if state.debug:
                raise
            console.print(
                f"[bold red]Error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=error.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]Interrupted.[/bold red]")
            raise typer.Exit(code=130) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wmhseg {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log progress details (INFO level).")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Log everything and show Python tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Segment white matter hyperintensities in T1-weighted or FLAIR MRI."""
    state.debug = debug
    level = logging.WARNING
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    configure_logging(level)
