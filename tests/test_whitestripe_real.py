"""WhiteStripe on the real scans: where white matter and lesions land after normalization.

The white-matter mode is read inside two estimates: the one WhiteStripe itself uses with a T1
(:func:`whitestripe.white_matter_estimate`), and an independent one (the top class of a 3-class
Otsu split of the unsmoothed T1, eroded by one voxel). Lesions, dilated by 2 voxels, are left
out of both.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from conftest import SHARED_DATA
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from wmhseg.preprocess import whitestripe
from wmhseg.preprocess.pipeline import SubjectInputs, preprocess_subject

MNI = "open_ms_data_3DMRMS_mni"
RAW = "open_ms_data_longitudinal_raw"


def _load(path: Path) -> npt.NDArray[np.float32]:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _estimates(folder: Path) -> dict[str, npt.NDArray[np.bool_]]:
    t1 = _load(folder / "T1.nii.gz")
    brain = _load(folder / "brain_mask.nii.gz") > 0
    spacing = tuple(float(size) for size in nib.load(folder / "T1.nii.gz").header.get_zooms())
    lesions = np.zeros(brain.shape, dtype=bool)
    if (folder / "wmh.nii.gz").exists():
        lesions = ndimage.binary_dilation(_load(folder / "wmh.nii.gz") > 0, iterations=2)
    top_class = brain & (t1 > threshold_multiotsu(t1[brain], classes=3)[1])
    return {
        "wmhseg": whitestripe.white_matter_estimate(t1, brain, spacing=spacing) & ~lesions,
        "independent": ndimage.binary_erosion(top_class) & ~lesions,
    }


def _check_modes(folder: Path) -> None:
    for name, white in _estimates(folder).items():
        for modality in ("T1", "FLAIR"):
            mode = whitestripe.kde_mode(_load(folder / f"{modality}.nii.gz")[white])
            assert abs(mode) <= 0.5, f"{modality} white-matter mode {mode:.2f} ({name} estimate)"


@pytest.fixture(scope="module", params=["patient07", "patient19"])
def mni_subject(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = SHARED_DATA / MNI / request.param
    if not source.is_dir():
        pytest.skip(f"real scans not found at {source}")
    inputs = SubjectInputs(
        subject=request.param,
        t1=source / "T1.nii.gz",
        flair=source / "FLAIR.nii.gz",
        wmh=source / "consensus_gt.nii.gz",
    )
    out = tmp_path_factory.mktemp("whitestripe")
    preprocess_subject(
        inputs, out, skip=frozenset({"register", "n4", "skullstrip"}), write_qc=False
    )
    return out / request.param


def test_mni_white_matter_mode_at_zero(mni_subject: Path) -> None:
    _check_modes(mni_subject)


def test_mni_lesions_far_above_white_matter(mni_subject: Path) -> None:
    flair = _load(mni_subject / "FLAIR.nii.gz")
    lesions = _load(mni_subject / "wmh.nii.gz") == 1
    white = _estimates(mni_subject)["wmhseg"]
    # Measured: lesion medians 30.7 and 25.0 stripe s.d.s above the white-matter mode.
    assert float(np.median(flair[lesions])) - whitestripe.kde_mode(flair[white]) >= 2.0


@pytest.mark.slow
@pytest.mark.parametrize("patient", ["patient01", "patient04"])
def test_raw_white_matter_mode_at_zero(shared_data: Path, tmp_path: Path, patient: str) -> None:
    source = shared_data / RAW / patient
    inputs = SubjectInputs(
        subject=patient,
        t1=source / "study1_T1W.nii.gz",
        flair=source / "study1_FLAIR.nii.gz",
    )
    preprocess_subject(inputs, tmp_path, write_qc=False)
    _check_modes(tmp_path / patient)
