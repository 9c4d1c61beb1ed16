"""Experiment cells on synthetic subjects: held-out slices, test counts, a tiny real experiment."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wmhseg import experiment, experiment_training
from wmhseg.experiment_training import DomainCounts, held_out_slices, prepare_held_out_data

SHAPE = (48, 48, 40)


def _write_subject(folder: Path, seed: int) -> None:
    """Write a WhiteStripe-like subject: brain ~N(0, 1), WMH bright on FLAIR, dark on T1."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS, 1 mm, like MNI images
    brain = np.zeros(SHAPE, dtype=bool)
    brain[6:42, 6:42, 4:36] = True
    label = np.zeros(SHAPE, dtype=np.uint8)
    for _ in range(6):
        x, y, z = rng.integers(12, 36), rng.integers(12, 36), rng.integers(8, 32)
        label[x - 2 : x + 2, y - 2 : y + 2, z - 1 : z + 2] = 1
    noise = rng.normal(0.0, 0.3, SHAPE).astype(np.float32)
    flair = np.where(brain, noise + 4.0 * label, 0.0).astype(np.float32)
    t1 = np.where(brain, noise - 1.5 * label, 0.0).astype(np.float32)
    for name, data in (("FLAIR", flair), ("T1", t1)):
        nib.save(nib.Nifti1Image(data, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "wmh.nii.gz")


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("subjects")
    for i in range(3):
        _write_subject(root / f"sub{i}", seed=i)
    return root


def test_find_subjects_synthetic(synthetic_data: Path) -> None:
    assert experiment.find_subjects(synthetic_data) == ["sub0", "sub1", "sub2"]


def test_held_out_blocks() -> None:
    brain = np.zeros((4, 4, 60), dtype=bool)
    brain[:, :, 10:50] = True

    held_out = held_out_slices(brain, axis=2)

    # 40 brain slices = 5 blocks of 8; the middle block (slices 26..33) is held out.
    assert held_out.sum() == 8
    assert list(np.flatnonzero(held_out)) == list(range(26, 34))


def test_cell_data_held_out_slices(synthetic_data: Path, tmp_path: Path) -> None:
    train, validation = prepare_held_out_data(
        synthetic_data, tmp_path / "data", train=("sub0",), flair_subjects=("sub0",)
    )

    assert train == ("sub0",)
    assert validation == ("sub0~val",)
    train_flair = np.asarray(nib.load(tmp_path / "data" / "sub0" / "FLAIR.nii").dataobj)
    val_flair = np.asarray(nib.load(tmp_path / "data" / "sub0~val" / "FLAIR.nii").dataobj)
    train_slices = set(np.flatnonzero(np.abs(train_flair).sum(axis=(0, 1)) > 0))
    val_slices = set(np.flatnonzero(np.abs(val_flair).sum(axis=(0, 1)) > 0))
    assert not train_slices & val_slices
    assert len(train_slices | val_slices) == 32
    assert len(val_slices) == 8


def test_held_out_data_drops_flair(synthetic_data: Path, tmp_path: Path) -> None:
    prepare_held_out_data(synthetic_data, tmp_path / "data", train=("sub1",), flair_subjects=())

    assert sorted(p.name for p in (tmp_path / "data" / "sub1").iterdir()) == ["T1.nii", "wmh.nii"]
    assert (tmp_path / "data" / "sub1~val" / "FLAIR.nii").is_file()


def test_domain_counts_ignore_label_two() -> None:
    counts = DomainCounts()
    prediction = np.array([1, 1, 0, 1, 0], dtype=bool)
    label = np.array([1, 0, 1, 2, 0], dtype=np.uint8)

    counts.add(prediction, label)

    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 1)


@pytest.mark.slow
def test_tiny_experiment_end_to_end(synthetic_data: Path, tmp_path: Path) -> None:
    plan = experiment.make_plan(
        synthetic_data,
        subjects=experiment.find_subjects(synthetic_data),
        n_folds=2,
        repeats=1,
        methods=["F50-T50", "greedy-T25"],
        models=["lw"],
        max_epochs=2,
        train_options=experiment_training.TINY_TRAIN_OPTIONS,
    )

    records = experiment.run_experiment(plan, tmp_path / "out")
    outputs = experiment.write_report(records, tmp_path / "out")

    assert len(records) == 4
    for record in records:
        assert 0.0 <= record.dsc_flair <= 1.0
        assert 0.0 <= record.dsc_t1 <= 1.0
        assert record.epochs >= 1
    greedy = [r for r in records if r.method == "greedy-T25"]
    assert all(len(r.lambda_trace) > 0 for r in greedy)
    with open(tmp_path / "out" / "runs.csv") as table:
        assert len(list(csv.DictReader(table))) == 4
    assert (tmp_path / "out" / "lambda.png").is_file()
    assert [r.method for r in outputs.rows] == ["F50-T50", "greedy-T25"]

    # A second call finds every run finished and trains nothing.
    again = experiment.run_experiment(plan, tmp_path / "out", runner=_fail_runner)
    assert [r.dsc_flair for r in again] == [r.dsc_flair for r in records]


def _fail_runner(cell: experiment.Cell, plan: experiment.ExperimentPlan, work_dir: Path) -> None:
    raise AssertionError(f"finished run {cell.run_id} was trained again")
