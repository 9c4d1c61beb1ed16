"""Training data: axial slices of preprocessed subjects, sampled by domain (modality).

Accepted layouts, one folder per subject under the data folder:

* the output of ``wmhseg preprocess``: ``<subject>/{FLAIR,T1}.nii.gz`` (WhiteStripe-normalized,
  0 outside the brain, on one grid), ``brain_mask.nii.gz``, ``wmh.nii.gz``;
* plain folders ``<subject>/{T1,FLAIR,wmh}.nii.gz`` without a brain mask (the brain is then the
  non-zero voxels of the images), or the MICCAI 2017 WMH layout with the images in
  ``<subject>/pre/``.

Labels: 0 background, 1 WMH, 2 other pathology (ignored by the loss and by Dice). Every volume
goes through :func:`wmhseg.slicing.to_network_grid`, exactly as at inference, so that
``volume[:, :, k]`` is axial slice k in RAS order at 1 mm in-plane.

A domain is a modality: domain 0 is FLAIR ("A"), domain 1 is T1 ("B"). Each training step
draws the same number of slices from every domain (:meth:`SliceDataset.sample_batch`), with
the random choices drawn from a generator seeded by ``(seed, step)``, so a resumed run draws
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from wmhseg import io
from wmhseg.augment import IDENTITY, AugmentationRange, apply_augmentation, draw_augmentation
from wmhseg.errors import InputImageError, TrainingError
from wmhseg.slicing import to_network_grid

logger = logging.getLogger(__name__)

ScalarT = TypeVar("ScalarT", bound=np.generic)

DOMAINS = ("FLAIR", "T1")
LABEL_NAMES = ("wmh",)
BRAIN_MASK_NAME = "brain_mask"

# A slice counts as "inside the brain" with at least this many brain voxels (5 cm² at 1 mm), or
# a quarter of the largest slice's brain voxels in small images.
MIN_BRAIN_VOXELS_PER_SLICE = 500


@dataclass(frozen=True)
class SubjectFiles:
    """Paths of one subject's images (by domain), label and optional brain mask."""

    name: str
    images: dict[str, Path]
    label: Path | None
    brain_mask: Path | None


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.nii.gz", folder / f"{stem}.nii"):
        if candidate.is_file():
            return candidate
    return None


def find_subjects(data_dir: str | Path, *, domains: Sequence[str] = DOMAINS) -> list[SubjectFiles]:
    """List the subject folders under ``data_dir`` that contain at least one image."""
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"{root}: data folder not found. Give a folder of subject folders.")
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = {}
        for domain in domains:
            found = _find_nifti(folder, domain) or _find_nifti(folder / "pre", domain)
            if found is not None:
                images[domain] = found
        if not images:
            continue
        label = None
        for stem in LABEL_NAMES:
            label = label or _find_nifti(folder, stem)
        subjects.append(
            SubjectFiles(
                name=folder.name,
                images=images,
                label=label,
                brain_mask=_find_nifti(folder, BRAIN_MASK_NAME),
            )
        )
    if not subjects:
        raise TrainingError(
            f"{root}: no subject folders with {' or '.join(f'{d}.nii.gz' for d in domains)} found. "
            "Expected <subject>/FLAIR.nii.gz, <subject>/T1.nii.gz and <subject>/wmh.nii.gz, "
            "as written by 'wmhseg preprocess'."
        )
    return subjects


@dataclass
class SubjectVolumes:
    """One subject on the network grid: images by domain, label, brain mask."""

    name: str
    images: dict[str, npt.NDArray[np.float32]]
    label: npt.NDArray[np.uint8]
    brain: npt.NDArray[np.bool_]
    # In-plane brain bounding box over all slices: (x0, x1, y0, y1), end-exclusive.
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    brain_slices: list[int] = field(default_factory=list)
    lesion_slices: list[int] = field(default_factory=list)


def load_brain_mask(
    path: Path | None, reference: nib.Nifti1Image, images: Iterable[nib.Nifti1Image]
) -> npt.NDArray[np.bool_]:
    """Read a subject's brain mask, or take the non-zero voxels of its images without one."""
    if path is not None:
        return io.load_label(path, reference, max_label=1).astype(bool)
    brain = np.zeros(reference.shape, dtype=bool)
    for image in images:
        brain |= np.asarray(image.dataobj) != 0
    return brain


