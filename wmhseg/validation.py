"""Checking input images and output folders before a long run (``wmhseg check``).

Each image goes through :func:`wmhseg.io.load_image_and_header`, the same validation that every
command runs, so an image that passes here loads in ``preprocess``, ``train`` and ``predict``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from wmhseg import io
from wmhseg.errors import OutputError, WmhsegError


@dataclass(frozen=True)
class ImageCheck:
    """Result of validating one image; header fields are None where the file could not be read."""

    path: Path
    error: str | None = None
    warnings: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    voxel_size_mm: tuple[float, float, float] | None = None
    orientation: str | None = None
    sform_code: int | None = None
    qform_code: int | None = None
    dtype: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image loads and can be used."""
        return self.error is None


@dataclass(frozen=True)
class OutputCheck:
    """Result of checking an output folder for write access."""

    path: Path
    error: str | None = None
    will_be_created: bool = False

    @property
    def ok(self) -> bool:
        """Whether outputs can be written there."""
        return self.error is None


def _without_path(path: Path, message: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _header_fields(header: nib.Nifti1Header, affine: np.ndarray | None) -> dict[str, object]:
    zooms = tuple(float(value) for value in header.get_zooms()[:3])
    fields: dict[str, object] = {
        "shape": tuple(int(size) for size in header.get_data_shape()),
        "voxel_size_mm": zooms if len(zooms) == 3 else None,
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
        "dtype": str(header.get_data_dtype()),
    }
    if affine is not None:
        fields["orientation"] = "".join(nib.aff2axcodes(affine))
    return fields


def _header_of_unusable_file(path: Path) -> dict[str, object]:
    """Return the header fields of a rejected file that can still be read, for the report table."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = io.read_nifti_bytes(path)
        image_class = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
        header = image_class.from_bytes(raw).header
    except Exception:  # the error that matters was already recorded; this is best effort
        return {}
    return _header_fields(header, None)


def check_image(path: str | Path, *, allow_qform: bool = False) -> ImageCheck:
    """Validate one image as every wmhseg command would, collecting warnings instead of raising."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", io.InputImageWarning)
        try:
            image, file_header = io.load_image_and_header(path, allow_qform=allow_qform)
        except WmhsegError as error:
            return ImageCheck(
                path=path,
                error=_without_path(path, str(error)),
                **_header_of_unusable_file(path),  # type: ignore[arg-type]
            )
    notes = tuple(
        _without_path(path, str(item.message))
        for item in caught
        if issubclass(item.category, io.InputImageWarning)
    )
    fields = _header_fields(file_header, image.affine)
    fields["shape"] = tuple(int(size) for size in image.shape)
    return ImageCheck(path=path, warnings=notes, **fields)  # type: ignore[arg-type]


def check_images(paths: Iterable[str | Path], *, allow_qform: bool = False) -> list[ImageCheck]:
    """Validate each image; one bad image does not stop the others."""
    return [check_image(path, allow_qform=allow_qform) for path in paths]


def check_output(path: str | Path) -> OutputCheck:
    """Check that outputs could be written to folder ``path``, without creating anything."""
    path = Path(path)
    try:
        existing = io.check_output_dir(path)
    except OutputError as error:
        return OutputCheck(path=path, error=str(error))
    return OutputCheck(path=path, will_be_created=existing != path)
