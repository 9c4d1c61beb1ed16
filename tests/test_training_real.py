"""Training on the two labelled MNI patients (WhiteStripe-normalized in the test)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from wmhseg import io
from wmhseg.training import TrainConfig, train

PATIENTS = ("patient07", "patient19")


def _normalized_patients(shared_data: Path, out: Path) -> Path:
    from wmhseg.preprocess.whitestripe import whitestripe_normalize

    source = shared_data / "open_ms_data_3DMRMS_mni"
    for patient in PATIENTS:
        t1 = io.load_image(source / patient / "T1.nii.gz")
        flair = io.load_image(source / patient / "FLAIR.nii.gz")
        # The MNI images are skull-stripped, so the brain is their non-zero voxels.
        brain = (np.asarray(t1.dataobj) != 0) | (np.asarray(flair.dataobj) != 0)
        folder = out / patient
        folder.mkdir(parents=True)
        for name, image, modality in (("T1", t1, "t1"), ("FLAIR", flair, "flair")):
            normalized = whitestripe_normalize(image, brain, modality=modality)
            io.save_image(np.asarray(normalized.dataobj), flair, folder / f"{name}.nii.gz")
        label = io.load_label(source / patient / "consensus_gt.nii.gz", flair)
        io.save_mask(label == 1, flair, folder / "wmh.nii.gz")
    return out


@pytest.mark.slow
def test_train_real_patients_few_steps(shared_data: Path, tmp_path: Path) -> None:
    data_dir = _normalized_patients(shared_data, tmp_path / "data")
    config = TrainConfig(
        data_dir=data_dir,
        out_dir=tmp_path / "run",
        mode="conservative",
        window=100,
        width=4,
        depth=4,
        crop_size=(96, 96),
        steps_per_epoch=3,
        max_epochs=1,
        validation_subjects=("patient07",),
        labelled_only=True,
        threads=1,
    )
    result = train(config)
    assert set(result.best_validation_dice) == {"FLAIR", "T1"}
    assert all(0.0 <= v <= 1.0 for v in result.best_validation_dice.values())
    assert math.isfinite(result.best_score)
    assert (result.run_dir / "lambda.png").is_file()
