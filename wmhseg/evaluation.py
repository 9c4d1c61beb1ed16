"""Score predicted WMH masks against truth label files, one row per pair.

Pairs come from explicit (prediction, truth) paths, a CSV file with ``prediction`` and ``truth``
columns, or two folders matched by file name. Both files of a pair must lie on the same voxel
grid; the metrics and their rules for empty masks are those of :mod:`wmhseg.metrics`.
"""

from __future__ import annotations

import csv
import io as text_io
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from wmhseg import io, metrics
from wmhseg.errors import InputImageError

logger = logging.getLogger(__name__)

# Grids whose affines differ by less than this (mm) are treated as the same grid.
GRID_TOLERANCE_MM = 1e-3

METRIC_NAMES = tuple(field.name for field in fields(metrics.SegmentationScores))
CSV_COLUMNS = ("prediction", "truth", *METRIC_NAMES)


@dataclass(frozen=True)
class PairResult:
    """Scores of one prediction file against one truth file."""

    prediction: Path
    truth: Path
    scores: metrics.SegmentationScores

    def as_row(self) -> dict[str, str | float | int]:
        """Return a CSV row: the two paths, then every metric."""
        paths = {"prediction": str(self.prediction), "truth": str(self.truth)}
        return {**paths, **self.scores.as_dict()}


@dataclass(frozen=True)
class MetricSummary:
    """Mean, standard deviation and median of one metric over pairs, ignoring infinite values."""

    name: str
    mean: float
    sd: float
    median: float
    n_finite: int
    n_infinite: int


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]
    zooms: tuple[float, float, float]


def _read_geometry(path: Path) -> _Geometry:
    # Header only; io.load_image would reject an all-zero truth as a constant image.
    raw = io.read_nifti_bytes(path)
    header_class = nib.Nifti2Header if raw[4:8] == b"n+2\x00" else nib.Nifti1Header
    header = header_class.from_fileobj(text_io.BytesIO(raw))
    shape = tuple(int(size) for size in header.get_data_shape())
    affine = io.choose_affine(path, header)
    zooms = tuple(float(zoom) for zoom in header.get_zooms()[:3])
    return _Geometry((shape[0], shape[1], shape[2]), affine, (zooms[0], zooms[1], zooms[2]))


def check_pair_grid(prediction: Path, truth: Path) -> _Geometry:
    """Raise :class:`InputImageError` naming both files unless they share a voxel grid."""
    predicted = _read_geometry(prediction)
    true = _read_geometry(truth)
    if predicted.shape != true.shape:
        raise InputImageError(
            prediction,
            f"shape {predicted.shape} differs from the truth {truth} with shape {true.shape}. "
            "Predict on the truth's image or resample the prediction onto its grid "
            "(nearest-neighbour).",
        )
    if not np.allclose(predicted.affine, true.affine, atol=GRID_TOLERANCE_MM):
        shown_prediction = np.array2string(predicted.affine[:3], precision=4, suppress_small=True)
        shown_truth = np.array2string(true.affine[:3], precision=4, suppress_small=True)
        raise InputImageError(
            prediction,
            f"affine differs from the truth {truth}:\nprediction\n{shown_prediction}\n"
            f"truth\n{shown_truth}\nResample the prediction onto the truth's grid "
            "(nearest-neighbour).",
        )
    return true


def evaluate_pair(prediction: str | Path, truth: str | Path) -> PairResult:
    """Score one predicted mask (values 0/1) against one truth (0, 1 WMH, 2 ignored)."""
    prediction, truth = Path(prediction), Path(truth)
    geometry = check_pair_grid(prediction, truth)
    predicted = io.load_label(prediction, max_label=1)
    true = io.load_label(truth, max_label=2)
    scores = metrics.score(predicted, true, geometry.zooms)
    logger.info("%s vs %s: Dice %.4f", prediction, truth, scores.dice)
    return PairResult(prediction, truth, scores)


