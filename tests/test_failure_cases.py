"""Bad inputs and outputs through the CLI: each case builds its input and checks the message,
the exit code and that no Python traceback is shown without --debug.

Cases: sheared affines, output headers, 4D files, scaled integer labels, mask data types,
NaN/Inf and constant images, wrong suffixes and damaged files, DICOM, unwritable outputs.
Most run through ``wmhseg check``, which uses the same loader as every command. The cases that
must stop before long work also run through ``wmhseg predict`` with a tiny random-weight model.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import (
    FLAIR_SHAPE,
    noise_volume,
    run_cli_subject_to_permissions,
    write_nifti,
)
from typer.testing import Result

from wmhseg import inference, io
from wmhseg.errors import InputImageError, OutputError

CliRunnerCall = Callable[..., Result]
IMAGE_SHAPE = (32, 32, 16)
SKIP_PREPROCESSING = "n4,skullstrip,whitestripe"


def assert_failed(result: Result, exit_code: int, *phrases: str) -> None:
    """Assert the exit code, that each phrase is in the output, and that no traceback is."""
    assert result.exit_code == exit_code, result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    assert "Traceback" not in result.output


def raw_header(path: Path) -> nib.Nifti1Header:
    payload = path.read_bytes()
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    return nib.Nifti1Header.from_fileobj(BytesIO(payload))


def image_file(path: Path, data: np.ndarray | None = None) -> Path:
    values = noise_volume(IMAGE_SHAPE) if data is None else data
    return write_nifti(path, values, sform=np.eye(4), sform_code=1, qform=np.eye(4), qform_code=1)


def brain_like(path: Path, *, bad_voxels: bool = False) -> Path:
    """Write a 48×56×12 image, 1.5×1.5×4 mm, with a 124 mL bright block in a dark background.

    Prediction rejects brain masks below 100 mL, so the block must be larger than that.
    """
    data = np.zeros((48, 56, 12), dtype=np.float32)
    data[4:-4, 5:-5, 1:-1] = np.random.default_rng(1).normal(1.0, 0.2, (40, 46, 10))
    if bad_voxels:
        data[12, 12, 3] = np.nan
        data[13, 12, 3] = np.inf
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    return write_nifti(path, data, sform=affine, sform_code=1, qform=affine, qform_code=1)


def predict(run_cli: CliRunnerCall, model: Path, *arguments: str | Path) -> Result:
    return run_cli(
        "predict", *arguments, "--model", model, "--modality", "flair", "--skip", SKIP_PREPROCESSING
    )


# --------------------------------------------------------------------------------------------
# Non-orthogonal affine: a sheared sform, with and without a valid qform
# --------------------------------------------------------------------------------------------


def sheared_file(tmp_path: Path, *, with_qform: bool) -> Path:
    sform = np.eye(4)
    sform[0, 1] = 0.15
    qform = np.diag([1.1, 1.2, 2.0, 1.0])
    qform[:3, 3] = (-20.0, 15.0, 7.5)
    return write_nifti(
        tmp_path / "sheared.nii.gz",
        noise_volume(IMAGE_SHAPE),
        sform=sform,
        sform_code=1,
        qform=qform if with_qform else None,
        qform_code=1 if with_qform else 0,
    )


def test_sheared_sform_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = sheared_file(tmp_path, with_qform=False)
    result = run_cli("check", path)
    assert_failed(result, 2, str(path), "sform is sheared", "qform is not set either")


def test_sheared_sform_with_qform_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = sheared_file(tmp_path, with_qform=True)
    assert_failed(run_cli("check", path), 2, "sform is sheared", "--use-qform")


def test_use_qform_accepts(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = sheared_file(tmp_path, with_qform=True)
    result = run_cli("check", path, "--use-qform")
    assert result.exit_code == 0, result.output
    assert "using the qform" in result.output


def test_use_qform_never_identity(tmp_path: Path) -> None:
    path = sheared_file(tmp_path, with_qform=True)
    affine = io.load_image(path, allow_qform=True).affine
    assert not np.allclose(affine, np.eye(4))


def test_use_qform_without_qform(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = sheared_file(tmp_path, with_qform=False)
    assert_failed(run_cli("check", path, "--use-qform"), 2, "sform is sheared")


def test_predict_sheared_needs_flag(
    tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path
) -> None:
    path = sheared_file(tmp_path, with_qform=True)
    result = predict(run_cli, tiny_checkpoint, path, "--out", tmp_path / "out")
    assert_failed(result, 1, "sform is sheared", "--use-qform")


# --------------------------------------------------------------------------------------------
# Output header: every written image keeps the reference geometry
# --------------------------------------------------------------------------------------------


def test_predict_outputs_keep_geometry(
    tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path, make_flair: Callable[..., Path]
) -> None:
    source = make_flair()
    out = tmp_path / "out"
    result = predict(run_cli, tiny_checkpoint, source, "--out", out, "--save-probabilities")
    assert result.exit_code == 0, result.output

    reference = raw_header(source)
    written = sorted(out.glob("*.nii*"))
    assert len(written) >= 2, written
    for path in written:
        header = raw_header(path)
        assert header.get_data_shape() == FLAIR_SHAPE, path
        assert int(header["sform_code"]) == 2, path
        assert int(header["qform_code"]) == 1, path
        assert np.allclose(header.get_sform(), reference.get_sform(), atol=1e-5), path
        assert np.allclose(header.get_qform(), reference.get_qform(), atol=1e-5), path
        assert np.allclose(header.get_zooms(), reference.get_zooms(), atol=1e-5), path


# --------------------------------------------------------------------------------------------
# 4D files
# --------------------------------------------------------------------------------------------


def four_d_file(tmp_path: Path, volumes: int) -> Path:
    return write_nifti(
        tmp_path / f"dwi{volumes}.nii.gz",
        noise_volume((*IMAGE_SHAPE, volumes)),
        sform=np.eye(4),
        sform_code=1,
    )


def test_singleton_4d_carries_on(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    result = run_cli("check", four_d_file(tmp_path, 1))
    assert result.exit_code == 0, result.output
    assert "dropped the singleton axes" in result.output


def test_real_4d_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = four_d_file(tmp_path, 3)
    result = run_cli("check", path)
    assert_failed(result, 2, str(path), "4D image with 3 volumes; give one 3D volume")


def test_4d_stops_before_ants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ants

    def no_ants(*_: object, **__: object) -> None:
        raise AssertionError("an ANTs function ran on a 4D file")

    monkeypatch.setattr(ants, "from_numpy", no_ants)
    monkeypatch.setattr(ants, "image_read", no_ants)
    with pytest.raises(InputImageError, match="4D image with 3 volumes"):
        io.load_image(four_d_file(tmp_path, 3))


def test_predict_4d_stops(tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path) -> None:
    path = four_d_file(tmp_path, 3)
    result = predict(run_cli, tiny_checkpoint, path, "--out", tmp_path / "o")
    assert_failed(result, 1, "4D image with 3 volumes; give one 3D volume")


# --------------------------------------------------------------------------------------------
# Scaled integer label files
# --------------------------------------------------------------------------------------------


def scaled_labels(tmp_path: Path, labels: np.ndarray, name: str = "truth.nii.gz") -> Path:
    slope, inter = 0.3333333, 0.5
    stored = np.rint((labels - inter) / slope).astype(np.int16)
    return write_nifti(
        tmp_path / name, stored, sform=np.eye(4), sform_code=1, slope=slope, inter=inter
    )


def label_volume() -> np.ndarray:
    labels = np.zeros((16, 16, 8), dtype=np.int16)
    labels[4:8, 4:8, 2:5] = 1
    labels[10:12, 10:13, 5] = 2
    return labels


def test_scaled_labels_evaluate(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    truth = scaled_labels(tmp_path, label_volume())
    prediction = write_nifti(
        tmp_path / "pred.nii.gz",
        (label_volume() == 1).astype(np.uint8),
        sform=np.eye(4),
        sform_code=1,
    )
    result = run_cli("evaluate", prediction, truth)
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(result.stdout.splitlines()))
    assert float(row["dice"]) == 1.0


def test_scaled_label_out_of_range(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    labels = label_volume()
    labels[0, 0, 0] = 5
    truth = scaled_labels(tmp_path, labels)
    prediction = write_nifti(
        tmp_path / "pred.nii.gz", np.zeros((16, 16, 8), np.uint8), sform=np.eye(4), sform_code=1
    )
    result = run_cli("evaluate", prediction, truth)
    assert_failed(result, 2, str(truth), "label values range from 0 to 5")


# --------------------------------------------------------------------------------------------
# Mask data type: an int64 network output is written as uint8
# --------------------------------------------------------------------------------------------


def test_int64_prediction_header_uint8(
    tmp_path: Path,
    run_cli: CliRunnerCall,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def int64_output(_: object, normalized: np.ndarray, *__: object, **___: object) -> np.ndarray:
        output = np.zeros(normalized.shape, dtype=np.int64)
        output[10:20, 10:20, 2:6] = 1
        return output

    monkeypatch.setattr(inference, "predict_probabilities", int64_output)
    image = brain_like(tmp_path / "FLAIR.nii.gz")
    result = predict(run_cli, tiny_checkpoint, image, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output

    masks = list((tmp_path / "out").glob("*wmh.nii.gz"))
    assert len(masks) == 1, result.output
    header = raw_header(masks[0])
    assert int(header["datatype"]) == 2
    assert int(header["bitpix"]) == 8
    assert float(header["scl_slope"]) == 1.0
    assert float(header["scl_inter"]) == 0.0


# --------------------------------------------------------------------------------------------
# NaN, Inf and constant images
# --------------------------------------------------------------------------------------------


def test_nan_inf_warned(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    data = noise_volume(IMAGE_SHAPE)
    data.flat[[1, 100, 200, 300, 400]] = np.nan
    data.flat[[500, 600]] = np.inf
    result = run_cli("check", image_file(tmp_path / "nan.nii.gz", data))
    assert result.exit_code == 0, result.output
    assert "replaced 5 NaN and 2 Inf voxels with 0" in result.output


@pytest.mark.parametrize("value", [0.0, 100.0], ids=["zeros", "constant"])
def test_constant_image_stops(tmp_path: Path, run_cli: CliRunnerCall, value: float) -> None:
    path = image_file(tmp_path / "flat.nii.gz", np.full(IMAGE_SHAPE, value, np.float32))
    assert_failed(run_cli("check", path), 2, str(path), "image has zero intensity variance")


def test_nan_never_written(tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path) -> None:
    image = brain_like(tmp_path / "FLAIR.nii.gz", bad_voxels=True)
    out = tmp_path / "out"
    result = predict(run_cli, tiny_checkpoint, image, "--out", out, "--save-probabilities")
    assert result.exit_code == 0, result.output
    for path in out.glob("*.nii.gz"):
        assert np.all(np.isfinite(nib.load(path).get_fdata())), path


# --------------------------------------------------------------------------------------------
# Wrong suffix or damaged file
# --------------------------------------------------------------------------------------------


def test_plain_named_gz_warned(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = image_file(tmp_path / "scan.nii").rename(tmp_path / "scan.nii.gz")
    result = run_cli("check", path)
    assert result.exit_code == 0, result.output
    assert "not gzip-compressed although its name ends in .gz" in result.output


def test_gzip_named_nii_warned(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = image_file(tmp_path / "scan.nii.gz").rename(tmp_path / "scan.nii")
    result = run_cli("check", path)
    assert result.exit_code == 0, result.output
    assert "gzip-compressed but its name does not end in .gz" in result.output


def test_truncated_gzip_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = image_file(tmp_path / "cut.nii.gz")
    path.write_bytes(path.read_bytes()[:-100])
    assert_failed(run_cli("check", path), 2, str(path), "file is truncated or corrupt")


def test_predict_truncated_stops(
    tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path
) -> None:
    path = brain_like(tmp_path / "FLAIR.nii.gz")
    path.write_bytes(path.read_bytes()[:-100])
    result = predict(run_cli, tiny_checkpoint, path, "--out", tmp_path / "out")
    assert_failed(result, 1, "file is truncated or corrupt")


# --------------------------------------------------------------------------------------------
# DICOM instead of NIfTI
# --------------------------------------------------------------------------------------------

DICOM_MESSAGE = "DICOM is not supported; convert with dcm2niix first"


def dicom_slice(path: Path, index: int = 0) -> Path:
    """Write one 16×16 MR slice as a DICOM file with SimpleITK (GDCM)."""
    array = np.random.default_rng(index).integers(0, 1000, (16, 16)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def test_dicom_file_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = dicom_slice(tmp_path / "IM0001.dcm")
    assert_failed(run_cli("check", path), 2, str(path), DICOM_MESSAGE)


def test_dicom_folder_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for index in range(4):
        dicom_slice(series / f"IM{index:04d}", index)
    assert_failed(run_cli("check", series), 2, str(series), DICOM_MESSAGE)


def test_dicom_named_nii_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = dicom_slice(tmp_path / "slice.dcm").rename(tmp_path / "FLAIR.nii")
    assert_failed(run_cli("check", path), 2, str(path), DICOM_MESSAGE)


def test_predict_dicom_stops(tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path) -> None:
    path = dicom_slice(tmp_path / "slice.dcm").rename(tmp_path / "FLAIR.nii.gz")
    result = predict(run_cli, tiny_checkpoint, path, "--out", tmp_path / "out")
    assert_failed(result, 1, DICOM_MESSAGE)


def test_predict_folder_without_modality(
    tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path
) -> None:
    # The folder's name gives no modality, but the error must be about the folder.
    folder = tmp_path / "scans"
    folder.mkdir()
    result = run_cli("predict", folder, "--model", tiny_checkpoint, "--out", tmp_path / "out")
    assert_failed(result, 1, str(folder), "this is a folder, not a NIfTI file")


# --------------------------------------------------------------------------------------------
# Unwritable output
# --------------------------------------------------------------------------------------------


def locked_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_unwritable_out_check(tmp_path: Path) -> None:
    image = image_file(tmp_path / "scan.nii.gz")
    locked = locked_folder(tmp_path)
    result = run_cli_subject_to_permissions("check", image, "--out", locked)
    assert result.returncode == OutputError.exit_code, result.stderr
    assert f"{locked}: output folder is not writable" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_parent_check(tmp_path: Path) -> None:
    image = image_file(tmp_path / "scan.nii.gz")
    target = locked_folder(tmp_path) / "results"
    result = run_cli_subject_to_permissions("check", image, "--out", target)
    assert result.returncode == OutputError.exit_code, result.stderr
    assert f"{target}: cannot create the output folder" in result.stderr


def test_predict_unwritable_out_stops(tmp_path: Path, tiny_checkpoint: Path) -> None:
    image = brain_like(tmp_path / "FLAIR.nii.gz")
    locked = locked_folder(tmp_path)
    result = run_cli_subject_to_permissions(
        "predict", image, "--out", locked, "--model", tiny_checkpoint
    )
    assert result.returncode == OutputError.exit_code, result.stderr
    assert f"{locked}: output folder is not writable" in result.stderr
    # Start-up check: the model was never loaded, so no device line was printed.
    assert "on device" not in result.stderr


def test_missing_out_created(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    image = image_file(tmp_path / "scan.nii.gz")
    target = tmp_path / "new" / "nested"
    result = run_cli("check", image, "--out", target)
    assert result.exit_code == 0, result.output
    assert "does not exist yet and can be created" in result.output


def test_missing_parent_created_on_save(tmp_path: Path) -> None:
    image = io.load_image(image_file(tmp_path / "scan.nii.gz"))
    target = tmp_path / "missing" / "mask.nii.gz"
    io.save_mask(np.zeros(IMAGE_SHAPE, bool), image, target)
    assert target.is_file()


def test_existing_output_refused(
    tmp_path: Path, run_cli: CliRunnerCall, tiny_checkpoint: Path
) -> None:
    image = brain_like(tmp_path / "FLAIR.nii.gz")
    out = tmp_path / "out"
    assert predict(run_cli, tiny_checkpoint, image, "--out", out).exit_code == 0
    mask = next(out.glob("*wmh.nii.gz"))
    before = mask.read_bytes()

    again = predict(run_cli, tiny_checkpoint, image, "--out", out)
    assert_failed(again, 1, "pass --overwrite")
    assert mask.read_bytes() == before


def test_existing_output_library(tmp_path: Path) -> None:
    image = io.load_image(image_file(tmp_path / "scan.nii.gz"))
    target = io.save_mask(np.zeros(IMAGE_SHAPE, bool), image, tmp_path / "m.nii.gz")
    with pytest.raises(OutputError, match="exists already; pass --overwrite"):
        io.save_mask(np.ones(IMAGE_SHAPE, bool), image, target)


# --------------------------------------------------------------------------------------------
# The same inputs through wmhseg preprocess (fast stages only)
# --------------------------------------------------------------------------------------------

FAST_STAGES_ONLY = "n4,skullstrip,whitestripe"


def preprocess(run_cli: CliRunnerCall, flair: Path, out: Path, *extra: str) -> Result:
    return run_cli("preprocess", "--flair", flair, "--out", out, *extra)


def test_preprocess_outputs_keep_geometry(
    tmp_path: Path, run_cli: CliRunnerCall, make_flair: Callable[..., Path]
) -> None:
    # N4 and WhiteStripe run for real; skull stripping needs real anatomy, so it is skipped.
    source = make_flair()
    result = preprocess(run_cli, source, tmp_path / "out", "--skip", "skullstrip")
    assert result.exit_code == 0, result.output

    reference = raw_header(source)
    written = sorted((tmp_path / "out").rglob("*.nii.gz"))
    written = [path for path in written if ".wmhseg_cache" not in path.parts]
    assert len(written) >= 2, written
    for path in written:
        header = raw_header(path)
        assert header.get_data_shape() == FLAIR_SHAPE, path
        assert int(header["sform_code"]) == 2, path
        assert int(header["qform_code"]) == 1, path
        assert np.allclose(header.get_sform(), reference.get_sform(), atol=1e-5), path
        assert np.allclose(header.get_qform(), reference.get_qform(), atol=1e-5), path
        assert np.allclose(header.get_zooms(), reference.get_zooms(), atol=1e-5), path


def test_preprocess_4d_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    result = preprocess(run_cli, four_d_file(tmp_path, 3), tmp_path / "out", "--skip", "n4")
    assert_failed(result, 1, "4D image with 3 volumes; give one 3D volume")


def test_preprocess_dicom_file_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = dicom_slice(tmp_path / "slice.dcm").rename(tmp_path / "FLAIR.nii")
    result = preprocess(run_cli, path, tmp_path / "out", "--skip", FAST_STAGES_ONLY)
    assert_failed(result, 1, DICOM_MESSAGE)


def test_preprocess_dicom_folder_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for index in range(3):
        dicom_slice(series / f"IM{index:04d}", index)
    result = preprocess(run_cli, series, tmp_path / "out", "--skip", FAST_STAGES_ONLY)
    assert_failed(result, 1, DICOM_MESSAGE)


def test_preprocess_truncated_stops(tmp_path: Path, run_cli: CliRunnerCall) -> None:
    path = image_file(tmp_path / "FLAIR.nii.gz")
    path.write_bytes(path.read_bytes()[:-100])
    result = preprocess(run_cli, path, tmp_path / "out", "--skip", FAST_STAGES_ONLY)
    assert_failed(result, 1, "file is truncated or corrupt")


def test_preprocess_existing_output_refused(
    tmp_path: Path, run_cli: CliRunnerCall, make_flair: Callable[..., Path]
) -> None:
    source = make_flair()
    out = tmp_path / "out"
    first = preprocess(run_cli, source, out, "--skip", FAST_STAGES_ONLY)
    assert first.exit_code == 0, first.output

    # Other parameters make other outputs, which must not replace the first ones silently.
    again = preprocess(run_cli, source, out, "--skip", "n4,whitestripe,register")
    assert_failed(again, 1, "pass --overwrite")


def test_preprocess_unwritable_out_stops(tmp_path: Path) -> None:
    image = image_file(tmp_path / "FLAIR.nii.gz")
    locked = locked_folder(tmp_path)
    result = run_cli_subject_to_permissions(
        "preprocess", "--flair", image, "--out", locked, "--skip", FAST_STAGES_ONLY
    )
    assert result.returncode == OutputError.exit_code, result.stderr
    assert f"{locked}: output folder is not writable" in result.stderr
    assert "Traceback" not in result.stderr
