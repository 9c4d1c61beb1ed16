"""Conversions between nibabel, ANTs, SimpleITK and network batches keep world positions.

An L-shaped marker sits in one corner of a 24×28×20 volume whose affine flips x (diag(-1, 1, 1),
origin (12, -14, -10)). After each conversion the marker's world-space centroid, computed with
the target library's own index-to-world mapping, must stay within half a voxel. A left-right
or anterior-posterior flip moves it by many voxels.
"""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk
import torch

from wmhseg import convert, slicing

SHAPE = (24, 28, 20)
HALF_VOXEL_MM = 0.5


def marker_affine() -> npt.NDArray[np.float64]:
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (12.0, -14.0, -10.0)
    return affine


def marker_volume() -> npt.NDArray[np.float32]:
    """Return a volume with an L-shaped marker near voxel (2, 2, 2); the L has no symmetry."""
    data = np.zeros(SHAPE, dtype=np.float32)
    data[2:9, 2, 2:4] = 1.0  # long arm along i
    data[2, 2:6, 2:4] = 1.0  # short arm along j
    return data


def marker_image() -> nib.Nifti1Image:
    return nib.Nifti1Image(marker_volume(), marker_affine())


def world_centroid(data: npt.NDArray[np.generic], affine: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the RAS world centroid of voxels above 0.5, using a NIfTI affine."""
    indices = np.argwhere(np.asarray(data) > 0.5).mean(axis=0)
    return (np.asarray(affine) @ np.append(indices, 1.0))[:3]


def lps_to_ras(point: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(point, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


EXPECTED = world_centroid(marker_volume(), marker_affine())


def test_marker_expected_corner() -> None:
    # x is flipped, so voxel i = 2..8 lies at world x = 10..4 (right of the origin's left side).
    assert EXPECTED[0] == pytest.approx(12.0 - np.mean(np.argwhere(marker_volume() > 0)[:, 0]))


def test_nib_to_ants_marker() -> None:
    image = convert.nib_to_ants(marker_image())
    # ANTs' own intensity centroid, in its LPS physical space.
    physical = ants.get_center_of_mass(image)
    assert np.linalg.norm(lps_to_ras(physical) - EXPECTED) < HALF_VOXEL_MM


def test_ants_to_nib_marker() -> None:
    restored = convert.ants_to_nib(convert.nib_to_ants(marker_image()))
    assert np.linalg.norm(world_centroid(restored.get_fdata(), restored.affine) - EXPECTED) < (
        HALF_VOXEL_MM
    )


def test_ants_resample_marker() -> None:
    # A real ANTs operation: resample onto a 2 mm grid, then convert back.
    image = convert.nib_to_ants(marker_image())
    resampled = ants.resample_image(image, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    restored = convert.ants_to_nib(resampled)
    centroid = world_centroid(restored.get_fdata(), restored.affine)
    assert np.linalg.norm(centroid - EXPECTED) < 2 * HALF_VOXEL_MM * 2.0


def test_nib_to_sitk_marker() -> None:
    image = convert.nib_to_sitk(marker_image())
    # SimpleITK arrays are (z, y, x); its index order is (x, y, z).
    zyx = np.argwhere(sitk.GetArrayFromImage(image) > 0.5).mean(axis=0)
    physical = image.TransformContinuousIndexToPhysicalPoint(tuple(zyx[::-1].tolist()))
    assert np.linalg.norm(lps_to_ras(physical) - EXPECTED) < HALF_VOXEL_MM


def test_sitk_to_nib_marker() -> None:
    restored = convert.sitk_to_nib(convert.nib_to_sitk(marker_image()))
    assert np.linalg.norm(world_centroid(restored.get_fdata(), restored.affine) - EXPECTED) < (
        HALF_VOXEL_MM
    )


def test_sitk_resample_marker() -> None:
    # Resample onto a grid stored in another orientation (LPS, 1 mm) with an identity transform.
    moving = convert.nib_to_sitk(marker_image())
    target_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    target_affine[:3, 3] = (30.0, 30.0, -20.0)
    target = convert.nib_to_sitk(nib.Nifti1Image(np.zeros((40, 50, 30), np.float32), target_affine))
    resampled = sitk.Resample(moving, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    restored = convert.sitk_to_nib(resampled)
    centroid = world_centroid(restored.get_fdata(), restored.affine)
    assert np.linalg.norm(centroid - EXPECTED) < HALF_VOXEL_MM


def test_sitk_keeps_direction() -> None:
    image = convert.nib_to_sitk(marker_image())
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.diag([1.0, -1.0, 1.0]))


def test_itk_affine_round_trip() -> None:
    affine = np.array(
        [
            [0.0, 0.0, -3.0, 40.0],
            [-0.9 * np.cos(0.2), 0.9 * np.sin(0.2), 0.0, 12.5],
            [0.9 * np.sin(0.2), 0.9 * np.cos(0.2), 0.0, -7.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    origin, spacing, direction = convert.affine_to_itk(affine)
    assert np.allclose(convert.itk_to_affine(origin, spacing, direction), affine)


def test_itk_rejects_shear() -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.15
    with pytest.raises(ValueError, match="sheared"):
        convert.affine_to_itk(sheared)


def test_sitk_to_nib_rejects_2d() -> None:
    with pytest.raises(ValueError, match="3D scalar"):
        convert.sitk_to_nib(sitk.Image(4, 4, sitk.sitkFloat32))


@pytest.mark.parametrize(
    "flip", [(-1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, 1.0)], ids=["LAS", "LPS", "RAS"]
)
def test_torch_batch_marker(flip: tuple[float, float, float]) -> None:
    affine = np.diag([*flip, 1.0])
    affine[:3, 3] = (12.0, -14.0, -10.0)
    data = marker_volume()
    expected = world_centroid(data, affine)

    volume, grid = slicing.to_network_grid(data, affine)
    batch = torch.from_numpy(convert.volume_to_batch(volume))
    assert tuple(batch.shape) == (SHAPE[2], 1, SHAPE[0], SHAPE[1])

    # The network sees RAS axial slices: batch[k, 0, i, j] is RAS voxel (i, j, k).
    on_network = convert.batch_to_volume(batch.numpy())
    network_affine = convert.ras_affine(affine, SHAPE)
    assert np.linalg.norm(world_centroid(on_network, network_affine) - expected) < HALF_VOXEL_MM

    # A network output (here an int64 copy on the torch side) maps back to the original grid.
    output = convert.batch_to_volume((batch > 0.5).to(torch.int64).numpy())
    restored = slicing.from_network_grid(output, grid, is_label=True)
    assert np.linalg.norm(world_centroid(restored, affine) - expected) < HALF_VOXEL_MM


def test_torch_batch_resampled_marker() -> None:
    # 0.9 mm in-plane voxels are resampled to 1 mm on the network grid and back.
    affine = np.diag([-0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = (12.0, -14.0, -10.0)
    data = marker_volume()
    volume, grid = slicing.to_network_grid(data, affine, is_label=True)
    output = convert.batch_to_volume(convert.volume_to_batch(volume))
    restored = slicing.from_network_grid(output, grid, is_label=True)
    distance = np.linalg.norm(world_centroid(restored, affine) - world_centroid(data, affine))
    assert distance < 0.5 * 0.9


def test_batch_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="3D volume"):
        convert.volume_to_batch(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="N, 1, H, W"):
        convert.batch_to_volume(np.zeros((2, 3, 4, 4)))
