"""Segmentation metrics for WMH masks, defined as in the MICCAI 2017 WMH segmentation challenge.

All functions take a binary prediction and a truth label array on the same voxel grid. Truth
label 1 is WMH; truth label 2 marks other pathology that is ignored: those voxels are removed
from the prediction and from the truth before any metric is computed, as the challenge's
evaluation script does.

Rules for empty masks, chosen so that no metric is ever NaN:

* Dice: both empty → 1.0 (perfect agreement), exactly one empty → 0.0.
* HD95: both empty → 0.0; exactly one empty → ``inf`` (the distance from a point to an empty
  set is the infimum over no points). CSV files store it as ``inf``.
* Absolute volume difference: both empty → 0.0; empty truth, non-empty prediction → ``inf``.
* Lesion-wise recall: no true lesions → 1.0. Lesion-wise precision (used in F1): no detected
  lesions → 1.0. F1 is 0.0 when precision and recall are both 0. These are the challenge's rules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree

# Lesions are 26-connected (the challenge's fully connected components in 3D).
LESION_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)

# Boundary voxels are those removed by an in-plane 3×3 erosion. The challenge's script also
# erodes in 2D only (SimpleITK BinaryErode with radius (1, 1, 0)).
# NOTE: ITK's ball kernel of radius 1 may differ from this full 3×3 square at lesion corners.
_BOUNDARY_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_BOUNDARY_STRUCTURE[:, :, 1] = True

IGNORE_LABEL = 2


@dataclass(frozen=True)
class SegmentationScores:
    """Metrics of one prediction against one truth; see the module docstring for empty masks."""

    dice: float
    hd95_mm: float
    avd_percent: float
    lesion_recall: float
    lesion_f1: float
    truth_volume_ml: float
    prediction_volume_ml: float
    truth_lesions: int
    prediction_lesions: int

    def as_dict(self) -> dict[str, float | int]:
        """Return the scores as a flat dict (CSV column → value)."""
        return asdict(self)


def split_truth(
    prediction: npt.ArrayLike, truth: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return (prediction, truth) as boolean WMH masks with ignored voxels removed from both."""
    predicted = np.asarray(prediction) > 0
    labels = np.asarray(truth)
    if predicted.shape != labels.shape:
        raise ValueError(
            f"prediction shape {predicted.shape} differs from truth shape {labels.shape}"
        )
    keep = labels != IGNORE_LABEL
    return predicted & keep, labels == 1


def dice(prediction: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Return the Dice coefficient 2|P∩T| / (|P| + |T|); 1.0 when both masks are empty."""
    predicted, true = split_truth(prediction, truth)
    total = int(predicted.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((predicted & true).sum()) / total


def _boundary(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    # border_value=1: voxels on the array edge are not boundary just for touching the edge,
    # matching ITK's BinaryErode default that the challenge script relies on.
    eroded = ndimage.binary_erosion(mask, structure=_BOUNDARY_STRUCTURE, border_value=1)
    return mask & ~eroded


def hausdorff_95(
    prediction: npt.ArrayLike,
    truth: npt.ArrayLike,
    spacing_mm: tuple[float, float, float] | npt.ArrayLike = (1.0, 1.0, 1.0),
) -> float:
    """Return the 95th-percentile symmetric Hausdorff distance (mm) between mask boundaries.

    Each boundary voxel of one mask is matched to the nearest boundary voxel of the other; the
    result is the larger of the two directed 95th percentiles (linear interpolation, as
    :func:`numpy.percentile`). ``spacing_mm`` is the voxel size along each array axis.
    """
    predicted, true = split_truth(prediction, truth)
    has_prediction, has_truth = bool(predicted.any()), bool(true.any())
    if not has_prediction and not has_truth:
        return 0.0
    if not (has_prediction and has_truth):
        return math.inf

    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive voxel sizes, got {spacing.tolist()}")
    predicted_points = np.argwhere(_boundary(predicted)) * spacing
    true_points = np.argwhere(_boundary(true)) * spacing

    predicted_to_true = cKDTree(true_points).query(predicted_points, k=1)[0]
    true_to_predicted = cKDTree(predicted_points).query(true_points, k=1)[0]
    return float(
        max(np.percentile(predicted_to_true, 95), np.percentile(true_to_predicted, 95))
    )


def absolute_volume_difference(prediction: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Return |V_pred − V_truth| / V_truth × 100 (%).

    0.0 when both masks are empty; inf when only the truth is empty.
    """
    predicted, true = split_truth(prediction, truth)
    true_count = int(true.sum())
    difference = abs(int(predicted.sum()) - true_count)
    if true_count == 0:
        return 0.0 if difference == 0 else math.inf
    return 100.0 * difference / true_count


def label_lesions(mask: npt.ArrayLike) -> tuple[npt.NDArray[np.int32], int]:
    """Label 26-connected lesions; return (label array, number of lesions)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=LESION_CONNECTIVITY)
    return labels.astype(np.int32), int(count)


def count_lesions(mask: npt.ArrayLike) -> int:
    """Return the number of 26-connected lesions in a binary mask."""
    return label_lesions(mask)[1]


def lesion_detection(prediction: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[float, float]:
    """Return lesion-wise (recall, F1).

    Recall is the fraction of true lesions that share at least one voxel with the prediction.
    Precision is the fraction of predicted lesions that share at least one voxel with the truth.
    F1 is their harmonic mean.
    """
    predicted, true = split_truth(prediction, truth)
    true_labels, true_count = label_lesions(true)
    predicted_labels, predicted_count = label_lesions(predicted)

    if true_count == 0:
        recall = 1.0
    else:
        detected = np.unique(true_labels[predicted & (true_labels > 0)])
        recall = detected.size / true_count
    if predicted_count == 0:
        precision = 1.0
    else:
        hits = np.unique(predicted_labels[true & (predicted_labels > 0)])
        precision = hits.size / predicted_count

    if precision + recall == 0.0:
        return recall, 0.0
    return recall, 2.0 * precision * recall / (precision + recall)


def score(
    prediction: npt.ArrayLike,
    truth: npt.ArrayLike,
    spacing_mm: tuple[float, float, float] | npt.ArrayLike = (1.0, 1.0, 1.0),
) -> SegmentationScores:
    """Compute every metric of this module for one prediction and its truth."""
    predicted, true = split_truth(prediction, truth)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    recall, f1 = lesion_detection(predicted, true)
    return SegmentationScores(
        dice=dice(predicted, true),
        hd95_mm=hausdorff_95(predicted, true, spacing),
        avd_percent=absolute_volume_difference(predicted, true),
        lesion_recall=recall,
        lesion_f1=f1,
        truth_volume_ml=int(true.sum()) * voxel_ml,
        prediction_volume_ml=int(predicted.sum()) * voxel_ml,
        truth_lesions=count_lesions(true),
        prediction_lesions=count_lesions(predicted),
    )
