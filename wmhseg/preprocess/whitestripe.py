"""WhiteStripe intensity normalization through the intensity-normalization package.

WhiteStripe (Shinohara et al., NeuroImage: Clinical 2014) finds normal-appearing white matter as
the voxels within ±``width`` quantile of the white-matter mode of the brain histogram, and
rescales the image so that those voxels have mean 0 and s.d. 1. wmhseg keeps the stripe's s.d.
as the unit but subtracts the white-matter mode instead of the stripe's mean. On FLAIR, grey
matter just above white matter skews the stripe, so its mean sat up to 0.4 stripe s.d.s away
from the mode.

The package's own mode finders miss white matter on real scans. Its KDE is evaluated on 80
points between the minimum and maximum, coarser than the stripe's s.d. Its FLAIR rule takes
the largest histogram peak, which on FLAIR is grey and white matter merged. This module
finds the white-matter mode with its own rule per modality (:func:`white_matter_mode`) and
hands it to the package's WhiteStripe, which then draws the stripe and computes its s.d.
For a T1 + FLAIR subject the FLAIR's mode is instead taken inside the white matter found on
the registered T1 (:func:`white_matter_estimate`), because grey and white matter are far apart
on T1 and close together on FLAIR. FLAIR-only subjects use the FLAIR rule.

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
from scipy import ndimage
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
GMM_SAMPLES = 100_000
SEED = 0


def kde_mode(values: npt.NDArray[np.floating]) -> float:
    """Return the peak of a Gaussian KDE of all ``values`` (binned, Scott's bandwidth).

    Binning keeps every voxel in the estimate: on FLAIR the white-matter peak is flat over
    several stripe s.d.s, and KDEs of 50 000-voxel subsamples put it up to 0.8 apart.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if not high > low:
        return float(low)
    counts, edges = np.histogram(values, bins=KDE_GRID_POINTS, range=(low, high))
    bandwidth = float(values.std()) * values.size ** (-1.0 / 5.0)
    density = ndimage.gaussian_filter1d(
        counts.astype(np.float64), bandwidth / (edges[1] - edges[0]), mode="constant"
    )
    centres = (edges[:-1] + edges[1:]) / 2.0
    return float(centres[np.argmax(density)])


def white_matter_estimate(
    t1: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    *,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> npt.NDArray[np.bool_]:
    """Return a white-matter mask from a T1 inside the brain ``mask``.

    White matter is the brightest tissue on T1, so it is the top class of a 3-class Otsu
    split. The split runs on a copy smoothed inside the mask (2 mm) so that the class is
    spatially coherent. The class is then eroded by one voxel in 3D to drop grey/white partial
    volume, which on 3–4 mm slices lies mostly through-plane. If erosion leaves fewer than
    ``MIN_MASK_VOXELS`` voxels, the class is returned uneroded.
    """
    mask = np.asarray(mask, dtype=bool)
    smoothed = _smooth_inside(np.asarray(t1, dtype=np.float32), mask, spacing, T1_SMOOTHING_MM)
    thresholds = threshold_multiotsu(smoothed[mask], classes=3)
    top_class = mask & (smoothed > thresholds[1])
    white = ndimage.binary_erosion(top_class)
    if int(white.sum()) < MIN_MASK_VOXELS:
        return top_class
    return np.asarray(white, dtype=bool)


def _flair_white_matter_mode(
    data: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], spacing: tuple[float, ...]
) -> float:
    # On FLAIR, CSF is dark and grey matter slightly brighter than white matter, so the two
    # tissues form one merged peak whose maximum lies between them. A 3-component Gaussian
    # mixture (CSF, white matter, grey matter + lesions) separates the merged peak, and the
    # middle component's mean is the white-matter mode. Voxels within 3 mm of the brain edge
    # are left out: their CSF/cortex partial volume otherwise pulls the white-matter
    # component down. The brightest 1 % (lesions, vessels) are left out of the fit.
    # NOTE: on two raw and two MNI FLAIRs this rule landed 0.5–1.0 stripe s.d.s from the mode
    # inside the T1's white matter, which T1 + FLAIR subjects use instead.
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
    white_matter: npt.NDArray[np.bool_] | None = None,
) -> float:
    """Estimate the intensity mode of white matter inside ``mask``.

    With ``white_matter`` given (for example :func:`white_matter_estimate` of a registered
    T1), the mode is the KDE peak of ``data`` inside it, whatever the modality. Otherwise a T1
    takes the peak inside its own :func:`white_matter_estimate`, and a FLAIR uses a Gaussian
    mixture. ``spacing`` is the voxel size in mm, used for smoothing and for the distance to
    the brain edge.
    """
    if white_matter is not None:
        white = np.asarray(white_matter, dtype=bool) & mask
        if int(white.sum()) < MIN_MASK_VOXELS:
            raise PreprocessingError(
                f"The white-matter estimate has {int(white.sum())} voxels inside the brain "
                f"mask; WhiteStripe needs at least {MIN_MASK_VOXELS}."
            )
        return kde_mode(data[white])
    if modality == "t1":
        return kde_mode(data[white_matter_estimate(data, mask, spacing=spacing)])
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
    white_matter: npt.NDArray[np.bool_] | None = None,
) -> nib.Nifti1Image:
    """Normalize so that the white-matter mode is 0 and the white stripe has s.d. 1.

    The white-matter mode comes from :func:`white_matter_mode` (inside ``white_matter`` when
    given); the stripe and its s.d. from intensity-normalization's WhiteStripe. Voxels
    outside ``brain_mask`` are set to 0. The result has the input's grid and header.

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
    if white_matter is not None and np.shape(white_matter) != mask.shape:
        raise ValueError(
            f"white-matter mask shape {np.shape(white_matter)} differs from image shape "
            f"{image.shape}"
        )
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
        mode = white_matter_mode(
            data, mask, modality=modality, spacing=spacing, white_matter=white_matter
        )
        mean, sd = _package_stripe(data, mask, mode=mode, width=width)
    except PreprocessingError:
        raise
    except Exception as error:  # the package raises its own NormalizationError and ValueError
        raise PreprocessingError(f"WhiteStripe normalization failed ({error}).") from error
    if not sd > 0:
        raise PreprocessingError("WhiteStripe found a white stripe with zero s.d.")
    logger.debug("white stripe (%s): mode %.4g, mean %.4g, s.d. %.4g", modality, mode, mean, sd)

    normalized = np.where(mask, (data - mode) / sd, 0.0).astype(np.float32)
    if not np.all(np.isfinite(normalized)):
        raise PreprocessingError("WhiteStripe normalization produced NaN or Inf values.")
    return nib.Nifti1Image(normalized, image.affine, image.header)
