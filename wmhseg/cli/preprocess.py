"""The `wmhseg preprocess` command."""

from __future__ import annotations

from wmhseg.cli.app import app, handle_errors
from wmhseg.errors import WmhsegError


@app.command()
@handle_errors
def preprocess() -> None:
    """Not built yet."""
    raise WmhsegError("'preprocess' is not built yet.")
