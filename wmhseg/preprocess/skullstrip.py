"""Skull stripping: a brain mask from a T1 or FLAIR with skull, computed offline.

deepbet (MIT licence, weights inside its PyPI wheel) is the default: it runs on CPU in seconds
and needs no registration. It was trained on T1 scans; on FLAIR it is measured in
``docs/preprocessing.md``.
"""

from __future__ import annotations

import contextlib
import functools
import io as _io
import logging
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from wmhseg import io
from wmhseg.errors import PreprocessingError

logger = logging.getLogger(__name__)

METHODS = ("deepbet",)

# Plausible adult brain volumes in mL; a stripped image outside this range is not a brain.
MIN_BRAIN_ML = io.MIN_BRAIN_VOXELS / 1000.0
MAX_BRAIN_ML = 2500.0


@functools.lru_cache(maxsize=1)
def _deepbet_model() -> Any:
    from deepbet import BrainExtraction

    # no_gpu keeps the model on the CPU; the weights load from the installed wheel, offline.
    return BrainExtraction(no_gpu=True)


def _deepbet_mask(image: nib.Nifti1Image) -> npt.NDArray[np.bool_]:
    data = np.asarray(image.dataobj, dtype=np.float32)
    # deepbet reads only the data and affine of an in-memory image and writes nothing when no
    # output paths are given; its stdout chatter is swallowed.
    source = nib.Nifti1Image(data, image.affine)
    with contextlib.redirect_stdout(_io.StringIO()):
        _, mask_image, _ = _deepbet_model().run(source)
    return np.asarray(mask_image.dataobj) > 0


def compute_brain_mask(
    image: nib.Nifti1Image,
    *,
    modality: Literal["t1", "flair"],
    method: str = "deepbet",
    source: str | None = None,
) -> npt.NDArray[np.bool_]:
    """Return the brain mask of a head image on its own grid.

    ``source`` names the input file in error messages.

    Raises:
        PreprocessingError: unknown method, or a mask too small to be a brain (for example on
            an image that holds only noise).
    """
    if modality not in ("t1", "flair"):
        raise ValueError(f"modality must be 't1' or 'flair', not {modality!r}")
    if method not in METHODS:
        raise PreprocessingError(
            f"unknown skull-stripping method {method!r}; choose one of {', '.join(METHODS)}."
        )
    mask = _deepbet_mask(image)
    check_brain_mask(mask, image, source=source)
    return mask


def check_brain_mask(
    mask: npt.NDArray[np.bool_], image: nib.Nifti1Image, *, source: str | None = None
) -> None:
    """Raise if a brain mask is smaller than any real brain (``MIN_BRAIN_ML``)."""
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    count = int(np.count_nonzero(mask))
    volume_ml = count * voxel_ml
    if volume_ml < MIN_BRAIN_ML:
        name = f"{source}: " if source else ""
        raise PreprocessingError(
            f"{name}brain mask has only {count} voxels ({volume_ml:.1f} mL), below the "
            f"{MIN_BRAIN_ML:.0f} mL of any real brain, so the image does not look like a head "
            "MRI. Check the input file, or give a brain mask."
        )


def looks_skull_stripped(image: nib.Nifti1Image) -> bool:
    """Guess whether an image is already skull-stripped.

    A stripped image has a constant background (its most common value, usually 0) over much
    of the field of view, its non-background part is one brain-sized volume, and the outer
    layer of that volume is not brighter than its inside. Scalp fat and skull marrow make
    that layer bright on a head with skull; noisy air makes the background non-constant.

    NOTE: heads with skull whose air was zeroed (Colin27 ``ch2``, the HyperMapp3r test T1)
    still return True; raw scanner images with noisy air and stripped MNI images are right.
    """
    data = np.asarray(image.dataobj, dtype=np.float32)
    values, counts = np.unique(data, return_counts=True)
    background_value = float(values[np.argmax(counts)])
    foreground = np.abs(data - background_value) > 1e-3 * max(float(np.ptp(data)), 1e-12)
    if 1.0 - float(foreground.mean()) < 0.3:
        return False

    labels, count = ndimage.label(foreground)
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    if not MIN_BRAIN_ML <= float(largest.sum()) * voxel_ml <= MAX_BRAIN_ML:
        return False

    inside = ndimage.binary_erosion(largest, iterations=3)
    shell = largest & ~inside
    if not inside.any():
        return False
    return bool(np.percentile(data[shell], 90) <= 1.1 * np.percentile(data[inside], 90))
