"""The `wmhseg evaluate` command."""

from __future__ import annotations

from wmhseg.cli.app import app, handle_errors
from wmhseg.errors import WmhsegError


@app.command()
@handle_errors
def evaluate() -> None:
    """Not built yet."""
    raise WmhsegError("'evaluate' is not built yet.")
