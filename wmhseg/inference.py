"""WMH prediction for single T1-weighted or FLAIR scans, written on the scan's own grid.

Steps for one image:

1. load and validate it (:mod:`wmhseg.io`);
2. preprocess it as a single scan: N4, skull stripping and WhiteStripe
   (:func:`wmhseg.preprocess.pipeline.preprocess_scan`);
3. run the network axial slice by axial slice on the grid of
   :func:`wmhseg.slicing.to_network_grid`;
4. map the probabilities back with :func:`wmhseg.slicing.from_network_grid`, threshold them and
   keep the mask inside the brain mask;
5. write outputs that copy the input's header.

For an image ``<name>.nii.gz`` the outputs in the output folder are ``<name>_wmh.nii.gz``
(uint8 mask), optionally ``<name>_wmh_prob.nii.gz`` (float32), ``<name>_wmh.json``
(provenance), ``<name>_wmh_qc.png`` and one row in ``wmh_stats.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io as text_io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional

from wmhseg import __version__, io, metrics, slicing
from wmhseg.device import resolve_device
from wmhseg.errors import InputImageError, ModelError, WmhsegError

logger = logging.getLogger(__name__)

Modality = Literal["t1", "flair"]

# Preprocessing stages that a single scan can need; registration needs a second image.
SKIPPABLE_STAGES = ("n4", "skullstrip", "whitestripe")

# Voxels of background kept around the brain's in-plane bounding box on the network grid.
BRAIN_BOX_MARGIN = 8

STATS_FILE_NAME = "wmh_stats.csv"
STATS_COLUMNS = (
    "image",
    "input",
    "modality",
    "wmh_volume_ml",
    "lesion_count",
    "brain_volume_ml",
    "threshold",
    "model",
    "model_name",
    "wmhseg_version",
    "created",
)

_T1_TOKEN = re.compile(r"^t1(w|weighted)?$")
_FLAIR_TOKEN = re.compile(r"^(t2)?flair$")


# --------------------------------------------------------------------------------------------
# Options, modality and device
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictOptions:
    """Options of one prediction run; ``threshold=None`` uses the model's own threshold."""

    modality: Modality | None = None
    skip: frozenset[str] = frozenset()
    detect_skull_stripped: bool = True
    threshold: float | None = None
    save_probabilities: bool = False
    overwrite: bool = False
    allow_qform: bool = False
    batch_size: int = 16
    qc_png: bool = True


def infer_modality(path: str | Path, explicit: str | None = None) -> tuple[Modality, str]:
    """Return (modality, how it was decided) from ``explicit``, a BIDS suffix or the file name.

    A BIDS name (``sub-...``) ending in ``_T1w`` or ``_FLAIR`` decides by that suffix. Otherwise
    the file name is split into words at every non-alphanumeric character, and exactly one of
    the modalities must appear as a word: ``T1``/``T1w`` or ``FLAIR``/``T2FLAIR``, in any case.

    Raises:
        InputImageError: no rule or conflicting rules decide the modality.
    """
    if explicit is not None:
        value = explicit.lower()
        if value not in ("t1", "flair"):
            raise InputImageError(path, f"unknown modality {explicit!r}; use t1 or flair.")
        return ("t1" if value == "t1" else "flair"), "option"

    stem = io.strip_nifti_suffix(path).lower()
    words = [word for word in re.split(r"[^a-z0-9]+", stem) if word]
    if stem.startswith("sub-") and words[-1] in ("t1w", "flair"):
        return ("t1" if words[-1] == "t1w" else "flair"), "BIDS suffix"

    is_t1 = any(_T1_TOKEN.match(word) for word in words)
    is_flair = any(_FLAIR_TOKEN.match(word) for word in words)
    if is_t1 and not is_flair:
        return "t1", "file name"
    if is_flair and not is_t1:
        return "flair", "file name"
    reason = "names both T1 and FLAIR" if is_t1 else "names neither T1 nor FLAIR"
    raise InputImageError(
        path,
        f"cannot tell the modality: the file name {reason}. Pass --modality t1 or "
        "--modality flair.",
    )


