"""The whole chain on real scans: preprocess → train → predict → evaluate, through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from wmhseg.cli import app

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MNI = DATA / "open_ms_data_3DMRMS_mni"
PATIENTS = ("patient07", "patient19")


def _invoke(arguments: list[str]) -> str:
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_chain_on_labelled_patients(tmp_path: Path) -> None:
    if not MNI.is_dir():
        pytest.skip(f"real data not found at {MNI}")
    preprocessed = tmp_path / "preprocessed"
    run = tmp_path / "run"
    predictions = tmp_path / "predictions"

    # The MNI patients are already registered, bias-corrected and skull-stripped.
    for patient in PATIENTS:
        _invoke(
            [
                "preprocess",
                "--t1", str(MNI / patient / "T1.nii.gz"),
                "--flair", str(MNI / patient / "FLAIR.nii.gz"),
                "--wmh", str(MNI / patient / "consensus_gt.nii.gz"),
                "--subject", patient,
                "--skip", "register,n4,skullstrip",
                "--out", str(preprocessed),
            ]
        )
    for patient in PATIENTS:
        for name in ("T1.nii.gz", "FLAIR.nii.gz", "wmh.nii.gz", "brain_mask.nii.gz"):
            assert (preprocessed / patient / name).is_file()

    _invoke(
        [
            "train", str(preprocessed),
            "--out", str(run),
            "--mode", "conservative",
            "--window", "100",
            "--model", "lw",
            "--max-epochs", "1",
            "--steps-per-epoch", "3",
            "--crop", "64", "64",
            "--validation-subjects", "patient19",
            "--seed", "1",
        ]
    )
    assert any(run.glob("*.pt"))

    flair = MNI / "patient19" / "FLAIR.nii.gz"
    _invoke(
        [
            "predict", str(flair),
            "--modality", "flair",
            "--model", str(run),
            "--skip", "n4,skullstrip",
            "--out", str(predictions),
        ]
    )
    mask_path = predictions / "FLAIR_wmh.nii.gz"
    source = nib.load(flair)
    mask = nib.load(mask_path)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}

    scores = tmp_path / "scores.csv"
    _invoke(
        [
            "evaluate", str(mask_path), str(MNI / "patient19" / "consensus_gt.nii.gz"),
            "--csv", str(scores),
        ]
    )
    with scores.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    dice = float(rows[0]["dice"])
    assert 0.0 <= dice <= 1.0
