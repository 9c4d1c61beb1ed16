"""Command-line interface: thin commands over the library functions."""

from wmhseg.cli import check, evaluate, predict, preprocess, train  # noqa: F401  (register commands)
from wmhseg.cli.app import app


def main() -> None:
    """Run the ``wmhseg`` console script."""
    app()


__all__ = ["app", "main"]