def parse_skip(value: str | Sequence[str] | None) -> frozenset[str]:
    """Parse ``n4,skullstrip`` (or a list) into a set of stage names, rejecting unknown ones."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    stages = frozenset(item.strip().lower() for item in items if item.strip())
    unknown = sorted(stages - set(SKIPPABLE_STAGES))
    if unknown:
        raise WmhsegError(
            f"unknown preprocessing stage(s) {', '.join(unknown)} in --skip; "
            f"choose from {', '.join(SKIPPABLE_STAGES)}."
        )
    return stages


# --------------------------------------------------------------------------------------------
# The network, slice by slice
# --------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A loaded model, its checkpoint metadata and the device it runs on."""

    model: torch.nn.Module
    info: Any  # wmhseg.checkpoint.ModelInfo
    device: torch.device


def load_predictor(source: str | Path | None, *, device: str | torch.device = "auto") -> Predictor:
    """Load a model once for many images: a run folder, a checkpoint file or None (default)."""
    from wmhseg import checkpoint  # imported here so `wmhseg evaluate` does not load torch models

    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    model, info = checkpoint.load_model(source, device=resolved)
    logger.info("Loaded model %s (%s) on %s", info.path, info.model_name, resolved)
    return Predictor(model=model, info=info, device=resolved)


def predict_slices(
    model: torch.nn.Module,
    volume: npt.NDArray[np.float32],
    *,
    size_divisor: int,
    device: torch.device,
    batch_size: int = 16,
) -> npt.NDArray[np.float32]:
    """Return WMH probabilities for every axial slice ``volume[:, :, k]`` of a network-grid volume.

    Slices are zero-padded at the high end of both in-plane axes to multiples of
    ``size_divisor`` (0 is the background value after WhiteStripe) and cropped back.
    """
    height, width, depth = volume.shape
    pad_height = (-height) % size_divisor
    pad_width = (-width) % size_divisor
    slices = np.ascontiguousarray(np.moveaxis(volume, 2, 0)[:, None], dtype=np.float32)
    probabilities = np.empty((depth, height, width), dtype=np.float32)

    with torch.inference_mode():
        for start in range(0, depth, batch_size):
            batch = torch.from_numpy(slices[start : start + batch_size]).to(device)
            batch = functional.pad(batch, (0, pad_width, 0, pad_height))
            logits = model(batch)
            if logits.shape[-2:] != batch.shape[-2:]:
                raise ModelError(
                    f"model output has in-plane size {tuple(logits.shape[-2:])} for an input of "
                    f"{tuple(batch.shape[-2:])}; the checkpoint's size_divisor may be wrong."
                )
            cropped = torch.sigmoid(logits[:, 0, :height, :width].float())
            probabilities[start : start + batch.shape[0]] = cropped.cpu().numpy()
    return np.moveaxis(probabilities, 0, 2)


def predict_probabilities(
    predictor: Predictor,
    normalized: npt.NDArray[np.float32],
    affine: npt.ArrayLike,
    *,
    brain_mask: npt.NDArray[np.bool_] | None = None,
    batch_size: int = 16,
) -> npt.NDArray[np.float32]:
    """Return WMH probabilities on the grid of ``normalized`` (a WhiteStripe-normalized volume).

    With ``brain_mask``, the network gets only the axial slices that contain brain, cropped to
    the brain's in-plane bounding box plus :data:`BRAIN_BOX_MARGIN` voxels, as in training,
    where slices are cropped around the brain. Probabilities outside that box are 0.
    """
    volume, grid = slicing.to_network_grid(normalized, affine)
    volume = np.asarray(volume, dtype=np.float32)
    box: tuple[slice, slice, Any] = (slice(None), slice(None), slice(None))
    if brain_mask is not None:
        brain_grid, _ = slicing.to_network_grid(brain_mask.astype(np.uint8), affine, is_label=True)
        box = _brain_box(np.asarray(brain_grid) > 0)

    network_probabilities = np.zeros(volume.shape, dtype=np.float32)
    network_probabilities[box] = predict_slices(
        predictor.model,
        np.asarray(volume[box], dtype=np.float32),
        size_divisor=int(predictor.info.size_divisor),
        device=predictor.device,
        batch_size=batch_size,
    )
    restored = slicing.from_network_grid(network_probabilities, grid)
    return np.clip(np.asarray(restored, dtype=np.float32), 0.0, 1.0)


