"""Tests of the preprocessing stages and the `wmhseg preprocess` command on synthetic volumes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import Result

from wmhseg.errors import PreprocessingError
from wmhseg.preprocess import n4, registration, skullstrip, whitestripe
from wmhseg.preprocess.discovery import find_subjects
from wmhseg.preprocess.pipeline import check_skip, preprocess_scan


def _ellipsoid(
    shape: tuple[int, int, int], radii: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    grid = np.indices(shape, dtype=np.float64)
    centre = [(size - 1) / 2 for size in shape]
    distance = sum(((grid[axis] - centre[axis]) / radii[axis]) ** 2 for axis in range(3))
    return np.asarray(distance <= 1.0)


def _flair_phantom(
    seed: int = 0,
) -> tuple[nib.Nifti1Image, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return a 48×48×24 FLAIR phantom with scalp shell, its brain mask and white matter.

    Grey matter outnumbers white matter, so the brain histogram's largest peak is grey matter.
    """
    rng = np.random.default_rng(seed)
    shape = (48, 48, 24)
    head = _ellipsoid(shape, (22, 22, 11))
    brain = _ellipsoid(shape, (17, 17, 8))
    white = _ellipsoid(shape, (11, 11, 5))
    ventricles = _ellipsoid(shape, (4, 4, 2))
    data = rng.normal(5.0, 2.0, shape)  # air
    data[head & ~brain] = rng.normal(900.0, 40.0, int((head & ~brain).sum()))  # bright scalp
    data[brain] = rng.normal(320.0, 12.0, int(brain.sum()))  # grey matter
    data[white] = rng.normal(260.0, 10.0, int(white.sum()))  # white matter
    data[ventricles] = rng.normal(90.0, 10.0, int(ventricles.sum()))  # CSF, dark on FLAIR
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    return nib.Nifti1Image(data.astype(np.float32), affine), brain, white


def test_whitestripe_without_mask_raises() -> None:
    image, _, _ = _flair_phantom()
    with pytest.raises(PreprocessingError, match="needs a brain mask"):
        whitestripe.whitestripe_normalize(image, None, modality="flair")


def test_whitestripe_phantom_white_matter_centred() -> None:
    image, brain, white = _flair_phantom()
    normalized = np.asarray(
        whitestripe.whitestripe_normalize(image, brain, modality="flair").dataobj
    )
    core = white & (np.abs(np.asarray(image.dataobj) - 260.0) < 30.0)
    assert abs(float(np.median(normalized[core]))) < 0.5


def test_whitestripe_t1_phantom_centred() -> None:
    flair, brain, white = _flair_phantom()
    rng = np.random.default_rng(1)
    data = np.asarray(flair.dataobj).copy()
    grey = brain & ~white & (data > 200.0)
    data[grey] = rng.normal(300.0, 12.0, int(grey.sum()))
    data[white & (data > 200.0)] += 140.0  # white matter at 400, brightest tissue on T1
    image = nib.Nifti1Image(data, flair.affine)
    normalized = np.asarray(whitestripe.whitestripe_normalize(image, brain, modality="t1").dataobj)
    core = white & (np.abs(data - 400.0) < 30.0)
    # The phantom's ~2000 white-matter voxels give a KDE mode only to about 0.3 white-matter
    # s.d.s (1 stripe s.d. here), looser than on a real brain's ~300 000.
    assert abs(float(np.median(normalized[core]))) < 1.0


def test_kde_mode_finds_peak_of_skewed_sample() -> None:
    rng = np.random.default_rng(0)
    # A white-matter-like peak at 3 with a broader grey-matter shoulder above it.
    values = np.concatenate([rng.normal(3.0, 1.0, 200_000), rng.normal(6.0, 2.0, 80_000)])
    assert abs(whitestripe.kde_mode(values) - 3.0) < 0.2


def test_kde_mode_uses_every_value() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 1.0, 300_000)
    # Deterministic: no subsample is drawn, so a reversed copy gives the same peak.
    assert whitestripe.kde_mode(values) == whitestripe.kde_mode(values[::-1])


