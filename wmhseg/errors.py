"""Exception hierarchy.

Every error that a user can fix derives from :class:`WmhsegError`. Its message is written for
the user: it names the file, says what is wrong and what to do. The CLI prints the message and
exits with a non-zero code; tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import os
from pathlib import Path


class WmhsegError(Exception):
    """Base class for errors that the user can act on."""

    exit_code: int = 1


class InputImageError(WmhsegError):
    """An input image is missing, unreadable, of the wrong kind or has invalid contents."""

    exit_code = 2

    def __init__(self, path: str | os.PathLike[str] | None, message: str) -> None:
        self.path = Path(path) if path is not None else None
        prefix = f"{self.path}: " if self.path is not None else ""
        super().__init__(prefix + message)


class GeometryError(InputImageError):
    """An image has no usable voxel-to-world transform."""


class OutputError(WmhsegError):
    """An output cannot be written: it exists already or its folder is not writable."""

    exit_code = 3


class PreprocessingError(WmhsegError):
    """A preprocessing stage failed on one subject."""


class TrainingError(WmhsegError):
    """Training cannot start or continue with the given data or options."""


class ModelError(WmhsegError):
    """A model checkpoint is missing, unreadable or incompatible."""