def _brain_box(brain: npt.NDArray[np.bool_]) -> tuple[slice, slice, Any]:
    # In-plane bounding box plus a margin, and only the axial slices that contain brain.
    if not brain.any():
        return slice(None), slice(None), slice(None)
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    return (
        slice(max(int(xs[0]) - BRAIN_BOX_MARGIN, 0), int(xs[-1]) + 1 + BRAIN_BOX_MARGIN),
        slice(max(int(ys[0]) - BRAIN_BOX_MARGIN, 0), int(ys[-1]) + 1 + BRAIN_BOX_MARGIN),
        zs,
    )


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


@dataclass
class PredictionResult:
    """Output paths and measurements of :func:`predict_image` for one image."""

    image: Path
    name: str
    modality: Modality
    outputs: dict[str, Path]
    wmh_volume_ml: float
    lesion_count: int
    brain_volume_ml: float
    stages_run: list[str]
    timings_s: dict[str, float] = field(default_factory=dict)


def output_paths(
    image: str | Path, out_dir: str | Path, *, save_probabilities: bool
) -> dict[str, Path]:
    """Return the output files of one image, keyed ``mask``, ``probabilities``, ``json``, ``qc``."""
    name = io.strip_nifti_suffix(image)
    out = Path(out_dir)
    paths = {
        "mask": out / f"{name}_wmh.nii.gz",
        "json": out / f"{name}_wmh.json",
        "qc": out / f"{name}_wmh_qc.png",
    }
    if save_probabilities:
        paths["probabilities"] = out / f"{name}_wmh_prob.nii.gz"
    return paths


def check_outputs(
    image: Path, out_dir: Path, options: PredictOptions, *, inputs: Sequence[Path] = ()
) -> dict[str, Path]:
    """Raise :class:`OutputError` if an output exists (without overwrite) or is an input.

    ``inputs`` lists the other images of the same run, which are protected as well.
    """
    paths = output_paths(image, out_dir, save_probabilities=options.save_probabilities)
    for path in paths.values():
        io.check_can_write(path, overwrite=options.overwrite, inputs=[image, *inputs])
    return paths


