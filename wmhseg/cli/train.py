"""The `wmhseg train` command."""

from __future__ import annotations

from wmhseg.cli.app import app, handle_errors
from wmhseg.errors import WmhsegError


@app.command()
@handle_errors
def train() -> None:
    """Not built yet."""
    raise WmhsegError("'train' is not built yet.")
