"""The network grid: RAS axial slices at 1 mm in-plane, and the way back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from wmhseg.convert import ras_affine
from wmhseg.slicing import IN_PLANE_SPACING_MM, from_network_grid, to_network_grid


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    voxels = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ voxels + affine[:3, 3]


AFFINES = {
    "LPS 0.72 mm, 4 mm slices": np.diag([-0.72, -0.72, 4.0, 1.0]),
    "LAS 1 mm": np.diag([-1.0, 1.0, 1.0, 1.0]),
    "sagittal-stored PSR": np.array(
        [[0.0, 0.0, 1.2, -20.0], [-0.9, 0.0, 0.0, 30.0], [0.0, -0.9, 0.0, 10.0], [0, 0, 0, 1]]
    ),
}


@pytest.mark.parametrize("name", AFFINES)
def test_network_grid_is_ras_at_1mm(name: str) -> None:
    affine = AFFINES[name]
    data = np.zeros((40, 44, 24), dtype=np.float32)
    data[5:15, 6:10, 8:12] = 1.0
    data[5:9, 6:20, 8:12] = 1.0

    network, grid = to_network_grid(data, affine)
    network_affine = ras_affine(affine, data.shape) @ np.diag(
        [
            grid.ras_shape[0] / grid.network_shape[0],
            grid.ras_shape[1] / grid.network_shape[1],
            1.0,
            1.0,
        ]
    )

    assert nib.aff2axcodes(ras_affine(affine, data.shape)) == ("R", "A", "S")
    assert grid.network_spacing_mm[:2] == (IN_PLANE_SPACING_MM, IN_PLANE_SPACING_MM)
    in_plane = np.array(grid.ras_spacing_mm[:2]) * np.array(grid.ras_shape[:2])
    assert np.allclose(np.array(grid.network_shape[:2]), np.round(in_plane), atol=1)
    # The marker's world position survives within about one network voxel.
    shift = _world_centroid(network > 0.5, network_affine) - _world_centroid(data, affine)
    assert np.linalg.norm(shift) < 1.5


@pytest.mark.parametrize("name", AFFINES)
def test_network_grid_round_trip_labels(name: str) -> None:
    affine = AFFINES[name]
    rng = np.random.default_rng(0)
    labels = np.zeros((30, 34, 12), dtype=np.uint8)
    labels[10:20, 12:22, 3:9] = 1
    labels[rng.random(labels.shape) > 0.999] = 2

    network, grid = to_network_grid(labels, affine, is_label=True)
    restored = from_network_grid(network, grid, is_label=True)

    assert network.dtype == np.uint8
    assert restored.shape == labels.shape
    assert set(np.unique(restored)) <= {0, 1, 2}
    block = labels == 1
    dice = 2 * np.sum(block & (restored == 1)) / (block.sum() + np.sum(restored == 1))
    assert dice > 0.9


def test_network_grid_identity_for_ras_1mm() -> None:
    data = np.arange(6 * 7 * 3, dtype=np.float32).reshape(6, 7, 3)
    network, grid = to_network_grid(data, np.eye(4))

    assert np.array_equal(network, data)
    assert np.array_equal(from_network_grid(network, grid), data)


def test_from_network_grid_rejects_wrong_shape() -> None:
    _, grid = to_network_grid(np.ones((8, 8, 4), dtype=np.float32), np.diag([0.5, 0.5, 2, 1]))

    with pytest.raises(ValueError, match="expected shape"):
        from_network_grid(np.zeros((3, 3, 3), dtype=np.float32), grid)