def load_subject(files: SubjectFiles) -> SubjectVolumes:
    """Read one subject's images, label and brain mask onto the network grid."""
    if files.label is None:
        raise TrainingError(
            f"subject {files.name}: no wmh.nii.gz label found; training needs a WMH label "
            "(0 background, 1 WMH, 2 ignored) for every subject."
        )
    reference_domain = "FLAIR" if "FLAIR" in files.images else next(iter(files.images))
    reference = io.load_image(files.images[reference_domain])
    loaded = {reference_domain: reference}
    for domain, path in files.images.items():
        if domain != reference_domain:
            image = io.load_image(path)
            io.check_same_grid(path, image.shape, image.affine, reference)
            loaded[domain] = image
    label = io.load_label(files.label, reference)

    affine = reference.affine
    brain = load_brain_mask(files.brain_mask, reference, loaded.values())
    if int(brain.sum()) == 0:
        raise InputImageError(
            files.images[reference_domain], "brain mask is empty; check the preprocessing output."
        )

    images = {}
    for domain, image in loaded.items():
        array, _ = to_network_grid(np.asarray(image.dataobj, dtype=np.float32), affine)
        images[domain] = np.asarray(array, dtype=np.float32)
    label_grid, _ = to_network_grid(label, affine, is_label=True)
    brain_grid, _ = to_network_grid(brain.astype(np.uint8), affine, is_label=True)
    volumes = SubjectVolumes(
        name=files.name,
        images=images,
        label=np.asarray(label_grid, dtype=np.uint8),
        brain=np.asarray(brain_grid, dtype=bool),
    )
    _index_slices(volumes)
    return volumes


def _index_slices(volumes: SubjectVolumes) -> None:
    per_slice = volumes.brain.sum(axis=(0, 1))
    minimum = max(1, min(MIN_BRAIN_VOXELS_PER_SLICE, int(0.25 * per_slice.max())))
    volumes.brain_slices = [int(z) for z in np.flatnonzero(per_slice >= minimum)]
    lesions = (volumes.label == 1).sum(axis=(0, 1))
    volumes.lesion_slices = [z for z in volumes.brain_slices if lesions[z] > 0]
    xs = np.flatnonzero(volumes.brain.any(axis=(1, 2)))
    ys = np.flatnonzero(volumes.brain.any(axis=(0, 2)))
    volumes.bbox = (int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1)


