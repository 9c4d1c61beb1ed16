"""Training and scoring of one experiment cell, on top of :mod:`wmhseg.training`.

A cell passes its fold's subjects to :class:`wmhseg.training.TrainConfig` by name
(``train_subjects``, ``validation_subjects``, and ``flair_subjects`` for reduced-FLAIR setups).
When a fold has no validation subjects (2 folds, e.g. 2 subjects in all), each training subject
is split by axial slices instead: blocks of :data:`HELD_OUT_BLOCK` adjacent slices, every
:data:`HELD_OUT_EVERY`-th block held out, are written to the cell's own data folder as a
validation pseudo-subject ``<subject>~val`` and zeroed in the training copy. Zeroed slices fall
outside the brain (the non-zero voxels), so training never draws them. Whole blocks keep the
strongly correlated neighbours of a validation slice out of training.

Test Dice pools true positives, false positives and false negatives over all test subjects per
domain, on the network grid, with the prediction limited to the brain and label 2 ignored.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

from wmhseg import data, io
from wmhseg.data import load_brain_mask
from wmhseg.errors import TrainingError
from wmhseg.experiment import Cell, ExperimentPlan, RunRecord, dice_from_counts
from wmhseg.models import size_divisor

if TYPE_CHECKING:
    from wmhseg.training import TrainConfig

logger = logging.getLogger(__name__)

# Domain names of wmhseg.data and the experiment's own keys.
DOMAIN_FILES = {"FLAIR": "FLAIR.nii.gz", "T1": "T1.nii.gz"}
LABEL_FILE = "wmh.nii.gz"
BRAIN_MASK_FILE = "brain_mask.nii.gz"

# Held-out validation slices when a fold has no validation subjects: 1 block of 8 adjacent
# axial slices in every 5, about 20 % of the slices. (The reference validates on 4 of the 16
# non-test subjects, 25 %.)
HELD_OUT_BLOCK = 8
HELD_OUT_EVERY = 5
VALIDATION_SUFFIX = "~val"


@dataclass(frozen=True)
class SubjectPaths:
    """Image files by domain (``FLAIR``, ``T1``), label and optional brain mask of a subject."""

    name: str
    folder: Path
    images: dict[str, Path]
    label: Path
    brain_mask: Path | None


def subject_paths(data_dir: Path, name: str) -> SubjectPaths:
    """Locate a subject's files in ``<data_dir>/<name>`` (or its ``pre/`` folder)."""
    folder = Path(data_dir) / name
    images = {}
    for domain, file_name in DOMAIN_FILES.items():
        for candidate in (folder / file_name, folder / "pre" / file_name):
            if candidate.is_file():
                images[domain] = candidate
                break
    label = folder / LABEL_FILE
    if not label.is_file():
        raise TrainingError(f"subject {name}: {label} not found; every subject needs a WMH label.")
    mask = folder / BRAIN_MASK_FILE
    return SubjectPaths(name, folder, images, label, mask if mask.is_file() else None)


# --------------------------------------------------------------------------------------------
# The cell's data folder
# --------------------------------------------------------------------------------------------


def axial_axis(affine: npt.ArrayLike) -> int:
    """Return the voxel axis that runs most closely along the superior (RAS z) direction."""
    return int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[2, :3])))


