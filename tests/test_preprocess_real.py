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
