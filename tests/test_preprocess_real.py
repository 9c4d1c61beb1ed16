"""Preprocessing checks on real scans; slow because deepbet runs on each scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wmhseg import io
from wmhseg.preprocess import skullstrip
from wmhseg.preprocess.pipeline import preprocess_scan

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "relative",
    [
        # The lowest fraction of the six stripped scans measured (0.994 at 4 mm).
        "open_ms_data_3DMRMS_mni/patient19/FLAIR.nii.gz",
        # Stripped with zeroed air and no margin: its non-zero voxels are its brain mask.
        "hypermapp3r_test_case/t1.nii.gz",
    ],
)
def test_detects_stripped_scan(shared_data: Path, relative: str) -> None:
    image = io.load_image(shared_data / relative)
    result = preprocess_scan(
        image, modality="t1", skip=frozenset({"n4", "whitestripe"}), detect_skull_stripped=True
    )
    assert result.skull_stripped_detected is True
    assert np.array_equal(result.brain_mask, skullstrip.nonzero_brain_mask(image))
    assert "skullstrip" not in result.stages_run


@pytest.mark.parametrize(
    "relative",
    [
        # Heads with skull whose air is exactly 0; below the volume pre-check, so deepbet decides.
        "open_ms_data_longitudinal_raw/patient01/study1_T1W.nii.gz",
        "open_ms_data_longitudinal_raw/patient01/study1_FLAIR.nii.gz",
    ],
)
def test_detects_scan_with_skull(shared_data: Path, relative: str) -> None:
    image = io.load_image(shared_data / relative)
    assert not skullstrip.too_large_to_be_stripped(image)
    assert not skullstrip.looks_skull_stripped(image)


@pytest.mark.parametrize("patient", ["patient01", "patient04"])
def test_flair_brain_mask_dice(shared_data: Path, patient: str) -> None:
    import nibabel as nib

    from wmhseg.preprocess import registration

    folder = shared_data / "open_ms_data_longitudinal_raw" / patient
    flair = io.load_image(folder / "study1_FLAIR.nii.gz")
    common_path = folder / "brainmask_common_space.nii.gz"
    common = nib.Nifti1Image(
        io.load_label(common_path, max_label=1).astype(np.float32),
        io.load_image(common_path).affine,
    )
    # The file is the transform that resamples the FLAIR into the common space, so it maps
    # common-space points to FLAIR points. Pulling the mask onto the FLAIR grid needs the
    # inverse; the forward direction leaves the mask visibly shifted (Dice 0.88 and 0.70).
    transform = registration.load_transform(folder / "study1_FLAIR_to_common_space.txt")
    truth = registration.resample_to(common, flair, transform.GetInverse(), interpolation="nearest")
    truth_mask = np.asarray(truth.dataobj) > 0.5

    mask = skullstrip.compute_brain_mask(flair, modality="flair")
    dice = 2 * np.sum(mask & truth_mask) / (np.sum(mask) + np.sum(truth_mask))
    # Measured 0.961 (patient01) and 0.955 (patient04), the same with or without N4 first.
    assert dice >= 0.93
