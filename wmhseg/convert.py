"""Conversions between nibabel, ANTs, SimpleITK and array/tensor layouts.

NIfTI affines (nibabel) map voxels to RAS+ world coordinates. ITK, and so ANTs and SimpleITK,
store origin and direction in LPS+ coordinates, and SimpleITK's arrays are indexed (z, y, x).
Networks take batches of axial slices shaped (N, 1, H, W). These are the only places in wmhseg
where that is handled; no other module converts on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import ants
    import SimpleITK as sitk

# Flips x and y between RAS+ (NIfTI) and LPS+ (ITK).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

_RAS_ORIENTATION = np.array([[0, 1], [1, 1], [2, 1]])


def affine_to_itk(
    affine: npt.ArrayLike,
) -> tuple[tuple[float, ...], tuple[float, ...], npt.NDArray[np.float64]]:
    """Split a RAS+ NIfTI affine into ITK (LPS+) origin, spacing and 3×3 direction."""
    matrix = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    unit = matrix[:3, :3] / spacing
    # ITK stores only a direction and a spacing, so it cannot represent shear. io.load_image
    # rejects sheared files, and this check keeps a computed affine from being distorted silently.
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-4):
        raise ValueError(f"affine is sheared and has no ITK equivalent:\n{matrix}")
    direction = RAS_TO_LPS @ (matrix[:3, :3] / spacing)
    origin = RAS_TO_LPS @ matrix[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), direction


def itk_to_affine(
    origin: npt.ArrayLike, spacing: npt.ArrayLike, direction: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Build a RAS+ NIfTI affine from ITK (LPS+) origin, spacing and 3×3 direction."""
    affine = np.eye(4)
    affine[:3, :3] = (
        RAS_TO_LPS
        @ np.asarray(direction, dtype=np.float64).reshape(3, 3)
        @ np.diag(np.asarray(spacing, dtype=np.float64))
    )
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(origin, dtype=np.float64)
    return affine


def nib_to_ants(image: nib.Nifti1Image) -> ants.ANTsImage:
    """Convert a 3D nibabel image to an ANTs image with the same world geometry."""
    import ants

    origin, spacing, direction = affine_to_itk(image.affine)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    # ANTs arrays use nibabel's (i, j, k) voxel order.
    return ants.from_numpy(data, origin=origin, spacing=spacing, direction=direction)


def ants_to_nib(image: ants.ANTsImage) -> nib.Nifti1Image:
    """Convert a 3D ANTs image to a float32 nibabel image with the same world geometry."""
    affine = itk_to_affine(image.origin, image.spacing, image.direction)
    return nib.Nifti1Image(np.asarray(image.numpy(), dtype=np.float32), affine)


def nib_to_sitk(image: nib.Nifti1Image) -> sitk.Image:
    """Convert a 3D nibabel image to a float32 SimpleITK image with the same world geometry."""
    import SimpleITK as sitk

    origin, spacing, direction = affine_to_itk(image.affine)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    # SimpleITK arrays are indexed (z, y, x).
    converted = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    converted.SetOrigin(origin)
    converted.SetSpacing(spacing)
    converted.SetDirection(tuple(direction.ravel().tolist()))
    return converted


def sitk_to_nib(image: sitk.Image) -> nib.Nifti1Image:
    """Convert a 3D SimpleITK image to a nibabel image with the same world geometry."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected a 3D scalar SimpleITK image, got dimension {image.GetDimension()} with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    affine = itk_to_affine(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return nib.Nifti1Image(np.ascontiguousarray(data), affine)


def to_ras(data: npt.NDArray[np.generic], affine: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """Reorder and flip voxel axes so that they run to Right, Anterior and Superior.

    After this, ``array[:, :, k]`` is an axial slice seen from above with the patient's right at
    high first index, whatever the file's storage orientation (LAS, LPS, PSR, ...).
    """
    orientation = nib.io_orientation(np.asarray(affine))
    transform = nib.orientations.ornt_transform(orientation, _RAS_ORIENTATION)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))


def from_ras(data: npt.NDArray[np.generic], affine: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """Undo :func:`to_ras`: return an array in the voxel order of the image with ``affine``."""
    orientation = nib.io_orientation(np.asarray(affine))
    transform = nib.orientations.ornt_transform(_RAS_ORIENTATION, orientation)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, transform))


def ras_affine(affine: npt.ArrayLike, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Return the affine of the array that :func:`to_ras` makes from an image of ``shape``."""
    matrix = np.asarray(affine, dtype=np.float64)
    orientation = nib.io_orientation(matrix)
    transform = nib.orientations.ornt_transform(orientation, _RAS_ORIENTATION)
    return matrix @ nib.orientations.inv_ornt_aff(transform, shape[:3])


def volume_to_batch(volume: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Turn a network-grid volume ``(H, W, N)`` into a batch of axial slices ``(N, 1, H, W)``.

    ``volume[:, :, k]`` becomes ``batch[k, 0]``; pass the result to ``torch.from_numpy``.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (H, W, N), got shape {volume.shape}")
    return np.ascontiguousarray(np.moveaxis(volume, 2, 0)[:, None], dtype=np.float32)


def batch_to_volume(batch: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """Undo :func:`volume_to_batch`: turn ``(N, 1, H, W)`` network output into ``(H, W, N)``.

    Give it ``tensor.detach().cpu().numpy()``; the dtype is kept.
    """
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ValueError(f"expected a batch of shape (N, 1, H, W), got {batch.shape}")
    return np.ascontiguousarray(np.moveaxis(batch[:, 0], 0, 2))
