"""Command-line interface: thin commands over the library functions."""

from wmhseg.cli import (  # noqa: F401  (register commands)
    check,
    evaluate,
    experiment,
    predict,
    preprocess,
    train,
)
from wmhseg.cli.app import app


def main() -> None:
    """Run the ``wmhseg`` console script."""
    app()


__all__ = ["app", "main"]