def test_white_matter_estimate_finds_brightest_tissue() -> None:
    flair, brain, white = _flair_phantom()
    data = np.asarray(flair.dataobj).copy()
    data[white] += 160.0  # white matter at 420, brightest tissue on T1
    estimate = whitestripe.white_matter_estimate(data, brain, spacing=(1.0, 1.0, 2.0))
    inside = float((estimate & white).sum()) / float(estimate.sum())
    assert estimate.sum() > 1000
    assert inside > 0.95


def test_whitestripe_centres_inside_given_white_matter() -> None:
    image, brain, white = _flair_phantom()
    # A mask of only the brighter half of the white matter moves the mode up, so the result
    # must follow the mask it is given.
    data = np.asarray(image.dataobj)
    upper = white & (data > 260.0)
    for mask in (white, upper):
        normalized = np.asarray(
            whitestripe.whitestripe_normalize(
                image, brain, modality="flair", white_matter=mask
            ).dataobj
        )
        assert abs(whitestripe.kde_mode(normalized[mask])) < 0.2


def test_whitestripe_rejects_tiny_white_matter() -> None:
    image, brain, _ = _flair_phantom()
    white = np.zeros(brain.shape, dtype=bool)
    white[24, 24, 12] = True
    with pytest.raises(PreprocessingError, match="white-matter estimate has 1 voxels"):
        whitestripe.whitestripe_normalize(image, brain, modality="flair", white_matter=white)


def test_whitestripe_rejects_white_matter_of_other_shape() -> None:
    image, brain, _ = _flair_phantom()
    with pytest.raises(ValueError, match="white-matter mask shape"):
        whitestripe.whitestripe_normalize(
            image, brain, modality="flair", white_matter=np.ones((4, 4, 4), dtype=bool)
        )


def test_whitestripe_phantom_zero_outside_brain() -> None:
    image, brain, _ = _flair_phantom()
    normalized = np.asarray(
        whitestripe.whitestripe_normalize(image, brain, modality="flair").dataobj
    )
    assert np.all(normalized[~brain] == 0.0)


def test_whitestripe_keeps_grid() -> None:
    image, brain, _ = _flair_phantom()
    normalized = whitestripe.whitestripe_normalize(image, brain, modality="flair")
    assert np.allclose(normalized.affine, image.affine)


def test_brain_mask_check_rejects_small_mask() -> None:
    image = nib.Nifti1Image(np.ones((32, 32, 16), dtype=np.float32), np.eye(4))
    with pytest.raises(PreprocessingError, match="16384 voxels"):
        skullstrip.check_brain_mask(np.ones((32, 32, 16), dtype=bool), image, source="noise.nii.gz")


def test_skullstrip_noise_image_raises() -> None:
    noise = np.random.default_rng(3).uniform(0, 100, (32, 32, 16)).astype(np.float32)
    image = nib.Nifti1Image(noise, np.eye(4))
    with pytest.raises(PreprocessingError, match=r"noise\.nii\.gz: brain mask has only \d+ voxels"):
        skullstrip.compute_brain_mask(image, modality="flair", source="noise.nii.gz")


def test_looks_skull_stripped_stripped_brain() -> None:
    shape = (96, 96, 72)
    brain = _ellipsoid(shape, (40, 45, 30))
    data = np.where(brain, 300.0, 0.0).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0]))
    # A mask 2 voxels (3 mm) inside the stripped edge stands for deepbet falling short of it.
    inner = _ellipsoid(shape, (38, 43, 28))
    assert skullstrip.looks_skull_stripped(image, brain_mask=inner)


def test_looks_skull_stripped_zeroed_air_head() -> None:
    shape = (96, 96, 72)
    brain = _ellipsoid(shape, (36, 38, 26))
    data = np.where(_ellipsoid(shape, (45, 47, 34)), 900.0, 0.0)  # scalp, air exactly 0
    data[brain] = 300.0
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([1.5, 1.5, 1.5, 1.0]))
    assert not skullstrip.looks_skull_stripped(image, brain_mask=brain)


