"""WhiteStripe intensity normalization through the intensity-normalization package.

WhiteStripe (Shinohara et al., NeuroImage: Clinical 2014) finds normal-appearing white matter as
the voxels within ±``width`` quantile of the white-matter mode of the brain histogram, and
rescales the image so that those voxels have mean 0 and s.d. 1.

The package's own mode finders miss white matter on real scans. Its KDE is evaluated on 80
points between the minimum and maximum, coarser than the stripe's s.d. Its FLAIR rule takes
the largest histogram peak, which on FLAIR is grey and white matter merged. This module
finds the white-matter mode with its own rule per modality (:func:`white_matter_mode`) and
hands it to the package's WhiteStripe, which then draws the stripe and computes mean and s.d.
Both rules use the image itself only, so a FLAIR-only subject gets the same normalization as
a FLAIR in a T1 + FLAIR subject.

intensity-normalization 3.0.x (Python ≥ 3.10) is used through a subclass of its
``WhiteStripeNormalizer``. Where that class cannot be imported (4.x, Python ≥ 3.12, has a
different API), the same stripe formula is computed here.
"""

from __future__ import annotations

import logging
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage, stats
from skimage.filters import threshold_multiotsu
from sklearn.mixture import GaussianMixture

from wmhseg.errors import PreprocessingError

logger = logging.getLogger(__name__)

Modality = Literal["t1", "flair"]

# Brain voxels the stripe search needs before its mode means anything.
MIN_MASK_VOXELS = 1000

# Rule parameters, chosen on two MNI-space MS patients (1 mm, skull-stripped) and checked on
# two raw scans; see docs/preprocessing.md for the measurements behind each.
T1_SMOOTHING_MM = 2.0
FLAIR_EDGE_MM = 3.0
KDE_GRID_POINTS = 1000
KDE_SAMPLES = 50_000
GMM_SAMPLES = 100_000
SEED = 0


def _kde_mode(values: npt.NDArray[np.floating]) -> float:
    """Return the peak of a Gaussian KDE of ``values`` on a fine grid (subsampled, seeded)."""
    rng = np.random.default_rng(SEED)
    sample = rng.choice(values, min(values.size, KDE_SAMPLES), replace=False).astype(np.float64)
    low, high = np.percentile(sample, [0.5, 99.5])
    grid = np.linspace(low, high, KDE_GRID_POINTS)
    return float(grid[np.argmax(stats.gaussian_kde(sample)(grid))])


def _t1_white_matter_mode(
    data: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], spacing: tuple[float, ...]
) -> float:
    # White matter is the brightest tissue on T1, so it is the top class of a 3-class Otsu
    # split. The split runs on a copy smoothed inside the mask (2 mm) so that the class is
    # spatially coherent, and the class is eroded by one voxel to drop grey/white partial
    # volume. The mode is taken from the unsmoothed intensities of that class.
    smoothed = _smooth_inside(data, mask, spacing, T1_SMOOTHING_MM)
    thresholds = threshold_multiotsu(smoothed[mask], classes=3)
    white = ndimage.binary_erosion(mask & (smoothed > thresholds[1]))
    if int(white.sum()) < MIN_MASK_VOXELS:
        white = mask & (smoothed > thresholds[1])
    return _kde_mode(data[white])


def _flair_white_matter_mode(
    data: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], spacing: tuple[float, ...]
) -> float:
    # On FLAIR, CSF is dark and grey matter slightly brighter than white matter, so the two
    # tissues form one merged peak whose maximum lies between them. A 3-component Gaussian
    # mixture (CSF, white matter, grey matter + lesions) separates the merged peak, and the
    # middle component's mean is the white-matter mode. Voxels within 3 mm of the brain edge
    # are left out: their CSF/cortex partial volume otherwise pulls the white-matter
    # component down. The brightest 1 % (lesions, vessels) are left out of the fit.
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    inner = mask & (depth > FLAIR_EDGE_MM)
    if int(inner.sum()) < MIN_MASK_VOXELS:
        inner = mask
    values = data[inner].astype(np.float64)
    values = values[values <= np.percentile(values, 99.0)]
    rng = np.random.default_rng(SEED)
    sample = rng.choice(values, min(values.size, GMM_SAMPLES), replace=False)
    mixture = GaussianMixture(n_components=3, random_state=SEED).fit(sample[:, None])
    means = np.sort(mixture.means_.ravel())
    return float(means[1])


