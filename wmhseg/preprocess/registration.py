"""Rigid T1 → FLAIR registration with SimpleITK (Euler3D transform, Mattes mutual information).

SimpleITK was chosen over ANTs by measurement: on a synthetic head with a known transform,
ANTs ``Rigid`` at its defaults took 63 s and SimpleITK Euler3D + Mattes MI 15 s, both with
errors under 0.1 mm. The multi-resolution schedule below is sized in millimetres, because the
raw scans this targets have 3–4 mm slices and sub-millimetre pixels.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from wmhseg import convert, io
from wmhseg.errors import PreprocessingError

logger = logging.getLogger(__name__)

# A registration that lowers normalized mutual information by more than this is a failure.
NMI_TOLERANCE = 0.002


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_rigid`.

    ``transform`` follows the ITK convention: it maps physical LPS points of the fixed image to
    the moving image, so resampling the moving image with it puts it on the fixed grid.
    """

    transform: sitk.Transform
    resampled: nib.Nifti1Image
    nmi_before: float
    nmi_after: float


def normalized_mutual_information(
    first: npt.NDArray[np.floating],
    second: npt.NDArray[np.floating],
    *,
    mask: npt.NDArray[np.bool_] | None = None,
    bins: int = 32,
) -> float:
    """Return Studholme's NMI, (H(A) + H(B)) / H(A, B), between two arrays on one grid.

    The value is 1 for independent images and 2 for identical ones.
    """
    if mask is None:
        mask = np.ones(first.shape, dtype=bool)
    a = np.asarray(first, dtype=np.float64)[mask]
    b = np.asarray(second, dtype=np.float64)[mask]
    if a.size == 0:
        return float("nan")
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    joint /= joint.sum()

    def entropy(p: npt.NDArray[np.float64]) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint)
    if joint_entropy == 0:
        return float("nan")
    return (entropy(joint.sum(axis=1)) + entropy(joint.sum(axis=0))) / joint_entropy


def _foreground(image: sitk.Image) -> sitk.Image:
    # Otsu separates head from air; the NMI check is restricted to it so that air-to-air
    # agreement, which any transform keeps, does not dilute the value.
    return sitk.OtsuThreshold(image, 0, 1, 128)


def resample_to(
    moving: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    transform: sitk.Transform | None = None,
    *,
    interpolation: Literal["linear", "nearest", "bspline"] = "linear",
) -> nib.Nifti1Image:
    """Resample ``moving`` onto the grid of ``reference`` through an ITK transform.

    Without a transform, world coordinates are matched as they are (header alignment). Points
    outside the moving image become 0. The result has the reference's affine.
    """
    interpolators = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }
    moving_itk = convert.nib_to_sitk(moving)
    reference_itk = convert.nib_to_sitk(reference)
    resampled = sitk.Resample(
        moving_itk,
        reference_itk,
        transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity),
        interpolators[interpolation],
        0.0,
        sitk.sitkFloat32,
    )
    data = np.asarray(convert.sitk_to_nib(resampled).dataobj, dtype=np.float32)
    return nib.Nifti1Image(data, reference.affine, reference.header)


