"""Random in-plane affine augmentation (rotation, shear, scaling) of 2D slices.

Parameters are drawn first (:func:`draw_augmentation`) and applied second
(:func:`apply_augmentation`), so a run with the same seed draws the same transforms whatever
else changes. Images use linear interpolation; labels use nearest-neighbour interpolation, so
they keep their values (0, 1 and the ignore label 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import affine_transform


@dataclass(frozen=True)
class AugmentationRange:
    """Maximum absolute rotation (degrees), shear (fraction) and relative scale change."""

    rotation_deg: float = 10.0
    shear: float = 0.1
    scale: float = 0.1


@dataclass(frozen=True)
class AugmentationParameters:
    """One drawn in-plane transform."""

    rotation_deg: float
    shear: float
    scale: float

    def matrix(self) -> npt.NDArray[np.float64]:
        """Return the 2×2 matrix that maps output coordinates to input coordinates."""
        angle = np.deg2rad(self.rotation_deg)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shear = np.array([[1.0, self.shear], [0.0, 1.0]])
        return rotation @ shear / self.scale


IDENTITY = AugmentationParameters(rotation_deg=0.0, shear=0.0, scale=1.0)


def draw_augmentation(
    rng: np.random.Generator, limits: AugmentationRange = AugmentationRange()
) -> AugmentationParameters:
    """Draw rotation, shear and scale uniformly within ``limits``."""
    return AugmentationParameters(
        rotation_deg=float(rng.uniform(-limits.rotation_deg, limits.rotation_deg)),
        shear=float(rng.uniform(-limits.shear, limits.shear)),
        scale=float(rng.uniform(1.0 - limits.scale, 1.0 + limits.scale)),
    )


def apply_augmentation(
    image: npt.NDArray[np.float32],
    label: npt.NDArray[np.uint8],
    params: AugmentationParameters,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Transform a 2D slice and its label about the slice centre; shapes stay the same."""
    if params == IDENTITY:
        return image, label
    matrix = params.matrix()
    centre = (np.asarray(image.shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - matrix @ centre
    warped = affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    warped_label = affine_transform(label, matrix, offset=offset, order=0, mode="constant", cval=0)
    return warped.astype(np.float32), warped_label.astype(np.uint8)
