"""Shared fixtures: real data location, synthetic NIfTI files with exact headers, the CLI."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner, Result

from wmhseg.cli import app

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

# Geometry of the synthetic FLAIR used by geometry round-trip tests: 0.9×0.9×3 mm voxels, a
# small rotation about z, a non-zero origin, sform code 2 (aligned) and qform code 1 (scanner).
FLAIR_SHAPE = (40, 48, 32)
FLAIR_ZOOMS = (0.9, 0.9, 3.0)


def flair_affine() -> npt.NDArray[np.float64]:
    angle = np.deg2rad(7.0)
    rotation = np.array(
        [
            [np.cos(angle), -np.sin(angle), 0.0],
            [np.sin(angle), np.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(FLAIR_ZOOMS)
    affine[:3, 3] = (-17.3, 22.1, -41.7)
    return affine


def write_nifti(
    path: Path,
    data: npt.NDArray[np.generic],
    *,
    sform: npt.ArrayLike | None = None,
    sform_code: int = 0,
    qform: npt.ArrayLike | None = None,
    qform_code: int = 0,
    zooms: tuple[float, ...] | None = None,
    slope: float = 1.0,
    inter: float = 0.0,
) -> Path:
    """Write ``data`` byte for byte with exactly the given header fields.

    nibabel's own writer recomputes scaling and may reset codes; tests of header handling
    need the fields as a broken converter would leave them, so the header and the raw voxel
    bytes are written directly. A ``.gz`` suffix gzip-compresses the file.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    if qform is not None:
        header.set_qform(np.asarray(qform), code=qform_code)
    if sform is not None:
        header.set_sform(np.asarray(sform), code=sform_code)
    header["sform_code"] = sform_code
    header["qform_code"] = qform_code
    if zooms is not None:
        header.set_zooms(zooms)
    header["scl_slope"] = slope
    header["scl_inter"] = inter
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\x00" * 4 + np.asarray(data).tobytes(order="F")
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def noise_volume(shape: tuple[int, ...], seed: int = 0) -> npt.NDArray[np.float32]:
    """Return positive random intensities (an MR-like image with non-zero variance)."""
    return np.random.default_rng(seed).uniform(50.0, 150.0, size=shape).astype(np.float32)


@pytest.fixture
def make_flair(tmp_path: Path) -> Callable[..., Path]:
    """Build the 40×48×32 FLAIR (0.9×0.9×3 mm, origin ≠ 0, sform code 2, qform code 1)."""

    def build(name: str = "FLAIR.nii.gz") -> Path:
        affine = flair_affine()
        return write_nifti(
            tmp_path / name,
            noise_volume(FLAIR_SHAPE),
            sform=affine,
            sform_code=2,
            qform=affine,
            qform_code=1,
        )

    return build


@pytest.fixture
def simple_image(tmp_path: Path) -> Callable[..., Path]:
    """Build a valid 32×32×16 float32 image with a 1 mm RAS affine (sform and qform code 1)."""

    def build(name: str = "image.nii.gz", data: npt.NDArray[np.generic] | None = None) -> Path:
        values = noise_volume((32, 32, 16)) if data is None else data
        return write_nifti(
            tmp_path / name, values, sform=np.eye(4), sform_code=1, qform=np.eye(4), qform_code=1
        )

    return build


@pytest.fixture
def shared_data() -> Path:
    """Return the real-scan folder, or skip when this checkout has no ../shared/data."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scans not found at {SHARED_DATA.resolve()}")
    return SHARED_DATA


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Invoke the wmhseg CLI in-process and return the result (stdout and stderr kept apart)."""

    def invoke(*arguments: str | Path) -> Result:
        return CliRunner().invoke(app, [str(argument) for argument in arguments])

    return invoke
