"""Tests of subject discovery, splitting and slice sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_training_subjects

from wmhseg import data
from wmhseg.errors import TrainingError


def test_find_subjects_plain_layout(training_data: Path) -> None:
    subjects = data.find_subjects(training_data)
    assert [s.name for s in subjects] == ["sub00", "sub01"]
    assert set(subjects[0].images) == {"FLAIR", "T1"}


def test_find_subjects_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no subject folders"):
        data.find_subjects(tmp_path)


def test_load_subject_brain_from_nonzero(training_data: Path) -> None:
    volumes = data.load_subject(data.find_subjects(training_data)[0])
    assert volumes.brain.shape == volumes.images["FLAIR"].shape
    assert volumes.brain.any()
    assert volumes.lesion_slices == volumes.brain_slices or volumes.lesion_slices


def test_load_subject_without_label(training_data: Path) -> None:
    (training_data / "sub00" / "wmh.nii.gz").unlink()
    with pytest.raises(TrainingError, match="label"):
        data.load_subject(data.find_subjects(training_data)[0])


def test_split_by_subject_disjoint() -> None:
    names = [f"s{i}" for i in range(10)]
    training, validation = data.split_subjects(names, validation_fraction=0.2, seed=3)
    assert len(validation) == 2
    assert not set(training) & set(validation)
    assert sorted(training + validation) == sorted(names)


def test_split_explicit_unknown_subject() -> None:
    with pytest.raises(TrainingError, match="not found"):
        data.split_subjects(["a", "b"], validation_subjects=["c"])


def test_keep_flair_subjects_drops_flair(tmp_path: Path) -> None:
    root = write_training_subjects(tmp_path / "d", subjects=4)
    subjects = [data.load_subject(f) for f in data.find_subjects(root)]
    kept = data.keep_flair_subjects(subjects, 1, seed=0)
    assert len(kept) == 1
    assert sum("FLAIR" in s.images for s in subjects) == 1
    assert all("T1" in s.images for s in subjects)


def _dataset(root: Path, **options: object) -> data.SliceDataset:
    subjects = [data.load_subject(f) for f in data.find_subjects(root)]
    return data.SliceDataset(subjects, options=data.SamplingOptions(**options))  # type: ignore[arg-type]


def test_batch_has_every_domain(training_data: Path) -> None:
    batches = _dataset(training_data, crop_size=(16, 16)).sample_batch((0, 0), 3)
    assert len(batches) == 2
    for images, labels in batches:
        assert images.shape == (3, 1, 16, 16)
        assert labels.shape == (3, 1, 16, 16)


def test_batch_reproducible(training_data: Path) -> None:
    dataset = _dataset(training_data, crop_size=(16, 16))
    first = dataset.sample_batch((4, 9), 2)
    second = dataset.sample_batch((4, 9), 2)
    for (a, b), (c, d) in zip(first, second, strict=True):
        assert np.array_equal(a.numpy(), c.numpy())
        assert np.array_equal(b.numpy(), d.numpy())


def test_batch_labels_stay_binary(training_data: Path) -> None:
    batches = _dataset(training_data, crop_size=(16, 16)).sample_batch((1, 2), 4)
    for _, labels in batches:
        assert set(np.unique(labels.numpy())) <= {0.0, 1.0}


def test_lesion_sampling_centres_on_wmh(training_data: Path) -> None:
    dataset = _dataset(training_data, crop_size=(4, 4), lesion_fraction=1.0, augment=False)
    _, labels = dataset.sample_batch((0, 0), 4)[0]
    assert all(float(labels[i].sum()) > 0 for i in range(4))


def test_validation_slices_padded(training_data: Path) -> None:
    subject = data.load_subject(data.find_subjects(training_data)[0])
    images, labels = data.validation_slices(subject, "T1", size_divisor=8)
    assert images.shape[-2] % 8 == 0
    assert images.shape[-1] % 8 == 0
    assert images.shape == labels.shape


def test_crop_slice_pads_outside() -> None:
    array = np.ones((4, 4), dtype=np.float32)
    crop = data.crop_slice(array, (0, 0), (4, 4))
    assert float(crop.sum()) == 4.0