def sha256_of(path: Path) -> str:
    """Return the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def preprocess_single_scan(
    image: nib.Nifti1Image, path: Path, modality: Modality, options: PredictOptions
) -> tuple[nib.Nifti1Image, npt.NDArray[np.bool_], list[str], dict[str, float], list[str]]:
    """Run the preprocessing one scan needs, skipping stages by option or by detection.

    Returns (normalized image, brain mask, stages run, stage timings, stages detected as done).
    """
    from wmhseg.preprocess import pipeline

    skip = set(options.skip)
    detected = []
    if skip:
        logger.info("%s: skipping preprocessing stages %s", path, ", ".join(sorted(skip)))

    # Registration aligns two scans; a single scan has nothing to register to. Detection of an
    # already stripped input reuses deepbet's mask, so it costs no second deepbet run.
    result = pipeline.preprocess_scan(
        image,
        modality=modality,
        skip=frozenset(skip | {"register"}),
        source=str(path),
        detect_skull_stripped=options.detect_skull_stripped and "skullstrip" not in skip,
    )
    if result.skull_stripped_detected:
        detected.append("skullstrip")
        logger.info("%s: looks skull-stripped already; kept its own brain region", path)
    return result.normalized, result.brain_mask, result.stages_run, result.timings_s, detected


def predict_image(
    image_path: str | Path,
    predictor: Predictor,
    out_dir: str | Path,
    options: PredictOptions,
    *,
    inputs: Sequence[Path] = (),
) -> PredictionResult:
    """Predict the WMH mask of one image and write its outputs, its JSON and its CSV row.

    ``inputs`` are other input files that no output may replace.
    """
    path = Path(image_path)
    out = Path(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    # A folder or a missing file gets its own message before the name is parsed for a modality.
    io.check_image_path(path)
    modality, modality_source = infer_modality(path, options.modality)
    paths = check_outputs(path, out, options, inputs=inputs)

    image = io.load_image(path, allow_qform=options.allow_qform)
    timings["load"] = time.perf_counter() - started
    logger.info("%s: modality %s (from the %s)", path, modality, modality_source)

    step = time.perf_counter()
    normalized, brain_mask, stages_run, stage_timings, detected = preprocess_single_scan(
        image, path, modality, options
    )
    timings["preprocess"] = time.perf_counter() - step

    step = time.perf_counter()
    probabilities = predict_probabilities(
        predictor,
        normalized.get_fdata(dtype=np.float32),
        image.affine,
        brain_mask=brain_mask,
        batch_size=options.batch_size,
    )
    threshold = float(
        options.threshold if options.threshold is not None else predictor.info.threshold
    )
    probabilities = np.where(brain_mask, probabilities, np.float32(0.0)).astype(np.float32)
    mask = probabilities >= threshold
    timings["network"] = time.perf_counter() - step

    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    wmh_volume_ml = int(mask.sum()) * voxel_ml
    lesion_count = metrics.count_lesions(mask)
    brain_volume_ml = int(brain_mask.sum()) * voxel_ml

    step = time.perf_counter()
    io.save_mask(mask, image, paths["mask"], overwrite=options.overwrite)
    if "probabilities" in paths:
        io.save_image(probabilities, image, paths["probabilities"], overwrite=options.overwrite)
    if options.qc_png:
        from wmhseg import qc

        qc.save_overlay_png(
            image.get_fdata(dtype=np.float32),
            image.affine,
            paths["qc"],
            outlines={"WMH": mask, "brain mask": brain_mask},
            focus="WMH",
            title=(
                f"{path.name}: WMH {wmh_volume_ml:.2f} mL, {lesion_count} "
                f"{'lesion' if lesion_count == 1 else 'lesions'}"
            ),
            overwrite=options.overwrite,
        )
    else:
        paths.pop("qc")
    timings["write"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started

    result = PredictionResult(
        image=path,
        name=io.strip_nifti_suffix(path),
        modality=modality,
        outputs=paths,
        wmh_volume_ml=wmh_volume_ml,
        lesion_count=lesion_count,
        brain_volume_ml=brain_volume_ml,
        stages_run=list(stages_run),
        timings_s=timings,
    )
    created = datetime.now(UTC).isoformat(timespec="seconds")
    provenance = _provenance(
        result,
        image,
        predictor,
        options,
        threshold,
        modality_source,
        detected,
        stage_timings,
        created,
    )
    payload = json.dumps(provenance, indent=2, default=str).encode() + b"\n"
    io.write_bytes_atomic(paths["json"], payload, overwrite=options.overwrite)

    update_stats_csv(out / STATS_FILE_NAME, _stats_row(result, predictor, threshold, created))
    logger.info(
        "%s: WMH %.2f mL in %d lesions (%.1f s)",
        path,
        wmh_volume_ml,
        lesion_count,
        timings["total"],
    )
    return result


def _model_description(predictor: Predictor) -> dict[str, Any]:
    info = predictor.info
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        details = dataclasses.asdict(info)
    else:
        details = dict(vars(info))
    return {"path": str(info.path), "info": details}


def _provenance(
    result: PredictionResult,
    image: nib.Nifti1Image,
    predictor: Predictor,
    options: PredictOptions,
    threshold: float,
    modality_source: str,
    detected: list[str],
    stage_timings: Mapping[str, float],
    created: str,
) -> dict[str, Any]:
    zooms = [float(zoom) for zoom in image.header.get_zooms()[:3]]
    return {
        "wmhseg_version": __version__,
        "created": created,
        "input": {
            "path": str(result.image.resolve()),
            "sha256": sha256_of(result.image),
            "shape": list(image.shape[:3]),
            "voxel_size_mm": zooms,
            "modality": result.modality,
            "modality_from": modality_source,
        },
        "model": _model_description(predictor),
        "device": str(predictor.device),
        "torch_version": torch.__version__,
        "options": {
            "threshold": threshold,
            "skip_requested": sorted(options.skip),
            "skip_detected": detected,
            "save_probabilities": options.save_probabilities,
            "use_qform": options.allow_qform,
            "batch_size": options.batch_size,
        },
        "preprocessing": {"stages_run": result.stages_run, "timings_s": dict(stage_timings)},
        "timings_s": result.timings_s,
        "results": {
            "wmh_volume_ml": result.wmh_volume_ml,
            "lesion_count": result.lesion_count,
            "brain_volume_ml": result.brain_volume_ml,
        },
        "outputs": {key: str(value.resolve()) for key, value in result.outputs.items()},
    }


# --------------------------------------------------------------------------------------------
# The shared statistics CSV
# --------------------------------------------------------------------------------------------


def _stats_row(
    result: PredictionResult, predictor: Predictor, threshold: float, created: str
) -> dict[str, str]:
    return {
        "image": result.name,
        "input": str(result.image.resolve()),
        "modality": result.modality,
        "wmh_volume_ml": f"{result.wmh_volume_ml:.4f}",
        "lesion_count": str(result.lesion_count),
        "brain_volume_ml": f"{result.brain_volume_ml:.2f}",
        "threshold": f"{threshold:g}",
        "model": str(predictor.info.path),
        "model_name": str(predictor.info.model_name),
        "wmhseg_version": __version__,
        "created": created,
    }


@contextmanager
def _locked_folder(folder: Path) -> Iterator[None]:
    # An exclusive lock on the folder serializes read-modify-write of the CSV between processes
    # that predict into the same folder at the same time.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def read_stats_csv(path: Path) -> list[dict[str, str]]:
    """Read the rows of a ``wmh_stats.csv``; an absent file has no rows."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def update_stats_csv(path: Path, row: Mapping[str, str]) -> None:
    """Insert or replace (by ``image``) one row of the stats CSV, rewriting the file atomically."""
    with _locked_folder(path.parent):
        rows = [
            existing for existing in read_stats_csv(path) if existing.get("image") != row["image"]
        ]
        rows.append(dict(row))
        rows.sort(key=lambda item: item.get("image", ""))
        buffer = text_io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=STATS_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        io.write_bytes_atomic(path, buffer.getvalue().encode(), overwrite=True)


