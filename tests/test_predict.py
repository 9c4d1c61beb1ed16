"""`wmhseg predict` from the command line: a tiny checkpoint on synthetic scans, and real scans."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wmhseg.cli import app

SKIP_ALL = "n4,skullstrip,whitestripe"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _scan(path: Path, shape: tuple[int, int, int] = (30, 34, 9)) -> Path:
    data = np.zeros(shape, dtype=np.float32)
    data[5:-5, 5:-5, 1:-1] = np.random.default_rng(1).normal(
        1.0, 0.2, (shape[0] - 10, shape[1] - 10, shape[2] - 2)
    )
    affine = np.diag([4.0, 4.0, 6.0, 1.0])  # large voxels: a brain of plausible volume
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path


def _predict(*arguments: str) -> object:
    return CliRunner().invoke(app, ["--verbose", "predict", *arguments])


def test_cli_writes_named_outputs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    image = _scan(tmp_path / "FLAIR.nii.gz")
    out = tmp_path / "predictions"
    result = _predict(
        str(image), "--out", str(out), "--model", str(tiny_checkpoint), "--skip", SKIP_ALL
    )
    assert result.exit_code == 0, result.output
    for name in ("FLAIR_wmh.nii.gz", "FLAIR_wmh.json", "FLAIR_wmh_qc.png", "wmh_stats.csv"):
        assert (out / name).is_file(), name
    assert "device cpu" in result.output


def test_cli_unknown_modality(tmp_path: Path, tiny_checkpoint: Path) -> None:
    image = _scan(tmp_path / "scan.nii.gz")
    result = _predict(str(image), "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint))
    assert result.exit_code != 0
    assert "--modality" in result.output
    assert "Traceback" not in result.output


def test_cli_failure_listed_others_written(tmp_path: Path, tiny_checkpoint: Path) -> None:
    good = _scan(tmp_path / "good_FLAIR.nii.gz")
    bad = tmp_path / "bad_FLAIR.nii.gz"
    bad.write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "o"
    result = _predict(
        str(bad), str(good), "--out", str(out), "--model", str(tiny_checkpoint), "--skip", SKIP_ALL
    )
    assert result.exit_code == 1
    assert "bad_FLAIR.nii.gz" in result.output
    assert (out / "good_FLAIR_wmh.nii.gz").is_file()
    rows = list(csv.DictReader((out / "wmh_stats.csv").open()))
    assert [row["image"] for row in rows] == ["good_FLAIR"]


def test_cli_existing_outputs_need_overwrite(tmp_path: Path, tiny_checkpoint: Path) -> None:
    image = _scan(tmp_path / "FLAIR.nii.gz")
    arguments = [str(image), "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint)]
    arguments += ["--skip", SKIP_ALL]
    assert _predict(*arguments).exit_code == 0
    again = _predict(*arguments)
    assert again.exit_code == 1
    assert "--overwrite" in again.output
    assert _predict(*arguments, "--overwrite").exit_code == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_cli_unwritable_out_fails_early(tmp_path: Path, tiny_checkpoint: Path) -> None:
    image = _scan(tmp_path / "FLAIR.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = _predict(str(image), "--out", str(locked), "--model", str(tiny_checkpoint))
    assert result.exit_code == 3
    assert "not writable" in result.output


def test_cli_cuda_missing_is_clear(tmp_path: Path, tiny_checkpoint: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    image = _scan(tmp_path / "FLAIR.nii.gz")
    result = _predict(
        str(image),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cuda",
    )
    assert result.exit_code != 0
    assert "--device cpu" in result.output


# ------------------------------------------------------------------ real scans


@pytest.mark.slow
def test_raw_scans_keep_geometry(tmp_path: Path) -> None:
    # Two raw LPS scans with skull, on different grids: 0.72 mm FLAIR
    # (320×320×36, 4 mm slices) and 0.91 mm T1W (256×256×48, 3 mm slices).
    root = DATA / "open_ms_data_longitudinal_raw"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    images = [root / "patient01" / "study1_FLAIR.nii.gz", root / "patient04" / "study1_T1W.nii.gz"]
    result = CliRunner().invoke(app, ["predict", *map(str, images), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output

    for image in images:
        source = nib.load(image)
        mask = nib.load(tmp_path / image.name.replace(".nii.gz", "_wmh.nii.gz"))
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.header.get_sform(), source.header.get_sform(), atol=1e-5)
        np.testing.assert_allclose(mask.header.get_qform(), source.header.get_qform(), atol=1e-5)
        assert int(mask.header["sform_code"]) == int(source.header["sform_code"])
        assert int(mask.header["qform_code"]) == int(source.header["qform_code"])
        np.testing.assert_allclose(mask.header.get_zooms(), source.header.get_zooms(), atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
        record = json.loads((tmp_path / image.name.replace(".nii.gz", "_wmh.json")).read_text())
        assert "skullstrip" in record["preprocessing"]["stages_run"]  # the scans have skull
