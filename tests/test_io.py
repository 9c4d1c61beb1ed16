"""Library-level tests of wmhseg.io: reading by content, geometry on outputs, safe writes."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FLAIR_SHAPE, FLAIR_ZOOMS, flair_affine, noise_volume, write_nifti

from wmhseg import io
from wmhseg.errors import GeometryError, InputImageError, OutputError

GEOMETRY_TOLERANCE = 1e-5


def raw_header(path: Path) -> nib.Nifti1Header:
    """Read the header bytes of a written file directly, without nibabel's image layer."""
    payload = path.read_bytes()
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    return nib.Nifti1Header.from_fileobj(BytesIO(payload))


def assert_same_geometry(written: Path, reference: Path) -> None:
    """Assert shape, sform, qform, both codes and voxel sizes match within 1e-5."""
    out = raw_header(written)
    ref = raw_header(reference)
    assert out.get_data_shape()[:3] == ref.get_data_shape()[:3]
    assert int(out["sform_code"]) == int(ref["sform_code"])
    assert int(out["qform_code"]) == int(ref["qform_code"])
    assert np.allclose(out.get_sform(), ref.get_sform(), atol=GEOMETRY_TOLERANCE)
    assert np.allclose(out.get_qform(), ref.get_qform(), atol=GEOMETRY_TOLERANCE)
    assert np.allclose(out.get_zooms()[:3], ref.get_zooms()[:3], atol=GEOMETRY_TOLERANCE)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def test_load_image_float32(make_flair: Callable[..., Path]) -> None:
    image = io.load_image(make_flair())
    assert image.get_data_dtype() == np.float32
    assert image.shape == FLAIR_SHAPE
    assert np.allclose(image.affine, flair_affine(), atol=GEOMETRY_TOLERANCE)


def test_load_image_keeps_codes(make_flair: Callable[..., Path]) -> None:
    image = io.load_image(make_flair())
    assert int(image.header["sform_code"]) == 2
    assert int(image.header["qform_code"]) == 1


def test_load_image_applies_scaling(tmp_path: Path) -> None:
    stored = np.arange(32 * 32 * 16, dtype=np.int16).reshape(32, 32, 16)
    path = write_nifti(
        tmp_path / "s.nii", stored, sform=np.eye(4), sform_code=1, slope=2.0, inter=5.0
    )
    image = io.load_image(path)
    assert np.array_equal(image.get_fdata(), stored * 2.0 + 5.0)


def test_plain_named_gz_warns(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "plain.nii", noise_volume((8, 8, 8)), sform=np.eye(4), sform_code=1
    )
    renamed = path.rename(tmp_path / "plain.nii.gz")
    with pytest.warns(io.InputImageWarning, match="not gzip-compressed"):
        image = io.load_image(renamed)
    assert image.shape == (8, 8, 8)


def test_gzip_named_nii_warns(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "c.nii.gz", noise_volume((8, 8, 8)), sform=np.eye(4), sform_code=1
    )
    renamed = path.rename(tmp_path / "c.nii")
    with pytest.warns(io.InputImageWarning, match="gzip-compressed but its name"):
        image = io.load_image(renamed)
    assert image.shape == (8, 8, 8)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_file_rejected(tmp_path: Path, name: str) -> None:
    path = write_nifti(tmp_path / name, noise_volume((16, 16, 8)), sform=np.eye(4), sform_code=1)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputImageError, match="file is truncated or corrupt"):
        io.load_image(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="file not found"):
        io.load_image(tmp_path / "absent.nii.gz")


def test_empty_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InputImageError, match="file is empty"):
        io.load_image(path)


def test_non_nifti_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii"
    path.write_bytes(b"subject,age\n" * 50)
    with pytest.raises(InputImageError, match="not a NIfTI-1 or NIfTI-2 file"):
        io.load_image(path)


def test_nrrd_rejected(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"NRRD0004\ntype: float\n" + b"\x00" * 400)
    with pytest.raises(InputImageError, match="NRRD"):
        io.load_image(path)


def test_nifti2_read(tmp_path: Path) -> None:
    path = tmp_path / "two.nii"
    affine = flair_affine()
    nib.save(nib.Nifti2Image(noise_volume((10, 12, 8)), affine), path)
    image = io.load_image(path)
    assert np.allclose(image.affine, affine, atol=GEOMETRY_TOLERANCE)


