"""Tests of slice augmentation."""

from __future__ import annotations

import numpy as np

from wmhseg.augment import AugmentationParameters, apply_augmentation, draw_augmentation


def _slice() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((32, 32), dtype=np.float32)
    image[8:24, 10:20] = 1.0
    label = np.zeros((32, 32), dtype=np.uint8)
    label[12:16, 12:16] = 1
    label[20:22, 12:14] = 2
    return image, label


def test_augmentation_same_seed_same_parameters() -> None:
    first = draw_augmentation(np.random.default_rng(7))
    second = draw_augmentation(np.random.default_rng(7))
    assert first == second


def test_augmentation_labels_keep_values() -> None:
    image, label = _slice()
    params = AugmentationParameters(rotation_deg=9.0, shear=0.08, scale=1.07)
    _, warped = apply_augmentation(image, label, params)
    assert set(np.unique(warped)) <= {0, 1, 2}


def test_augmentation_keeps_shape_and_dtype() -> None:
    image, label = _slice()
    warped_image, warped_label = apply_augmentation(
        image, label, draw_augmentation(np.random.default_rng(1))
    )
    assert warped_image.shape == image.shape
    assert warped_image.dtype == np.float32
    assert warped_label.dtype == np.uint8


def test_augmentation_rotation_moves_lesion() -> None:
    image, label = _slice()
    _, warped = apply_augmentation(image, label, AugmentationParameters(90.0, 0.0, 1.0))
    assert not np.array_equal(warped == 1, label == 1)
    assert int((warped == 1).sum()) == int((label == 1).sum())