def evaluate_pairs(
    pairs: Sequence[tuple[Path, Path]],
    *,
    on_pair_done: Callable[[PairResult], None] | None = None,
) -> list[PairResult]:
    """Score every pair in order; the first unreadable pair raises."""
    results = []
    for prediction, truth in pairs:
        result = evaluate_pair(prediction, truth)
        results.append(result)
        if on_pair_done is not None:
            on_pair_done(result)
    return results


def pairs_from_arguments(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Split ``PRED TRUTH [PRED TRUTH ...]`` into pairs."""
    if len(paths) % 2:
        raise InputImageError(
            None,
            f"got {len(paths)} paths; give them in PREDICTION TRUTH pairs "
            f"(the last one, {paths[-1]}, has no partner).",
        )
    return [(Path(paths[i]), Path(paths[i + 1])) for i in range(0, len(paths), 2)]


def pairs_from_csv(path: str | Path) -> list[tuple[Path, Path]]:
    """Read pairs from a CSV file with ``prediction`` and ``truth`` columns.

    Relative paths are taken relative to the CSV file's folder.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise InputImageError(path, f"cannot read the pairs file ({error.strerror}).") from error
    reader = csv.DictReader(text_io.StringIO(text))
    if reader.fieldnames is None or not {"prediction", "truth"} <= set(reader.fieldnames):
        raise InputImageError(
            path,
            f"pairs file needs the columns 'prediction' and 'truth'; found {reader.fieldnames}.",
        )
    pairs = []
    for row in reader:
        pairs.append((path.parent / row["prediction"], path.parent / row["truth"]))
    if not pairs:
        raise InputImageError(path, "pairs file has no rows.")
    return pairs


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputImageError(folder, "folder not found.")
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_file() and child.name.lower().endswith(io.NIFTI_SUFFIXES)
    )


def pairs_from_folders(
    prediction_dir: str | Path, truth_dir: str | Path
) -> list[tuple[Path, Path]]:
    """Match each truth file with the prediction of the same name, or ``<name>_wmh.nii.gz``.

    The second form is what ``wmhseg predict`` writes for an image called ``<name>``.
    """
    prediction_dir, truth_dir = Path(prediction_dir), Path(truth_dir)
    predictions = {io.strip_nifti_suffix(path): path for path in _nifti_files(prediction_dir)}
    pairs, missing = [], []
    for truth in _nifti_files(truth_dir):
        name = io.strip_nifti_suffix(truth)
        match = predictions.get(name) or predictions.get(f"{name}_wmh")
        if match is None:
            missing.append(truth.name)
        else:
            pairs.append((match, truth))
    if missing:
        raise InputImageError(
            prediction_dir,
            f"no prediction for the truth files {', '.join(missing)} of {truth_dir}; expected "
            "files of the same name or named <name>_wmh.nii.gz.",
        )
    if not pairs:
        raise InputImageError(truth_dir, "folder contains no .nii or .nii.gz files.")
    return pairs


def _format(value: str | float | int) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def results_to_csv(results: Sequence[PairResult]) -> str:
    """Return the results as CSV text, one row per pair; infinite values read ``inf``."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({key: _format(value) for key, value in result.as_row().items()})
    return buffer.getvalue()


def write_results_csv(
    results: Sequence[PairResult], path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write :func:`results_to_csv` atomically."""
    return io.write_bytes_atomic(path, results_to_csv(results).encode(), overwrite=overwrite)


def summarize(results: Sequence[PairResult]) -> list[MetricSummary]:
    """Summarize each metric over the pairs; infinite values are counted, not averaged."""
    summaries = []
    for name in METRIC_NAMES:
        values = [float(getattr(result.scores, name)) for result in results]
        finite = [value for value in values if math.isfinite(value)]
        summaries.append(
            MetricSummary(
                name=name,
                mean=statistics.fmean(finite) if finite else math.inf,
                sd=statistics.stdev(finite) if len(finite) > 1 else 0.0,
                median=statistics.median(finite) if finite else math.inf,
                n_finite=len(finite),
                n_infinite=len(values) - len(finite),
            )
        )
    return summaries
