"""The network's view of a volume: axial slices in RAS order at a fixed in-plane voxel size.

Training and inference both go through :func:`to_network_grid`, so that a model receives slices
of the same orientation and millimetre scale whatever the scanner wrote (LPS raw scans at 0.72 mm,
LAS MNI images at 1 mm, ...). :func:`from_network_grid` maps a network output back onto the
voxel grid of the original image. Slices are never resampled across the slice axis, because
clinical FLAIRs are often 3 to 5 mm thick and 2D networks work slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from skimage.transform import resize

from wmhseg.convert import from_ras, ras_affine, to_ras

# In-plane voxel size (mm) of every slice given to the network.
IN_PLANE_SPACING_MM = 1.0


@dataclass(frozen=True)
class NetworkGrid:
    """Record of the mapping from an image's voxel grid to the network grid, for undoing it."""

    affine: tuple[tuple[float, ...], ...]
    original_shape: tuple[int, int, int]
    ras_shape: tuple[int, int, int]
    network_shape: tuple[int, int, int]
    ras_spacing_mm: tuple[float, float, float]

    @property
    def network_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) on the network grid; the slice axis keeps its own spacing."""
        return (IN_PLANE_SPACING_MM, IN_PLANE_SPACING_MM, self.ras_spacing_mm[2])


def plan_network_grid(
    affine: npt.ArrayLike, shape: tuple[int, ...], spacing_mm: float = IN_PLANE_SPACING_MM
) -> NetworkGrid:
    """Work out the RAS reorientation and in-plane resampling for an image."""
    matrix = np.asarray(affine, dtype=np.float64)
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    reoriented = ras_affine(matrix, shape3)
    spacing = np.linalg.norm(reoriented[:3, :3], axis=0)

    # The RAS shape is the original shape with axes permuted like the affine's columns.
    order = np.argmax(np.abs(np.linalg.inv(matrix[:3, :3]) @ reoriented[:3, :3]), axis=0)
    ras_shape = tuple(int(shape3[axis]) for axis in order)

    network_shape = (
        max(1, round(ras_shape[0] * spacing[0] / spacing_mm)),
        max(1, round(ras_shape[1] * spacing[1] / spacing_mm)),
        ras_shape[2],
    )
    return NetworkGrid(
        affine=tuple(tuple(float(v) for v in row) for row in matrix),
        original_shape=shape3,
        ras_shape=(ras_shape[0], ras_shape[1], ras_shape[2]),
        network_shape=network_shape,
        ras_spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
    )


def _resize(
    data: npt.NDArray[np.generic], shape: tuple[int, int, int], *, is_label: bool
) -> npt.NDArray[np.generic]:
    # Nearest neighbour keeps labels exact; linear suits intensities and probabilities.
    if tuple(data.shape) == shape:
        return data
    return np.asarray(
        resize(
            data.astype(np.float32),
            shape,
            order=0 if is_label else 1,
            preserve_range=True,
            anti_aliasing=False,
        )
    )


def to_network_grid(
    data: npt.NDArray[np.generic],
    affine: npt.ArrayLike,
    *,
    is_label: bool = False,
) -> tuple[npt.NDArray[np.generic], NetworkGrid]:
    """Reorient a volume to RAS and resample its axial planes to 1 mm voxels.

    Labels use nearest-neighbour interpolation and keep their dtype; images use linear
    interpolation and come back as float32. ``result[:, :, k]`` is axial slice ``k``.
    """
    grid = plan_network_grid(affine, data.shape)
    reoriented = to_ras(data, affine)
    resampled = _resize(reoriented, grid.network_shape, is_label=is_label)
    if is_label:
        return np.rint(resampled).astype(data.dtype), grid
    return np.asarray(resampled, dtype=np.float32), grid


def from_network_grid(
    data: npt.NDArray[np.generic], grid: NetworkGrid, *, is_label: bool = False
) -> npt.NDArray[np.generic]:
    """Map a volume on the network grid back to the original image's voxel grid.

    Probabilities use linear interpolation; labels use nearest-neighbour.
    """
    if tuple(data.shape) != grid.network_shape:
        raise ValueError(f"expected shape {grid.network_shape}, got {data.shape}")
    resampled = _resize(data, grid.ras_shape, is_label=is_label)
    restored = from_ras(np.asarray(resampled), np.asarray(grid.affine))
    if is_label:
        return np.rint(restored).astype(data.dtype)
    return np.asarray(restored, dtype=np.float32)
