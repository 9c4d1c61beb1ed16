"""Shared fixtures: real data location, synthetic NIfTI files with exact headers, the CLI."""

from __future__ import annotations

import ctypes
import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

    nibabel's own writer recomputes scaling and may reset codes. Tests of header handling
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
        # A wide terminal keeps Rich from wrapping messages in the middle of a phrase.
        return CliRunner().invoke(
            app, [str(argument) for argument in arguments], env={"COLUMNS": "400"}
        )

    return invoke


# Linux capability numbers and the prctl operation that removes one from the bounding set.
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


def _drop_permission_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))


def run_cli_subject_to_permissions(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m wmhseg ARGUMENTS`` in a process that file permission bits apply to.

    Root ignores permission bits through CAP_DAC_OVERRIDE, and CI runs tests as root. The child
    drops that capability from its bounding set before exec, so a read-only folder stays
    read-only for it. Skips the test where the capability cannot be dropped.
    """
    command = [sys.executable, "-m", "wmhseg", *map(str, arguments)]
    environment = {**os.environ, "COLUMNS": "400"}
    if os.geteuid() != 0:
        return subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            preexec_fn=_drop_permission_override,
        )
    except subprocess.SubprocessError as error:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE ({error})")


def checkpoint_payload(*, width: int, training: dict[str, Any]) -> dict[str, Any]:
    """Return the checkpoint payload of a depth-2 U-Net with seeded random weights."""
    import torch

    from wmhseg import checkpoint
    from wmhseg.models import build_model

    torch.manual_seed(0)
    kwargs = {"width": width, "depth": 2}
    model = build_model("unet", **kwargs)
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "model_name": "unet",
        "model_kwargs": kwargs,
        "model_state": model.state_dict(),
        "size_divisor": 4,
        "threshold": 0.5,
        "in_plane_spacing_mm": 1.0,
        "wmhseg_version": "test",
        "training": training,
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a checkpoint of a 2-channel U-Net with random weights (for fast CLI runs)."""
    from wmhseg import checkpoint

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    payload = checkpoint_payload(width=2, training={"command": "none: random weights for tests"})
    checkpoint.save_checkpoint(payload, path)
    return path


def write_training_subjects(
    root: Path,
    *,
    subjects: int = 2,
    domains: tuple[str, ...] = ("FLAIR", "T1"),
    shape: tuple[int, int, int] = (24, 28, 6),
) -> Path:
    """Write tiny labelled subjects ``root/<subject>/{<domain>,wmh}.nii.gz`` for training tests.

    A disc of "brain" (values around 0, 0 outside) holds a square lesion that is bright in
    FLAIR (and any other domain) and dark in T1, in every slice.
    """
    from wmhseg import io

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    reference = nib.Nifti1Image(np.zeros(shape, dtype=np.float32), affine)
    reference.set_sform(affine, code=1)
    reference.set_qform(affine, code=1)
    x, y = np.mgrid[: shape[0], : shape[1]]
    disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape[:2]) / 2 - 1) ** 2
    for index in range(subjects):
        rng = np.random.default_rng(index)
        folder = root / f"sub{index:02d}"
        folder.mkdir(parents=True)
        label = np.zeros(shape, dtype=np.uint8)
        corner = 6 + index % 3
        label[corner : corner + 5, corner : corner + 4, :] = 1
        for domain in domains:
            contrast = -3.0 if domain == "T1" else 4.0
            data = rng.normal(0.0, 0.3, shape).astype(np.float32) + contrast * label
            data *= disc[:, :, None]
            io.save_image(data, reference, folder / f"{domain}.nii.gz")
        io.save_mask(label, reference, folder / "wmh.nii.gz")
    return root


@pytest.fixture
def training_data(tmp_path: Path) -> Path:
    """Two tiny labelled subjects with FLAIR and T1 (see :func:`write_training_subjects`)."""
    return write_training_subjects(tmp_path / "data")