def split_subjects(
    names: Sequence[str],
    *,
    validation_subjects: Sequence[str] | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split subject names into training and validation sets, by subject, never by slice.

    With ``validation_subjects`` the split is explicit. Otherwise a seeded random
    ``validation_fraction`` of subjects (at least one when the fraction is above 0 and there
    are 2 or more subjects) is held out.
    """
    names = list(names)
    if validation_subjects is not None:
        unknown = sorted(set(validation_subjects) - set(names))
        if unknown:
            raise TrainingError(
                f"validation subjects not found in the data folder: {', '.join(unknown)}"
            )
        validation = [n for n in names if n in set(validation_subjects)]
    else:
        if not 0.0 <= validation_fraction < 1.0:
            raise TrainingError(f"validation fraction must be in [0, 1), got {validation_fraction}")
        count = round(validation_fraction * len(names))
        if validation_fraction > 0 and len(names) >= 2:
            count = max(1, count)
        order = np.random.default_rng(seed).permutation(len(names))
        validation = sorted(names[i] for i in order[:count])
    training = [n for n in names if n not in set(validation)]
    if not training:
        raise TrainingError("no training subjects left after the validation split.")
    return training, validation


def keep_flair_subjects(
    subjects: list[SubjectVolumes], count: int | None, *, seed: int
) -> list[str]:
    """Drop FLAIR from all but a random ``count`` subjects (simulates scarce FLAIR).

    Returns the names of the subjects whose FLAIR was kept. T1 is kept for everyone.
    """
    with_flair = [s for s in subjects if "FLAIR" in s.images]
    if count is None or count >= len(with_flair):
        return [s.name for s in with_flair]
    if count < 0:
        raise TrainingError(f"--flair-subjects must be 0 or more, got {count}")
    order = np.random.default_rng([seed, 1]).permutation(len(with_flair))
    kept = {with_flair[i].name for i in order[:count]}
    for subject in with_flair:
        if subject.name not in kept:
            del subject.images["FLAIR"]
    return sorted(kept)


def crop_slice(
    array: npt.NDArray[ScalarT], centre: tuple[int, int], size: tuple[int, int]
) -> npt.NDArray[ScalarT]:
    """Cut a ``size`` window centred on ``centre`` from a 2D array, zero-padded at the edges."""
    out = np.zeros(size, dtype=array.dtype)
    x0 = centre[0] - size[0] // 2
    y0 = centre[1] - size[1] // 2
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + size[0], array.shape[0]), min(y0 + size[1], array.shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0] = array[sx0:sx1, sy0:sy1]
    return out


@dataclass(frozen=True)
class SamplingOptions:
    """Options for drawing and cutting training slices."""

    crop_size: tuple[int, int] = (128, 128)
    lesion_fraction: float = 0.5
    labelled_only: bool = False
    augment: bool = True
    augmentation: AugmentationRange = field(default_factory=AugmentationRange)


class SliceDataset:
    """Training slices of several subjects, grouped by domain."""

    def __init__(
        self,
        subjects: Sequence[SubjectVolumes],
        *,
        domains: Sequence[str] = DOMAINS,
        options: SamplingOptions = SamplingOptions(),
    ) -> None:
        self.subjects = list(subjects)
        self.domains = tuple(domains)
        self.options = options
        self.slices: dict[str, list[tuple[int, int]]] = {}
        for domain in self.domains:
            entries = []
            for index, subject in enumerate(self.subjects):
                if domain not in subject.images:
                    continue
                zs = subject.lesion_slices if options.labelled_only else subject.brain_slices
                entries += [(index, z) for z in zs]
            if not entries:
                raise TrainingError(
                    f"no training slices for domain {domain}: no training subject has a "
                    f"{domain} image" + (" with WMH in it" if options.labelled_only else "") + "."
                )
            self.slices[domain] = entries

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.slices.values())

    def _draw_centre(
        self, rng: np.random.Generator, subject: SubjectVolumes, z: int
    ) -> tuple[int, int]:
        if rng.random() < self.options.lesion_fraction:
            lesion = np.argwhere(subject.label[:, :, z] == 1)
            if len(lesion):
                x, y = lesion[rng.integers(len(lesion))]
                return int(x), int(y)
        brain = np.argwhere(subject.brain[:, :, z])
        x, y = brain[rng.integers(len(brain))]
        return int(x), int(y)

    def sample_batch(
        self, seed: Sequence[int], per_domain: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Draw ``per_domain`` slices of every domain; returns ``(images, labels)`` per domain.

        Tensors have shape ``(per_domain, 1, H, W)``: images float32, labels float32 holding
        0, 1 or 2. All random choices come from ``numpy.random.default_rng(seed)`` and are made
        before any is applied.
        """
        rng = np.random.default_rng(list(seed))
        size = self.options.crop_size
        batches = []
        for domain in self.domains:
            entries = self.slices[domain]
            picks = rng.integers(len(entries), size=per_domain)
            plans = []
            for pick in picks:
                subject_index, z = entries[int(pick)]
                subject = self.subjects[subject_index]
                centre = self._draw_centre(rng, subject, z)
                params = (
                    draw_augmentation(rng, self.options.augmentation)
                    if self.options.augment
                    else IDENTITY
                )
                plans.append((subject, z, centre, params))
            images, labels = [], []
            for subject, z, centre, params in plans:
                image = crop_slice(subject.images[domain][:, :, z], centre, size)
                label = crop_slice(subject.label[:, :, z], centre, size)
                image, label = apply_augmentation(image, label, params)
                images.append(image)
                labels.append(label)
            batches.append(
                (
                    torch.from_numpy(np.stack(images)[:, None]),
                    torch.from_numpy(np.stack(labels)[:, None].astype(np.float32)),
                )
            )
        return batches


def validation_slices(
    subject: SubjectVolumes, domain: str, *, size_divisor: int, labelled_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a subject's brain slices of one domain, cropped to the brain bounding box.

    Height and width are padded up to multiples of ``size_divisor``. Shapes ``(S, 1, H, W)``.
    """
    x0, x1, y0, y1 = subject.bbox
    zs = subject.lesion_slices if labelled_only else subject.brain_slices
    height = -(-(x1 - x0) // size_divisor) * size_divisor
    width = -(-(y1 - y0) // size_divisor) * size_divisor
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    images = [crop_slice(subject.images[domain][:, :, z], centre, (height, width)) for z in zs]
    labels = [crop_slice(subject.label[:, :, z], centre, (height, width)) for z in zs]
    return (
        torch.from_numpy(np.stack(images)[:, None].astype(np.float32)),
        torch.from_numpy(np.stack(labels)[:, None].astype(np.float32)),
    )