def test_rgb_rejected(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(InputImageError, match="give a scalar image"):
        io.load_image(path)


def test_singleton_4d_squeezed(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "one.nii.gz", noise_volume((32, 32, 16, 1)), sform=np.eye(4), sform_code=1
    )
    with pytest.warns(io.InputImageWarning, match="dropped the singleton axes"):
        image = io.load_image(path)
    assert image.shape == (32, 32, 16)


def test_singleton_4d_header_3d(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "one.nii.gz", noise_volume((32, 32, 16, 1)), sform=np.eye(4), sform_code=1
    )
    with pytest.warns(io.InputImageWarning):
        image = io.load_image(path)
    assert image.header.get_data_shape() == (32, 32, 16)


def test_real_4d_rejected(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "three.nii.gz", noise_volume((32, 32, 16, 3)), sform=np.eye(4), sform_code=1
    )
    with pytest.raises(InputImageError, match="4D image with 3 volumes; give one 3D volume"):
        io.load_image(path)


def test_2d_rejected(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "flat.nii", noise_volume((32, 32)), sform=np.eye(4), sform_code=1)
    with pytest.raises(InputImageError, match="give a 3D volume"):
        io.load_image(path)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def sheared_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[0, 1] = 0.15
    return affine


def valid_qform() -> np.ndarray:
    affine = np.diag([1.1, 1.2, 2.0, 1.0])
    affine[:3, 3] = (-20.0, 15.0, 7.5)
    return affine


def test_sheared_sform_rejected(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "s.nii.gz", noise_volume((32, 32, 16)), sform=sheared_affine(), sform_code=1
    )
    with pytest.raises(GeometryError, match="sform is sheared"):
        io.load_image(path)


def test_sheared_sform_suggests_qform(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "s.nii.gz",
        noise_volume((32, 32, 16)),
        sform=sheared_affine(),
        sform_code=1,
        qform=valid_qform(),
        qform_code=1,
    )
    with pytest.raises(GeometryError, match="--use-qform"):
        io.load_image(path)


def test_allow_qform_uses_qform(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_nifti(
        tmp_path / "s.nii.gz",
        noise_volume((32, 32, 16)),
        sform=sheared_affine(),
        sform_code=1,
        qform=valid_qform(),
        qform_code=1,
    )
    with caplog.at_level("WARNING", logger="wmhseg.io"):
        image = io.load_image(path, allow_qform=True)
    assert np.allclose(image.affine, valid_qform(), atol=GEOMETRY_TOLERANCE)
    assert "using the qform" in caplog.text


def test_allow_qform_without_qform(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "s.nii.gz", noise_volume((32, 32, 16)), sform=sheared_affine(), sform_code=1
    )
    with pytest.raises(GeometryError, match="qform is not set either"):
        io.load_image(path, allow_qform=True)


def test_no_transform_rejected(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "n.nii.gz", noise_volume((32, 32, 16)), zooms=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="no usable voxel-to-world transform"):
        io.load_image(path)


def test_qform_only_used(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "q.nii.gz", noise_volume((32, 32, 16)), qform=valid_qform(), qform_code=1
    )
    image = io.load_image(path)
    assert np.allclose(image.affine, valid_qform(), atol=GEOMETRY_TOLERANCE)


def test_oblique_sform_accepted(make_flair: Callable[..., Path]) -> None:
    # A rotated affine is rigid, not sheared.
    assert io.is_orthogonal(flair_affine())


# --------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------


def test_nan_inf_replaced(simple_image: Callable[..., Path]) -> None:
    data = noise_volume((32, 32, 16))
    data.flat[[3, 50, 900, 1000, 4000]] = np.nan
    data.flat[[7, 8]] = np.inf
    with pytest.warns(io.InputImageWarning, match="replaced 5 NaN and 2 Inf voxels with 0"):
        image = io.load_image(simple_image(data=data))
    assert np.all(np.isfinite(image.get_fdata()))


@pytest.mark.parametrize("value", [0.0, 100.0])
def test_constant_image_rejected(simple_image: Callable[..., Path], value: float) -> None:
    path = simple_image(data=np.full((32, 32, 16), value, dtype=np.float32))
    with pytest.raises(InputImageError, match="image has zero intensity variance"):
        io.load_image(path)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

SCALED_SLOPE = 0.3333333
SCALED_INTER = 0.5


def scaled_label_file(tmp_path: Path, labels: np.ndarray) -> Path:
    """Store labels as int16 with slope 0.3333333 and intercept 0.5, rounded like a converter."""
    stored = np.rint((labels - SCALED_INTER) / SCALED_SLOPE).astype(np.int16)
    return write_nifti(
        tmp_path / "label.nii.gz",
        stored,
        sform=np.eye(4),
        sform_code=1,
        slope=SCALED_SLOPE,
        inter=SCALED_INTER,
    )


def example_labels() -> np.ndarray:
    labels = np.zeros((16, 16, 8), dtype=np.int16)
    labels[4:8, 4:8, 2:5] = 1
    labels[10:12, 10:13, 5] = 2
    return labels


def test_scaled_label_rounded(tmp_path: Path) -> None:
    loaded = io.load_label(scaled_label_file(tmp_path, example_labels()))
    assert np.array_equal(loaded, example_labels())


def test_scaled_label_uint8(tmp_path: Path) -> None:
    assert io.load_label(scaled_label_file(tmp_path, example_labels())).dtype == np.uint8


def test_label_range_checked(tmp_path: Path) -> None:
    labels = example_labels()
    labels[0, 0, 0] = 3
    with pytest.raises(InputImageError, match="label values range from 0 to 3"):
        io.load_label(scaled_label_file(tmp_path, labels))


def test_probability_map_not_label(tmp_path: Path) -> None:
    probabilities = np.random.default_rng(1).uniform(0, 1, (16, 16, 8)).astype(np.float32)
    path = write_nifti(tmp_path / "p.nii.gz", probabilities, sform=np.eye(4), sform_code=1)
    with pytest.raises(InputImageError, match="not integers"):
        io.load_label(path)


def test_label_grid_checked(tmp_path: Path, simple_image: Callable[..., Path]) -> None:
    reference = io.load_image(simple_image())
    with pytest.raises(InputImageError, match="shape"):
        io.load_label(scaled_label_file(tmp_path, example_labels()), reference)


# --------------------------------------------------------------------------------------------
# Writing: geometry
# --------------------------------------------------------------------------------------------


def test_save_image_geometry(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    source = make_flair()
    image = io.load_image(source)
    written = io.save_image(image.get_fdata() * 2, image, tmp_path / "out" / "scaled.nii.gz")
    assert_same_geometry(written, source)


def test_save_mask_geometry(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    source = make_flair()
    image = io.load_image(source)
    written = io.save_mask(image.get_fdata() > 100, image, tmp_path / "mask.nii.gz")
    assert_same_geometry(written, source)


def test_save_label_geometry(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    source = make_flair()
    image = io.load_image(source)
    labels = np.zeros(FLAIR_SHAPE, dtype=np.int64)
    labels[5:9, 5:9, 5:9] = 2
    written = io.save_label(labels, image, tmp_path / "wmh.nii.gz")
    assert_same_geometry(written, source)


def test_saved_voxel_sizes(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    written = io.save_mask(np.zeros(FLAIR_SHAPE, bool), image, tmp_path / "m.nii.gz")
    assert np.allclose(raw_header(written).get_zooms(), FLAIR_ZOOMS, atol=GEOMETRY_TOLERANCE)


def test_sheared_header_kept_on_output(tmp_path: Path) -> None:
    # With --use-qform the output carries the input's own header, sheared sform included.
    source = write_nifti(
        tmp_path / "s.nii.gz",
        noise_volume((32, 32, 16)),
        sform=sheared_affine(),
        sform_code=1,
        qform=valid_qform(),
        qform_code=1,
    )
    image = io.load_image(source, allow_qform=True)
    written = io.save_mask(np.zeros((32, 32, 16), bool), image, tmp_path / "m.nii.gz")
    assert_same_geometry(written, source)


def test_stale_header_uses_affine(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    moved = flair_affine()
    moved[:3, 3] += (5.0, -3.0, 2.0)
    reference = nib.Nifti1Image(image.get_fdata(), moved, image.header)
    written = io.save_mask(np.zeros(FLAIR_SHAPE, bool), reference, tmp_path / "m.nii.gz")
    assert np.allclose(raw_header(written).get_best_affine(), moved, atol=GEOMETRY_TOLERANCE)


def test_in_memory_reference_geometry(tmp_path: Path) -> None:
    affine = flair_affine()
    reference = nib.Nifti1Image(noise_volume(FLAIR_SHAPE), affine)
    written = io.save_image(noise_volume(FLAIR_SHAPE), reference, tmp_path / "i.nii.gz")
    assert np.allclose(nib.load(written).affine, affine, atol=GEOMETRY_TOLERANCE)


# --------------------------------------------------------------------------------------------
# Writing: data types and values
# --------------------------------------------------------------------------------------------


def test_int64_mask_header_uint8(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    prediction = np.zeros(FLAIR_SHAPE, dtype=np.int64)
    prediction[10:20, 10:20, 10:12] = 1
    header = raw_header(io.save_mask(prediction, image, tmp_path / "m.nii.gz"))
    assert int(header["datatype"]) == 2
    assert int(header["bitpix"]) == 8
    assert float(header["scl_slope"]) == 1.0
    assert float(header["scl_inter"]) == 0.0


def test_saved_mask_values(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    prediction = np.zeros(FLAIR_SHAPE, dtype=np.int64)
    prediction[10:20, 10:20, 10:12] = 1
    written = io.save_mask(prediction, image, tmp_path / "m.nii.gz")
    values = np.asarray(nib.load(written).dataobj)
    assert set(np.unique(values).tolist()) == {0, 1}


def test_mask_other_values_rejected(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    labels = np.zeros(FLAIR_SHAPE, dtype=np.int64)
    labels[0, 0, 0] = 2
    with pytest.raises(ValueError, match="only 0 and 1"):
        io.save_mask(labels, image, tmp_path / "m.nii.gz")


def test_label_header_unit_scaling(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    labels = np.zeros(FLAIR_SHAPE, dtype=np.float64)
    labels[1, 1, 1] = 2
    header = raw_header(io.save_label(labels, image, tmp_path / "l.nii.gz"))
    assert int(header["datatype"]) == 2
    assert float(header["scl_slope"]) == 1.0
    assert float(header["scl_inter"]) == 0.0


def test_save_image_rejects_nan(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    data = image.get_fdata()
    data[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        io.save_image(data, image, tmp_path / "i.nii.gz")


def test_saved_image_float32(make_flair: Callable[..., Path], tmp_path: Path) -> None:
    image = io.load_image(make_flair())
    header = raw_header(io.save_image(image.get_fdata(), image, tmp_path / "i.nii"))
    assert header.get_data_dtype() == np.float32


# --------------------------------------------------------------------------------------------
# Writing: files and folders
# --------------------------------------------------------------------------------------------


def test_existing_output_rejected(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(OutputError, match="pass --overwrite"):
        io.write_bytes_atomic(target, b"new")
    assert target.read_text() == "old"


def test_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    io.write_bytes_atomic(target, b"new", overwrite=True)
    assert target.read_text() == "new"


def test_input_never_replaced(simple_image: Callable[..., Path]) -> None:
    source = simple_image()
    with pytest.raises(OutputError, match="replace an input"):
        io.check_can_write(source, overwrite=True, inputs=[source])


def test_output_folder_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder"):
        io.write_bytes_atomic(tmp_path, b"x", overwrite=True)


def test_missing_parent_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "nested" / "result.txt"
    io.write_bytes_atomic(target, b"x")
    assert target.read_bytes() == b"x"


def test_written_file_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        target = io.write_bytes_atomic(tmp_path / "r.txt", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failed_write_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.txt"
    target.write_text("old")

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OutputError, match="No space left on device"):
        io.write_bytes_atomic(target, b"new", overwrite=True)
    assert target.read_text() == "old"


def test_failed_write_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.write_bytes_atomic(tmp_path / "r.txt", b"new")
    assert list(tmp_path.iterdir()) == []


def test_prepare_output_dir_creates(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert io.prepare_output_dir(target).is_dir()


def test_prepare_output_dir_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        io.prepare_output_dir(target)


def test_check_output_dir_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert io.check_output_dir(target) == tmp_path
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------------------------
# Real scans
# --------------------------------------------------------------------------------------------


def real_scans(shared_data: Path) -> list[Path]:
    return sorted(p for p in shared_data.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz")))


GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
)


def test_real_scans_round_trip(shared_data: Path, tmp_path: Path) -> None:
    scans = real_scans(shared_data)
    assert scans, f"no NIfTI files under {shared_data}"
    for index, scan in enumerate(scans):
        image = io.load_image(scan)
        written = io.save_image(image.get_fdata(), image, tmp_path / f"{index}.nii")
        original, copy = raw_header(scan), raw_header(written)
        assert copy.get_data_shape() == original.get_data_shape(), scan
        for field in GEOMETRY_FIELDS:
            assert np.array_equal(copy[field], original[field]), f"{scan}: {field}"
        assert np.array_equal(copy["pixdim"][:4], original["pixdim"][:4]), scan
        written.unlink()