# --------------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """Results of :func:`predict_images`: one entry per image that worked, one per failure."""

    results: list[PredictionResult] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def check_unique_names(images: Sequence[Path]) -> None:
    """Raise if two images would write to the same output names."""
    seen: dict[str, Path] = {}
    for image in images:
        name = io.strip_nifti_suffix(image)
        if name in seen:
            raise InputImageError(
                image,
                f"has the same name as {seen[name]}, so their outputs ({name}_wmh.nii.gz, ...) "
                "would collide. Predict them into separate --out folders or rename one.",
            )
        seen[name] = image


def predict_images(
    images: Sequence[str | Path],
    predictor: Predictor,
    out_dir: str | Path,
    options: PredictOptions,
    *,
    on_image_start: Callable[[Path], None] | None = None,
    on_image_done: Callable[[Path, PredictionResult | None], None] | None = None,
) -> BatchResult:
    """Predict every image; a failing image is recorded and the others go on.

    The output folder is created and checked for write access before any work starts.
    """
    paths = [Path(image) for image in images]
    check_unique_names(paths)
    out = io.prepare_output_dir(out_dir)
    logger.info("Running the network on device %s", predictor.device)

    batch = BatchResult()
    for path in paths:
        if on_image_start is not None:
            on_image_start(path)
        result: PredictionResult | None = None
        try:
            result = predict_image(path, predictor, out, options, inputs=paths)
            batch.results.append(result)
        except WmhsegError as error:
            message = str(error)
            # Most messages name the file already, so it is not repeated. The traceback is for
            # --debug.
            debug = logger.isEnabledFor(logging.DEBUG)
            if str(path) in message:
                logger.error("prediction failed: %s", message, exc_info=debug)
            else:
                logger.error("%s: prediction failed: %s", path, message, exc_info=debug)
            batch.failures.append((path, message))
        except Exception as error:  # one image's bug must not lose the other images' results
            # The traceback is for bug reports, so it is shown only with debug logging (--debug).
            logger.error(
                "%s: prediction failed with an unexpected error: %s",
                path,
                error,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            batch.failures.append((path, f"unexpected error: {type(error).__name__}: {error}"))
        if on_image_done is not None:
            on_image_done(path, result)
    return batch