def white_matter_mode(
    data: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    *,
    modality: Modality,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> float:
    """Estimate the intensity mode of white matter inside ``mask``.

    ``spacing`` is the voxel size in mm, used for smoothing and for the distance to the brain
    edge.
    """
    if modality == "t1":
        return _t1_white_matter_mode(data, mask, spacing)
    return _flair_white_matter_mode(data, mask, spacing)


def _smooth_inside(
    data: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    spacing: tuple[float, ...],
    sigma_mm: float,
) -> npt.NDArray[np.float32]:
    # Normalized convolution: background zeros do not darken the brain edge.
    sigma = [sigma_mm / float(size) for size in spacing]
    weights = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    blurred = ndimage.gaussian_filter(np.where(mask, data, 0.0).astype(np.float32), sigma)
    return np.asarray(blurred / np.maximum(weights, 1e-3), dtype=np.float32)


def _package_stripe(
    data: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    *,
    mode: float,
    width: float,
) -> tuple[float, float]:
    """Return the white stripe's mean and s.d. around ``mode``, as the package computes them."""
    try:
        from intensity_normalization.adapters.images import create_image
        from intensity_normalization.normalizers.individual.whitestripe import (
            WhiteStripeNormalizer,
        )
    except ImportError:
        # NOTE: this branch (for intensity-normalization 4.x) repeats 3.0.1's fit() formula.
        # CI installs 3.0.1 (Python 3.11), so the tests do not run it.
        foreground = data[mask].astype(np.float64)
        quantile = float(np.mean(foreground < mode))
        low, high = np.quantile(
            foreground, (max(quantile - width, 0.0), min(quantile + width, 1.0))
        )
        stripe = foreground[(foreground > low) & (foreground < high)]
        if stripe.size == 0:
            raise PreprocessingError("WhiteStripe found no voxels in the white stripe.") from None
        return float(stripe.mean()), float(stripe.std())

    class _GivenModeWhiteStripe(WhiteStripeNormalizer):
        def _get_tissue_mode(self, image_data: npt.NDArray[np.floating]) -> float:
            return mode

    normalizer = _GivenModeWhiteStripe(width=width)
    normalizer.fit(create_image(data.astype(np.float64)), create_image(mask.astype(np.float32)))
    if normalizer.mean is None or normalizer.std is None:
        raise PreprocessingError("WhiteStripe returned no stripe statistics.")
    return float(normalizer.mean), float(normalizer.std)


def whitestripe_normalize(
    image: nib.Nifti1Image,
    brain_mask: npt.NDArray[np.bool_] | None,
    *,
    modality: Modality,
    width: float = 0.05,
) -> nib.Nifti1Image:
    """Normalize so that normal-appearing white matter has mean 0 and s.d. 1.

    The white-matter mode comes from :func:`white_matter_mode`; the stripe, its mean and s.d.
    from intensity-normalization's WhiteStripe. Voxels outside ``brain_mask`` are set to 0.
    The result has the input's grid and header.

    Raises:
        PreprocessingError: no brain mask, or one too small. Without a brain mask the
            histogram's tissue mode can fall on scalp or air instead of white matter.
    """
    if modality not in ("t1", "flair"):
        raise ValueError(f"modality must be 't1' or 'flair', not {modality!r}")
    if brain_mask is None:
        raise PreprocessingError(
            "WhiteStripe normalization needs a brain mask: on a head with skull, scalp and "
            "air shift the white-matter mode. Run skull stripping, or give a brain mask."
        )
    mask = np.asarray(brain_mask, dtype=bool)
    if mask.shape != tuple(image.shape[:3]):
        raise ValueError(f"brain mask shape {mask.shape} differs from image shape {image.shape}")
    if int(mask.sum()) < MIN_MASK_VOXELS:
        raise PreprocessingError(
            f"WhiteStripe normalization needs a brain mask of at least {MIN_MASK_VOXELS} voxels; "
            f"it has {int(mask.sum())}."
        )

    data = np.asarray(image.dataobj, dtype=np.float32)
    spacing = tuple(float(size) for size in image.header.get_zooms()[:3])
    if float(np.ptp(data[mask])) == 0.0:
        raise PreprocessingError("WhiteStripe found no intensity spread in the brain mask.")
    try:
        mode = white_matter_mode(data, mask, modality=modality, spacing=spacing)
        mean, sd = _package_stripe(data, mask, mode=mode, width=width)
    except PreprocessingError:
        raise
    except Exception as error:  # the package raises its own NormalizationError and ValueError
        raise PreprocessingError(f"WhiteStripe normalization failed ({error}).") from error
    if not sd > 0:
        raise PreprocessingError("WhiteStripe found a white stripe with zero s.d.")
    logger.debug("white stripe (%s): mode %.4g, mean %.4g, s.d. %.4g", modality, mode, mean, sd)

    normalized = np.where(mask, (data - mean) / sd, 0.0).astype(np.float32)
    if not np.all(np.isfinite(normalized)):
        raise PreprocessingError("WhiteStripe normalization produced NaN or Inf values.")
    return nib.Nifti1Image(normalized, image.affine, image.header)
