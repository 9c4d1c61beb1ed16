"""Metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wmhseg import metrics


def _empty(shape: tuple[int, int, int] = (6, 6, 4)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def test_dice_partial_overlap() -> None:
    prediction, truth = _empty(), _empty()
    prediction[0, 0:3, 0] = 1  # 3 voxels
    truth[0, 2:4, 0] = 1  # 2 voxels, 1 shared
    assert metrics.dice(prediction, truth) == pytest.approx(2 * 1 / 5)


def test_dice_both_empty() -> None:
    assert metrics.dice(_empty(), _empty()) == 1.0


def test_dice_empty_truth() -> None:
    prediction = _empty()
    prediction[1, 1, 1] = 1
    value = metrics.dice(prediction, _empty())
    assert value == 0.0


def test_dice_empty_prediction() -> None:
    truth = _empty()
    truth[1, 1, 1] = 1
    assert metrics.dice(_empty(), truth) == 0.0


def test_dice_ignores_label_two() -> None:
    prediction, truth = _empty(), _empty()
    prediction[0, 0, 0] = 1
    truth[0, 0, 0] = 1
    prediction[3, 3, 3] = 1  # would be a false positive, but truth says "ignore" here
    truth[3, 3, 3] = 2
    assert metrics.dice(prediction, truth) == 1.0


def test_dice_label_two_only_truth() -> None:
    truth = _empty()
    truth[2, 2, 2] = 2
    prediction = truth.copy()
    assert metrics.dice(prediction, truth) == 1.0


def test_hd95_single_voxels_uses_spacing() -> None:
    prediction, truth = _empty(), _empty()
    prediction[0, 0, 0] = 1
    truth[3, 0, 0] = 1
    assert metrics.hausdorff_95(prediction, truth, (2.0, 1.0, 1.0)) == pytest.approx(6.0)


def test_hd95_interpolated_percentile() -> None:
    # Directed distances prediction→truth are [0, 10] mm, so the 95th percentile is 9.5 mm;
    # truth→prediction is [0].
    prediction = np.zeros((2, 2, 5), dtype=np.uint8)
    truth = np.zeros((2, 2, 5), dtype=np.uint8)
    truth[0, 0, 0] = 1
    prediction[0, 0, 0] = 1
    prediction[0, 0, 4] = 1
    assert metrics.hausdorff_95(prediction, truth, (1.0, 1.0, 2.5)) == pytest.approx(9.5)


def test_hd95_shifted_square_uses_boundaries() -> None:
    # A 3×3 square and the same square shifted by one voxel: the boundaries differ by at most
    # 1 voxel and half of the boundary points coincide, so the 95th percentile is 1 voxel.
    prediction, truth = _empty(), _empty()
    truth[1:4, 1:4, 1] = 1
    prediction[2:5, 1:4, 1] = 1
    assert metrics.hausdorff_95(prediction, truth, (0.5, 0.5, 3.0)) == pytest.approx(0.5)


def test_hd95_identical_masks() -> None:
    mask = _empty()
    mask[1:4, 1:4, 0:2] = 1
    assert metrics.hausdorff_95(mask, mask) == 0.0


def test_hd95_both_empty() -> None:
    assert metrics.hausdorff_95(_empty(), _empty()) == 0.0


def test_hd95_one_empty_is_inf() -> None:
    prediction = _empty()
    prediction[1, 1, 1] = 1
    assert metrics.hausdorff_95(prediction, _empty()) == math.inf
    assert metrics.hausdorff_95(_empty(), prediction) == math.inf


def test_avd_percent() -> None:
    prediction, truth = _empty(), _empty()
    truth[0, 0:4, 0] = 1
    prediction[1, 0:6, 0] = 1
    assert metrics.absolute_volume_difference(prediction, truth) == pytest.approx(50.0)


def test_avd_empty_truth() -> None:
    prediction = _empty()
    prediction[1, 1, 1] = 1
    assert metrics.absolute_volume_difference(_empty(), _empty()) == 0.0
    assert metrics.absolute_volume_difference(prediction, _empty()) == math.inf


def test_lesion_detection_half_found() -> None:
    truth, prediction = _empty(), _empty()
    truth[0, 0, 0] = 1  # lesion A, found
    truth[5, 5, 3] = 1  # lesion B, missed
    prediction[0, 0, 0] = 1
    prediction[0, 5, 0] = 1  # false lesion
    recall, f1 = metrics.lesion_detection(prediction, truth)
    assert recall == pytest.approx(0.5)
    assert f1 == pytest.approx(0.5)


def test_lesion_detection_precision_differs() -> None:
    # 1 of 2 true lesions found (recall 0.5) by the only predicted lesion (precision 1.0).
    truth, prediction = _empty(), _empty()
    truth[0, 0, 0] = 1
    truth[5, 5, 3] = 1
    prediction[0, 0:2, 0] = 1
    recall, f1 = metrics.lesion_detection(prediction, truth)
    assert recall == pytest.approx(0.5)
    assert f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_lesion_detection_empty_rules() -> None:
    truth = _empty()
    truth[2, 2, 2] = 1
    assert metrics.lesion_detection(_empty(), _empty()) == (1.0, 1.0)
    assert metrics.lesion_detection(_empty(), truth) == (0.0, 0.0)
    recall, f1 = metrics.lesion_detection(truth, _empty())
    assert recall == 1.0
    assert f1 == 0.0


def test_lesions_diagonal_neighbours_connected() -> None:
    mask = _empty()
    mask[1, 1, 1] = 1
    mask[2, 2, 2] = 1  # touches the first only at a corner
    mask[5, 5, 0] = 1
    assert metrics.count_lesions(mask) == 2


def test_score_volumes_in_ml() -> None:
    truth, prediction = _empty(), _empty()
    truth[0, 0:4, 0] = 1
    prediction[0, 0:2, 0] = 1
    scores = metrics.score(prediction, truth, (1.0, 1.0, 5.0))
    assert scores.truth_volume_ml == pytest.approx(4 * 5 / 1000)
    assert scores.prediction_volume_ml == pytest.approx(2 * 5 / 1000)
    assert scores.dice == pytest.approx(2 * 2 / 6)


@pytest.mark.parametrize(
    ("prediction_voxels", "truth_voxels"),
    [(0, 0), (1, 0), (0, 1)],
)
def test_score_never_nan(prediction_voxels: int, truth_voxels: int) -> None:
    prediction, truth = _empty(), _empty()
    prediction.reshape(-1)[:prediction_voxels] = 1
    truth.reshape(-1)[-1:][:truth_voxels] = 1
    values = metrics.score(prediction, truth).as_dict()
    assert not any(math.isnan(float(value)) for value in values.values())


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
