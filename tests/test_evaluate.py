"""`wmhseg evaluate` and wmhseg.evaluation on tiny NIfTI pairs written in the test."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from wmhseg import evaluation
from wmhseg.cli import app
from wmhseg.errors import InputImageError

AFFINE = np.diag([0.9, 0.9, 3.0, 1.0])


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    image = nib.Nifti1Image(data.astype(np.uint8), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    prediction = np.zeros((8, 8, 4), dtype=np.uint8)
    truth = np.zeros((8, 8, 4), dtype=np.uint8)
    prediction[1:3, 1:3, 1] = 1  # 4 voxels
    truth[1:3, 1:4, 1] = 1  # 6 voxels, 4 shared
    truth[6, 6, 3] = 2  # ignored
    prediction[6, 6, 3] = 1
    return _write(tmp_path / "pred.nii.gz", prediction), _write(tmp_path / "truth.nii.gz", truth)


def test_evaluate_pair_scores(pair: tuple[Path, Path]) -> None:
    result = evaluation.evaluate_pair(*pair)
    assert result.scores.dice == pytest.approx(2 * 4 / 10)
    assert result.scores.truth_volume_ml == pytest.approx(6 * 0.9 * 0.9 * 3 / 1000)
    assert result.scores.avd_percent == pytest.approx(100 * 2 / 6)


def test_evaluate_pair_empty_truth(tmp_path: Path) -> None:
    empty = np.zeros((4, 4, 2), dtype=np.uint8)
    prediction = empty.copy()
    prediction[1, 1, 1] = 1
    truth_path = _write(tmp_path / "truth.nii.gz", empty)
    result = evaluation.evaluate_pair(_write(tmp_path / "pred.nii.gz", prediction), truth_path)
    assert result.scores.dice == 0.0
    assert result.scores.hd95_mm == math.inf


def test_evaluate_pair_both_empty(tmp_path: Path) -> None:
    empty = np.zeros((4, 4, 2), dtype=np.uint8)
    result = evaluation.evaluate_pair(
        _write(tmp_path / "pred.nii.gz", empty), _write(tmp_path / "truth.nii.gz", empty)
    )
    assert result.scores.dice == 1.0
    assert result.scores.hd95_mm == 0.0


def test_grid_mismatch_names_both_files(tmp_path: Path) -> None:
    prediction = _write(tmp_path / "pred.nii.gz", np.zeros((8, 8, 4)))
    truth = _write(tmp_path / "truth.nii.gz", np.zeros((8, 8, 5)))
    with pytest.raises(InputImageError) as caught:
        evaluation.evaluate_pair(prediction, truth)
    assert "pred.nii.gz" in str(caught.value)
    assert "truth.nii.gz" in str(caught.value)


def test_affine_mismatch_names_both_files(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    prediction = _write(tmp_path / "pred.nii.gz", np.zeros((8, 8, 4)), shifted)
    truth = _write(tmp_path / "truth.nii.gz", np.zeros((8, 8, 4)))
    with pytest.raises(InputImageError, match="affine differs") as caught:
        evaluation.evaluate_pair(prediction, truth)
    assert "truth.nii.gz" in str(caught.value)


def test_pairs_from_folders_matches_wmh_suffix(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    data = np.zeros((4, 4, 2))
    _write(tmp_path / "pred" / "sub01_wmh.nii.gz", data)
    _write(tmp_path / "pred" / "sub02.nii.gz", data)
    _write(tmp_path / "truth" / "sub01.nii.gz", data)
    _write(tmp_path / "truth" / "sub02.nii.gz", data)
    pairs = evaluation.pairs_from_folders(tmp_path / "pred", tmp_path / "truth")
    assert [p.name for p, _ in pairs] == ["sub01_wmh.nii.gz", "sub02.nii.gz"]


def test_pairs_from_folders_missing_prediction(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    _write(tmp_path / "truth" / "sub01.nii.gz", np.zeros((4, 4, 2)))
    with pytest.raises(InputImageError, match="sub01"):
        evaluation.pairs_from_folders(tmp_path / "pred", tmp_path / "truth")


def test_pairs_from_csv_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("prediction,truth\na/p.nii.gz,b/t.nii.gz\n")
    pairs = evaluation.pairs_from_csv(tmp_path / "pairs.csv")
    assert pairs == [(tmp_path / "a/p.nii.gz", tmp_path / "b/t.nii.gz")]


def test_odd_argument_count_rejected() -> None:
    with pytest.raises(InputImageError, match="pairs"):
        evaluation.pairs_from_arguments(["a.nii.gz", "b.nii.gz", "c.nii.gz"])


def test_summary_counts_infinite_values(tmp_path: Path) -> None:
    empty = np.zeros((4, 4, 2), dtype=np.uint8)
    full = empty.copy()
    full[1, 1, 1] = 1
    results = [
        evaluation.evaluate_pair(
            _write(tmp_path / "p1.nii.gz", full), _write(tmp_path / "t1.nii.gz", full)
        ),
        evaluation.evaluate_pair(
            _write(tmp_path / "p2.nii.gz", full), _write(tmp_path / "t2.nii.gz", empty)
        ),
    ]
    hd95 = next(item for item in evaluation.summarize(results) if item.name == "hd95_mm")
    assert hd95.n_infinite == 1
    assert hd95.mean == 0.0


def test_cli_writes_csv_row_per_pair(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "scores" / "scores.csv"
    arguments = [str(path) for path in (*pair, *pair)]
    result = CliRunner().invoke(app, ["evaluate", *arguments, "--csv", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    assert float(rows[0]["dice"]) == pytest.approx(0.8)


def test_cli_csv_writes_inf_not_nan(tmp_path: Path) -> None:
    empty = np.zeros((4, 4, 2), dtype=np.uint8)
    full = empty.copy()
    full[1, 1, 1] = 1
    prediction = _write(tmp_path / "p.nii.gz", full)
    truth = _write(tmp_path / "t.nii.gz", empty)
    result = CliRunner().invoke(app, ["evaluate", str(prediction), str(truth)])
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(result.stdout.splitlines()))
    assert row["hd95_mm"] == "inf"
    assert "nan" not in result.stdout.lower()


def test_cli_rejects_existing_csv(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("keep")
    result = CliRunner().invoke(app, ["evaluate", *map(str, pair), "--csv", str(out)])
    assert result.exit_code != 0
    assert out.read_text() == "keep"


def test_cli_grid_mismatch_exit_code(tmp_path: Path) -> None:
    prediction = _write(tmp_path / "pred.nii.gz", np.zeros((8, 8, 4)))
    truth = _write(tmp_path / "truth.nii.gz", np.zeros((8, 8, 5)))
    result = CliRunner().invoke(app, ["evaluate", str(prediction), str(truth)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