def test_looks_skull_stripped_noisy_head() -> None:
    shape = (96, 96, 72)
    rng = np.random.default_rng(1)
    data = rng.normal(10.0, 3.0, shape) + np.where(_ellipsoid(shape, (45, 47, 34)), 300.0, 0.0)
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert not skullstrip.looks_skull_stripped(image)


def test_too_large_to_be_stripped_noisy_head() -> None:
    # 96 × 96 × 72 voxels of 8 mm³, all non-zero, are 5308 mL: no brain is that large.
    data = np.random.default_rng(1).normal(10.0, 3.0, (96, 96, 72)).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert skullstrip.too_large_to_be_stripped(image)


def test_fraction_inside_brain_uses_mm() -> None:
    # Non-zero voxels 2 and 6 voxels beyond the mask along z, at 1 mm in-plane and 2 mm slices:
    # 4 mm and 12 mm away, so with a 4 mm margin only the first counts.
    data = np.zeros((20, 20, 20), dtype=np.float32)
    mask = np.zeros(data.shape, dtype=bool)
    mask[8:12, 8:12, 8:12] = True
    data[mask] = 1.0
    data[10, 10, 13] = 1.0
    data[10, 10, 17] = 1.0
    image = nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert skullstrip.fraction_inside_brain(image, mask) == pytest.approx(65 / 66)


def test_n4_reduces_bias() -> None:
    shape = (40, 40, 20)
    head = _ellipsoid(shape, (18, 18, 9))
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    bias = np.exp(0.4 * x) * np.ones(shape)
    data = np.where(head, 500.0 * bias, 1.0).astype(np.float32)
    corrected = n4.correct_bias_field(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])))
    values = np.asarray(corrected.dataobj)[head]
    before = float(np.std(data[head]) / np.mean(data[head]))
    assert float(np.std(values) / np.mean(values)) < 0.5 * before


def test_registration_nmi_improves() -> None:
    shape = (40, 40, 24)
    data = np.where(_ellipsoid(shape, (15, 17, 9)), 200.0, 10.0) + np.where(
        _ellipsoid(shape, (6, 5, 4)), 200.0, 0.0
    )
    fixed = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    affine = fixed.affine.copy()
    affine[:3, 3] += (4.0, 0.0, 0.0)
    result = registration.register_rigid(nib.Nifti1Image(data.astype(np.float32), affine), fixed)
    assert result.nmi_after > result.nmi_before


def test_check_skip_rejects_unknown_stage() -> None:
    with pytest.raises(PreprocessingError, match="unknown stage"):
        check_skip({"register", "denoise"})


def test_preprocess_scan_skips_stages() -> None:
    image, brain, _ = _flair_phantom()
    stripped = nib.Nifti1Image(
        np.where(brain, np.asarray(image.dataobj), 0).astype(np.float32), image.affine
    )
    # At 2 × 2 × 4 mm voxels the phantom brain is about 155 mL, above the minimum brain volume.
    stripped.header.set_zooms((2.0, 2.0, 4.0))
    result = preprocess_scan(stripped, modality="flair", skip=frozenset({"n4", "skullstrip"}))
    assert result.stages_run == ["whitestripe"]


def test_discovery_plain_layout(tmp_path: Path) -> None:
    for name, files in {
        "s1": ["T1.nii.gz", "FLAIR.nii.gz", "wmh.nii.gz"],
        "s2": ["FLAIR.nii.gz"],
    }.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).touch()
    subjects = find_subjects(tmp_path)
    assert [
        (s.subject, s.t1 is not None, s.flair is not None, s.wmh is not None) for s in subjects
    ] == [
        ("s1", True, True, True),
        ("s2", False, True, False),
    ]


