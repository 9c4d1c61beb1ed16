"""Training and scoring of one experiment cell, on top of :mod:`wmhseg.training`.

Each cell trains in its own folder. Its data folder holds one entry per training and
validation subject: a symlink to the subject's folder, or, for training subjects that lose
their FLAIR in a reduced-FLAIR setup, a folder with symlinks to the T1 and the label only. So the
training code sees exactly the subjects and modalities of the cell, whatever options it has.

When a fold has no validation subjects (2 folds: one subject per side with 2 subjects), each
training subject is split by axial slices instead: blocks of :data:`HELD_OUT_BLOCK` adjacent
slices, every :data:`HELD_OUT_EVERY`-th block held out, are written as a validation
pseudo-subject ``<subject>~val`` and zeroed in the training copy. Zeroed slices fall outside the
brain (the non-zero voxels), so the training code never draws them. Whole blocks keep the
strongly correlated neighbours of a validation slice out of training.

Test Dice pools true positives, false positives and false negatives over all test subjects per
domain, on each image's own voxel grid, inside the brain, with label 2 ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from wmhseg import io
from wmhseg.errors import TrainingError

logger = logging.getLogger(__name__)

# Domain names of wmhseg.data and the experiment's own keys.
DOMAIN_FILES = {"FLAIR": "FLAIR.nii.gz", "T1": "T1.nii.gz"}
LABEL_FILE = "wmh.nii.gz"
BRAIN_MASK_FILE = "brain_mask.nii.gz"

# Held-out validation slices when a fold has no validation subjects: 1 block of 8 adjacent
# axial slices in every 5, i.e. about 20 % of the slices, as 4 of 16 training+validation
# subjects are in the reference split.
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


def link_subject(subject: SubjectPaths, target: Path, *, keep_flair: bool) -> None:
    """Make ``target`` show the subject: a folder symlink, or file links without the FLAIR."""
    if keep_flair or "FLAIR" not in subject.images:
        target.symlink_to(subject.folder.resolve(), target_is_directory=True)
        return
    target.mkdir()
    for domain, path in subject.images.items():
        if domain != "FLAIR":
            (target / DOMAIN_FILES[domain]).symlink_to(path.resolve())
    (target / LABEL_FILE).symlink_to(subject.label.resolve())
    if subject.brain_mask is not None:
        (target / BRAIN_MASK_FILE).symlink_to(subject.brain_mask.resolve())


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

    Files are written uncompressed (``.nii``) because they live only while the cell trains.
    """
    images = {d: io.load_image(p) for d, p in subject.images.items() if keep_flair or d != "FLAIR"}
    reference = next(iter(images.values()))
    label = io.load_label(subject.label, reference)
    if subject.brain_mask is not None:
        brain = io.load_label(subject.brain_mask, reference, max_label=1).astype(bool)
    else:
        brain = np.zeros(reference.shape, dtype=bool)
        for image in images.values():
            brain |= np.asarray(image.dataobj) != 0

    axis = axial_axis(reference.affine)
    held_out = held_out_slices(brain, axis)
    shape = [1, 1, 1]
    shape[axis] = held_out.size
    in_validation = held_out.reshape(shape)

    for folder, keep in ((train_dir, ~in_validation), (validation_dir, in_validation)):
        folder.mkdir(parents=True)
        for domain, image in images.items():
            data = np.asarray(image.dataobj, dtype=np.float32) * keep
            _save_like(data, image, folder / DOMAIN_FILES[domain].replace(".gz", ""), np.float32)
        _save_like(label * keep, reference, folder / "wmh.nii", np.uint8)
        if subject.brain_mask is not None:
            _save_like(brain * keep, reference, folder / "brain_mask.nii", np.uint8)
    return int(held_out.sum())


def prepare_cell_data(
    data_dir: Path,
    data_out: Path,
    *,
    train: tuple[str, ...],
    validation: tuple[str, ...],
    flair_subjects: tuple[str, ...],
    validation_from_training: bool,
) -> tuple[list[str], list[str]]:
    """Build the cell's data folder; return the training and validation subject names in it."""
    data_out.mkdir(parents=True)
    validation_names = list(validation)
    for name in train:
        subject = subject_paths(data_dir, name)
        keep_flair = name in flair_subjects
        if validation_from_training:
            count = split_subject_by_slices(
                subject,
                data_out / name,
                data_out / f"{name}{VALIDATION_SUFFIX}",
                keep_flair=keep_flair,
            )
            logger.info("Subject %s: %d axial slices held out for validation", name, count)
            validation_names.append(f"{name}{VALIDATION_SUFFIX}")
        else:
            link_subject(subject, data_out / name, keep_flair=keep_flair)
    for name in validation:
        link_subject(subject_paths(data_dir, name), data_out / name, keep_flair=True)
    return list(train), validation_names


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


def score_subjects(
    model: torch.nn.Module,
    info: Any,
    data_dir: Path,
    subjects: tuple[str, ...],
    *,
    device: torch.device,
) -> dict[str, DomainCounts]:
    """Segment every test subject's FLAIR and T1 and pool the voxel counts per domain.

    Goes through :func:`wmhseg.inference.predict_probabilities`, the path of ``wmhseg predict``
    without preprocessing (the data is already normalized). The prediction is limited to the
    brain: the brain mask file if present, else the non-zero voxels of the image.
    """
    from wmhseg.inference import Predictor, predict_probabilities

    predictor = Predictor(model=model, info=info, device=device)
    threshold = float(info.threshold)
    counts = {domain: DomainCounts() for domain in DOMAIN_FILES}
    for name in subjects:
        subject = subject_paths(data_dir, name)
        for domain, path in subject.images.items():
            image = io.load_image(path)
            data = np.asarray(image.dataobj, dtype=np.float32)
            label = io.load_label(subject.label, image)
            if subject.brain_mask is not None:
                brain = io.load_label(subject.brain_mask, image, max_label=1).astype(bool)
            else:
                brain = data != 0
            probabilities = predict_probabilities(predictor, data, image.affine)
            counts[domain].add((probabilities >= threshold) & brain, label)
    return counts