def register_rigid(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    smoothing_sigmas_mm: Sequence[float] = (4.0, 2.0, 1.0),
    level_spacings_mm: Sequence[float] = (4.0, 2.0, 1.0),
    iterations: int = 100,
    histogram_bins: int = 50,
    sampling_fraction: float = 0.05,
    seed: int = 1234,
    check: bool = True,
) -> RegistrationResult:
    """Rigidly register ``moving`` (a T1) onto ``fixed`` (a FLAIR) by Mattes MI.

    The Euler3D transform starts from the headers' alignment, rotating about the fixed image's
    centre. Each resolution level shrinks the images so that in-plane voxels are about
    ``level_spacings_mm``; the slice direction is never shrunk below its own spacing.

    Raises:
        PreprocessingError: the optimizer failed, or with ``check`` the normalized mutual
            information inside the fixed image's head got worse than before registration.
    """
    if len(smoothing_sigmas_mm) != len(level_spacings_mm):
        raise ValueError("smoothing_sigmas_mm and level_spacings_mm need one entry per level")

    fixed_itk = convert.nib_to_sitk(fixed)
    moving_itk = convert.nib_to_sitk(moving)
    fixed_mask = _foreground(fixed_itk)

    initial = sitk.CenteredTransformInitializer(
        fixed_itk,
        moving_itk,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    # Header alignment (identity) is the starting point; the initializer only sets the centre.
    start = sitk.Euler3DTransform()
    start.SetCenter(sitk.Euler3DTransform(initial).GetCenter())

    # SimpleITK's own pyramid shrinks every axis by the same factor, which would leave a few
    # 20 mm thick slices of a 3 mm-slice scan at the coarse level. Shrink per axis instead.
    transform = start
    for sigma_mm, spacing_mm in zip(smoothing_sigmas_mm, level_spacings_mm, strict=True):
        transform = _register_level(
            _shrink(fixed_itk, spacing_mm, sigma_mm),
            _shrink(moving_itk, spacing_mm, sigma_mm),
            _shrink(fixed_mask, spacing_mm, 0.0, is_mask=True),
            transform,
            iterations=iterations,
            histogram_bins=histogram_bins,
            sampling_fraction=sampling_fraction,
            seed=seed,
        )

    before = resample_to(moving, fixed)
    after = resample_to(moving, fixed, transform)
    head = np.asarray(convert.sitk_to_nib(fixed_mask).dataobj).astype(bool)
    fixed_data = np.asarray(fixed.dataobj, dtype=np.float32)
    nmi_before = normalized_mutual_information(fixed_data, np.asarray(before.dataobj), mask=head)
    nmi_after = normalized_mutual_information(fixed_data, np.asarray(after.dataobj), mask=head)
    logger.info("registration NMI %.4f -> %.4f", nmi_before, nmi_after)
    if check and not nmi_after >= nmi_before - NMI_TOLERANCE:
        raise PreprocessingError(
            f"rigid registration made the alignment worse (normalized mutual information "
            f"{nmi_before:.4f} before, {nmi_after:.4f} after). Check that the T1 and FLAIR are of "
            "the same subject and session, or skip registration if they are already aligned."
        )
    return RegistrationResult(
        transform=transform, resampled=after, nmi_before=nmi_before, nmi_after=nmi_after
    )


def _shrink(
    image: sitk.Image, spacing_mm: float, sigma_mm: float, *, is_mask: bool = False
) -> sitk.Image:
    factors = [max(1, round(spacing_mm / spacing)) for spacing in image.GetSpacing()]
    if is_mask:
        return sitk.BinShrink(image, factors) > 0 if max(factors) > 1 else image
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image
    return sitk.Shrink(smoothed, factors) if max(factors) > 1 else smoothed


def _register_level(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    initial: sitk.Euler3DTransform,
    *,
    iterations: int,
    histogram_bins: int,
    sampling_fraction: float,
    seed: int,
) -> sitk.Euler3DTransform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetMetricFixedMask(sitk.Cast(fixed_mask, sitk.sitkUInt8))
    # The default moving-image gradient filter (recursive Gaussian) gave gradients pointing
    # uphill on raw 0.72 × 0.72 × 3 mm scans (SimpleITK 2.5), so the optimizer walked 60 mm away
    # from the optimum. Central differences on the interpolated image descend correctly.
    method.MetricUseMovingImageGradientFilterOff()
    method.MetricUseFixedImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(sitk.Euler3DTransform(initial), inPlace=True)
    try:
        method.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    except RuntimeError as error:
        raise PreprocessingError(
            f"rigid registration failed inside SimpleITK ({error}). Check that both images show "
            "the same head."
        ) from error
    logger.debug(
        "registration level stopped after %d iterations (%s); metric %.4f",
        method.GetOptimizerIteration(),
        method.GetOptimizerStopConditionDescription(),
        method.GetMetricValue(),
    )
    return sitk.Euler3DTransform(method.GetInitialTransform())


def transform_to_text(transform: sitk.Transform) -> str:
    """Serialize an ITK transform in the ITK text format (``#Insight Transform File V1.0``)."""
    # SimpleITK only writes transforms to files, so go through a private temporary folder.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "transform.tfm"
        sitk.WriteTransform(transform, str(path))
        return path.read_text()


def save_transform(
    transform: sitk.Transform, path: io.PathLike, *, overwrite: bool = False
) -> Path:
    """Write an ITK transform file atomically."""
    return io.write_bytes_atomic(path, transform_to_text(transform).encode(), overwrite=overwrite)


def load_transform(path: io.PathLike) -> sitk.Transform:
    """Read an ITK transform file (``.tfm`` or ``.txt``)."""
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise PreprocessingError(
            f"{path}: cannot read this ITK transform file ({error})."
        ) from error


def mean_displacement_mm(
    first: sitk.Transform,
    second: sitk.Transform,
    points_lps: npt.NDArray[np.float64],
) -> float:
    """Return the mean distance in mm between where two transforms send the same points."""
    distances = [
        np.linalg.norm(
            np.subtract(first.TransformPoint(tuple(point)), second.TransformPoint(tuple(point)))
        )
        for point in points_lps
    ]
    return float(np.mean(distances))
