"""The `wmhseg predict` command."""

from __future__ import annotations

from wmhseg.cli.app import app, handle_errors
from wmhseg.errors import WmhsegError


@app.command()
@handle_errors
def predict() -> None:
    """Not built yet."""
    raise WmhsegError("'predict' is not built yet.")
