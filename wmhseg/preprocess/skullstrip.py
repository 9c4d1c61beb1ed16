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

# Skull-stripped detection. On real scans (docs/preprocessing.md) the fraction of non-zero
# voxels within 4 mm of deepbet's mask was 0.994-1.000 on six stripped images and 0.52-0.60 on
# five heads with skull (air zeroed). A false "stripped" is the costly error, because the scalp
# would then be segmented, so the threshold sits near the stripped side.
STRIPPED_MARGIN_MM = 4.0
STRIPPED_MIN_FRACTION = 0.97
# Non-zero volume above which an image fails the fraction test for any mask of at most
# MAX_BRAIN_ML: a 2500 mL sphere grown by 4 mm is 2860 mL, and 2860 / 0.97 is about 2950 mL.
MAX_STRIPPED_ML = 3000.0


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


def nonzero_brain_mask(image: nib.Nifti1Image) -> npt.NDArray[np.bool_]:
    """Return the non-zero voxels of an already skull-stripped image, holes filled."""
    return np.asarray(ndimage.binary_fill_holes(np.asarray(image.dataobj) != 0), dtype=bool)


def fraction_inside_brain(
    image: nib.Nifti1Image,
    brain_mask: npt.NDArray[np.bool_],
    *,
    margin_mm: float = STRIPPED_MARGIN_MM,
) -> float:
    """Return the fraction of the image's non-zero voxels within ``margin_mm`` of the brain mask.

    The distance is Euclidean in mm (voxel sizes from the header), so anisotropic grids get the
    same margin along every axis.
    """
    nonzero = np.asarray(image.dataobj) != 0
    count = int(np.count_nonzero(nonzero))
    if count == 0:
        return 0.0
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    distance_mm = ndimage.distance_transform_edt(
        ~np.asarray(brain_mask, dtype=bool), sampling=zooms
    )
    return float(np.count_nonzero(nonzero & (distance_mm <= margin_mm))) / count


def too_large_to_be_stripped(image: nib.Nifti1Image) -> bool:
    """Return True when the image has more non-zero volume than any skull-stripped brain.

    This needs no brain mask. It can only rule stripping out, so False is no evidence of stripping.
    """
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    return float(np.count_nonzero(np.asarray(image.dataobj))) * voxel_ml > MAX_STRIPPED_ML


def looks_skull_stripped(
    image: nib.Nifti1Image, *, brain_mask: npt.NDArray[np.bool_] | None = None
) -> bool:
    """Decide whether an image is already skull-stripped.

    It is when at least ``STRIPPED_MIN_FRACTION`` of its non-zero voxels lie within
    ``STRIPPED_MARGIN_MM`` of the brain mask (deepbet's, computed here unless ``brain_mask``
    is given). Images with more non-zero volume than ``MAX_STRIPPED_ML`` are rejected before
    deepbet runs. A head whose air was zeroed keeps its scalp non-zero, so it fails the test
    however clean its background is. Thresholds and the measured values on real scans are in
    ``docs/preprocessing.md``.
    """
    if too_large_to_be_stripped(image):
        return False
    if brain_mask is None:
        brain_mask = _deepbet_mask(image)
    return fraction_inside_brain(image, brain_mask) >= STRIPPED_MIN_FRACTION