def test_discovery_bids_sessions(tmp_path: Path) -> None:
    anat = tmp_path / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_ses-1_T1w.nii.gz").touch()
    (anat / "sub-01_ses-1_FLAIR.nii.gz").touch()
    labels = tmp_path / "derivatives" / "manual" / "sub-01" / "ses-1" / "anat"
    labels.mkdir(parents=True)
    (labels / "sub-01_ses-1_FLAIR_mask.nii.gz").touch()
    [subject] = find_subjects(tmp_path)
    assert subject.subject == "sub-01_ses-1"
    assert subject.wmh is not None


def test_cli_unknown_skip_exits_nonzero(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "in" / "s1").mkdir(parents=True)
    (tmp_path / "in" / "s1" / "FLAIR.nii.gz").touch()
    result = run_cli("preprocess", tmp_path / "in", "--out", tmp_path / "out", "--skip", "denoise")
    assert result.exit_code != 0


def test_cli_failure_summary(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    folder = tmp_path / "in" / "noise"
    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).uniform(0, 100, (32, 32, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), folder / "FLAIR.nii.gz")
    result = run_cli("preprocess", tmp_path / "in", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "Failed subjects" in result.output
    assert "brain mask has only" in result.output


@pytest.mark.slow
def test_registration_matches_dataset_transform(shared_data: Path) -> None:
    import SimpleITK as sitk

    from wmhseg import convert, io

    folder = shared_data / "open_ms_data_longitudinal_raw" / "patient01"
    t1 = io.load_image(folder / "study1_T1W.nii.gz")
    flair = io.load_image(folder / "study1_FLAIR.nii.gz")
    result = registration.register_rigid(t1, flair)
    reference = registration.load_transform(folder / "study1_T1W_intrastudy_to_FLAIR.txt")
    flair_itk = convert.nib_to_sitk(flair)
    head = sitk.GetArrayFromImage(sitk.OtsuThreshold(flair_itk, 0, 1, 128))
    indices = np.argwhere(head[::2, ::8, ::8])[:, ::-1] * np.array([8, 8, 2])
    points = np.array(
        [flair_itk.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in indices]
    )
    assert registration.mean_displacement_mm(result.transform, reference, points) < 1.0


@pytest.mark.slow
def test_skullstrip_dice_hypermapp3r(shared_data: Path) -> None:
    from wmhseg import io

    folder = shared_data / "hypermapp3r_test_case"
    image = io.load_image(folder / "t1.nii.gz")
    truth = io.load_label(folder / "brainmask.nii.gz", max_label=1) > 0
    mask = skullstrip.compute_brain_mask(image, modality="t1")
    dice = 2 * np.sum(mask & truth) / (np.sum(mask) + np.sum(truth))
    assert dice >= 0.95


def test_subject_label_carried_to_flair_grid(tmp_path: Path) -> None:
    from wmhseg import io
    from wmhseg.preprocess.pipeline import SubjectInputs, preprocess_subject

    image, brain, _ = _flair_phantom()
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    stripped = np.where(brain, np.asarray(image.dataobj), 0).astype(np.float32)
    nib.save(nib.Nifti1Image(stripped, affine), tmp_path / "FLAIR.nii.gz")
    labels = np.zeros(stripped.shape, dtype=np.uint8)
    labels[20:24, 20:24, 10:12] = 1
    labels[30:32, 20:22, 12:14] = 2
    # The label file stores the same world positions on a grid flipped along x.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = stripped.shape[0] - 1
    nib.save(nib.Nifti1Image(labels[::-1], affine @ flip), tmp_path / "wmh.nii.gz")

    inputs = SubjectInputs("s1", flair=tmp_path / "FLAIR.nii.gz", wmh=tmp_path / "wmh.nii.gz")
    result = preprocess_subject(
        inputs, tmp_path / "out", skip=frozenset({"n4", "skullstrip"}), write_qc=False
    )
    carried = io.load_label(result.outputs["wmh.nii.gz"])
    assert np.array_equal(carried, labels)