def held_out_slices(brain: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    """Return a mask over the slices of ``axis``: True for validation slices.

    Brain slices are cut into blocks of :data:`HELD_OUT_BLOCK`; the block in the middle of every
    run of :data:`HELD_OUT_EVERY` blocks is held out.
    """
    other = tuple(a for a in range(3) if a != axis)
    slices = np.flatnonzero(brain.any(axis=other))
    held_out = np.zeros(brain.shape[axis], dtype=bool)
    for position, index in enumerate(slices):
        block = position // HELD_OUT_BLOCK
        if block % HELD_OUT_EVERY == HELD_OUT_EVERY // 2:
            held_out[index] = True
    return held_out


def _save_like(data: npt.NDArray[Any], reference: nib.Nifti1Image, path: Path, dtype: type) -> None:
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    io.save_nifti(image, path)


def split_subject_by_slices(
    subject: SubjectPaths, train_dir: Path, validation_dir: Path, *, keep_flair: bool
) -> int:
    """Write a subject's training and validation parts (held-out axial slices); return the count.

    Without ``keep_flair`` the training part has no FLAIR; the validation part always has it.
    Files are written uncompressed (``.nii``) because they live only while the cell trains.
    """
    images = {domain: io.load_image(path) for domain, path in subject.images.items()}
    reference = next(iter(images.values()))
    label = io.load_label(subject.label, reference)
    brain = load_brain_mask(subject.brain_mask, reference, images.values())

    axis = axial_axis(reference.affine)
    held_out = held_out_slices(brain, axis)
    shape = [1, 1, 1]
    shape[axis] = held_out.size
    in_validation = held_out.reshape(shape)

    for folder, keep in ((train_dir, ~in_validation), (validation_dir, in_validation)):
        folder.mkdir(parents=True)
        for domain, image in images.items():
            if folder == train_dir and domain == "FLAIR" and not keep_flair:
                continue
            data = np.asarray(image.dataobj, dtype=np.float32) * keep
            _save_like(data, image, folder / DOMAIN_FILES[domain].replace(".gz", ""), np.float32)
        _save_like(label * keep, reference, folder / "wmh.nii", np.uint8)
        if subject.brain_mask is not None:
            _save_like(brain * keep, reference, folder / "brain_mask.nii", np.uint8)
    return int(held_out.sum())


def prepare_held_out_data(
    data_dir: Path, data_out: Path, *, train: tuple[str, ...], flair_subjects: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write every training subject's training and held-out validation parts to ``data_out``.

    FLAIR is left out of the training part of subjects not in ``flair_subjects`` but kept in
    their validation part. Returns the training and validation subject names in ``data_out``.
    """
    data_out.mkdir(parents=True)
    validation = []
    for name in train:
        count = split_subject_by_slices(
            subject_paths(data_dir, name),
            data_out / name,
            data_out / f"{name}{VALIDATION_SUFFIX}",
            keep_flair=name in flair_subjects,
        )
        logger.info("Subject %s: %d axial slices held out for validation", name, count)
        validation.append(f"{name}{VALIDATION_SUFFIX}")
    return train, tuple(validation)


# --------------------------------------------------------------------------------------------
# Test scores
# --------------------------------------------------------------------------------------------


@dataclass
class DomainCounts:
    """Voxel counts pooled over test subjects for one domain."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, prediction: npt.NDArray[np.bool_], label: npt.NDArray[np.uint8]) -> None:
        """Add one volume's counts; label 2 voxels are ignored."""
        keep = label != 2
        predicted = prediction & keep
        truth = label == 1
        self.tp += int((predicted & truth).sum())
        self.fp += int((predicted & ~truth).sum())
        self.fn += int((~predicted & truth).sum())


def predict_volume(
    model: torch.nn.Module,
    volume: npt.NDArray[np.float32],
    brain: npt.NDArray[np.bool_],
    *,
    device: torch.device,
    threshold: float,
    batch_size: int = 16,
) -> npt.NDArray[np.bool_]:
    """Segment a network-grid volume inside its brain mask.

    Only slices with brain voxels are run, each cropped to the brain's in-plane bounding box
    and zero-padded up to a multiple of the model's size divisor, which costs far less than
    whole slices of a 1 mm volume.
    """
    prediction = np.zeros(volume.shape, dtype=bool)
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    if zs.size == 0:
        return prediction
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    divisor = size_divisor(model)
    pad_x, pad_y = (-(x1 - x0)) % divisor, (-(y1 - y0)) % divisor
    logit_threshold = math.log(threshold / (1.0 - threshold))

    model.eval()
    with torch.no_grad():
        for start in range(0, zs.size, batch_size):
            chunk = zs[start : start + batch_size]
            slices = np.moveaxis(volume[x0:x1, y0:y1, chunk], 2, 0)[:, None]
            batch = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
            batch = functional.pad(batch, (0, pad_y, 0, pad_x)).to(device)
            logits = model(batch)[:, 0, : x1 - x0, : y1 - y0]
            predicted = (logits > logit_threshold).cpu().numpy()
            prediction[x0:x1, y0:y1, chunk] = np.moveaxis(predicted, 0, 2)
    return prediction & brain


def score_subjects(
    model: torch.nn.Module,
    info: Any,
    data_dir: Path,
    subjects: tuple[str, ...],
    *,
    device: torch.device,
) -> dict[str, DomainCounts]:
    """Segment every test subject's FLAIR and T1 and pool the voxel counts per domain.

    Counts are taken on the network grid of :mod:`wmhseg.slicing` (RAS, 1 mm in-plane), where
    the model works. For 1 mm images that is the image's own grid, flipped. Subjects are read
    as training reads them (:func:`wmhseg.data.load_subject`): the brain is the brain mask, or
    the non-zero voxels of the images.
    """
    files = {f.name: f for f in data.find_subjects(data_dir)}
    threshold = float(info.threshold)
    counts = {domain: DomainCounts() for domain in DOMAIN_FILES}
    for name in subjects:
        subject = data.load_subject(files[name])
        for domain, volume in subject.images.items():
            prediction = predict_volume(
                model, volume, subject.brain, device=device, threshold=threshold
            )
            counts[domain].add(prediction, subject.label)
    return counts


# --------------------------------------------------------------------------------------------
# One cell
# --------------------------------------------------------------------------------------------

# Small settings for tests and smoke runs; real experiments use the TrainConfig defaults.
TINY_TRAIN_OPTIONS: dict[str, Any] = {
    "steps_per_epoch": 3,
    "crop_size": [32, 32],
    "batch_size": 4,
    "width": 4,
    "depth": 2,
}


def make_train_config(
    cell: Cell,
    plan: ExperimentPlan,
    work_dir: Path,
    *,
    data_dir: Path,
    train: tuple[str, ...],
    validation: tuple[str, ...],
    threads: int | None = None,
) -> TrainConfig:
    """Translate a cell into a :class:`TrainConfig` (``plan.train_options`` override defaults)."""
    from wmhseg.training import TrainConfig

    method = cell.method
    weighting: dict[str, Any]
    if method.kind == "fixed":
        weighting = {"mode": "fixed", "fixed_lambda": method.flair_weight}
    elif method.kind == "simple":
        weighting = {"mode": "simple", "gamma": method.gamma}
    else:
        weighting = {"mode": method.kind, "window": method.window}

    options = dict(plan.train_options)
    if "crop_size" in options:
        options["crop_size"] = tuple(options["crop_size"])
    flair_subjects = cell.flair_subjects()
    return TrainConfig(
        data_dir=data_dir,
        out_dir=work_dir / "train",
        model=cell.model,  # type: ignore[arg-type]
        max_epochs=plan.max_epochs,
        seed=cell.seed,
        device=plan.device,
        train_subjects=train,
        validation_subjects=validation,
        flair_subjects=flair_subjects,
        threads=threads,
        command=f"wmhseg experiment (run {cell.run_id})",
        **weighting,
        **options,
    )


def read_lambda_trace(run_dir: Path) -> list[float]:
    """Read the FLAIR weight λ per training step from the run's ``lambda.csv``."""
    from wmhseg.training import LAMBDA_NAME

    path = run_dir / LAMBDA_NAME
    if not path.is_file():
        return []
    with open(path, newline="") as table:
        return [float(row["lambda_FLAIR"]) for row in csv.DictReader(table)]


def train_and_score(cell: Cell, plan: ExperimentPlan, work_dir: Path) -> RunRecord:
    """Train one cell in ``work_dir``, score its best checkpoint on the test subjects.

    Keeps ``train/`` (checkpoints, ``metrics.csv``, ``lambda.csv``) in ``work_dir`` and deletes
    the held-out-slice data folder when it is done.
    """
    from wmhseg import checkpoint
    from wmhseg.training import resolve_device, train

    fold = cell.fold
    work_dir.mkdir(parents=True)
    data_dir, train_names, validation_names = plan.data_dir, fold.train, fold.validation
    held_out_dir = work_dir / "data"
    if fold.validation_from_training:
        data_dir = held_out_dir
        train_names, validation_names = prepare_held_out_data(
            plan.data_dir, held_out_dir, train=fold.train, flair_subjects=cell.flair_subjects()
        )
    threads = torch.get_num_threads() if "OMP_NUM_THREADS" in os.environ else None
    config = make_train_config(
        cell,
        plan,
        work_dir,
        data_dir=data_dir,
        train=train_names,
        validation=validation_names,
        threads=threads,
    )
    result = train(config)
    shutil.rmtree(held_out_dir, ignore_errors=True)

    device = resolve_device(plan.device)
    model, info = checkpoint.load_model(result.best_checkpoint, device=device)
    counts = score_subjects(model, info, plan.data_dir, fold.test, device=device)
    dice = {d: dice_from_counts(c.tp, c.fp, c.fn) for d, c in counts.items()}

    return RunRecord(
        run_id=cell.run_id,
        fold=fold.index,
        repeat=cell.repeat,
        method=cell.method.name,
        model=cell.model,
        flair_setup=cell.flair.label,
        dsc_flair=dice["FLAIR"],
        dsc_t1=dice["T1"],
        seed=cell.seed,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch + 1,
        seconds=0.0,
        train_subjects=list(fold.train),
        flair_subjects=list(cell.flair_subjects()),
        validation_subjects=list(validation_names),
        test_subjects=list(fold.test),
        counts={d: asdict(c) for d, c in counts.items()},
        lambda_trace=read_lambda_trace(result.run_dir),
        steps_per_epoch=float(config.steps_per_epoch),
    )
