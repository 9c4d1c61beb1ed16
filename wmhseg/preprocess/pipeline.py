"""Preprocessing pipeline: registration, N4, skull stripping and WhiteStripe, chained.

:func:`preprocess_scan` runs the single-image stages on one scan. :func:`preprocess_subject`
runs a whole subject (T1 and/or FLAIR, optional WMH label) and writes the output folder:
``T1.nii.gz``/``FLAIR.nii.gz`` on the reference grid (the FLAIR's if present, else the T1's),
``brain_mask.nii.gz``, ``wmh.nii.gz``, ``T1_to_FLAIR.tfm``, ``qc.png`` and ``provenance.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from wmhseg import io
from wmhseg.errors import InputImageError, OutputError, PreprocessingError
from wmhseg.preprocess import n4, registration, skullstrip, whitestripe
from wmhseg.preprocess.provenance import build_provenance, file_sha256

logger = logging.getLogger(__name__)

Modality = Literal["t1", "flair"]
STAGES = ("register", "n4", "skullstrip", "whitestripe")
CACHE_DIR_NAME = ".wmhseg_cache"


@dataclass
class ScanResult:
    """Outcome of :func:`preprocess_scan` on one image."""

    normalized: nib.Nifti1Image
    brain_mask: npt.NDArray[np.bool_]
    stages_run: list[str]
    timings_s: dict[str, float]
    # True when detection found the input already skull-stripped (its non-zero voxels are then
    # the brain mask); False when detection ran and found skull; None when it did not run.
    skull_stripped_detected: bool | None = None


def check_skip(skip: frozenset[str] | set[str]) -> frozenset[str]:
    """Return ``skip`` as a frozenset, raising on stage names that do not exist."""
    unknown = sorted(set(skip) - set(STAGES))
    if unknown:
        raise PreprocessingError(
            f"unknown stage(s) to skip: {', '.join(unknown)}; valid stages are {', '.join(STAGES)}."
        )
    return frozenset(skip)


def preprocess_scan(
    image: nib.Nifti1Image,
    *,
    modality: Modality,
    skip: frozenset[str] = frozenset(),
    skullstrip_method: str = "deepbet",
    brain_mask: npt.NDArray[np.bool_] | None = None,
    source: str | None = None,
    detect_skull_stripped: bool = False,
    white_matter: npt.NDArray[np.bool_] | None = None,
) -> ScanResult:
    """Run N4, skull stripping and WhiteStripe on one scan; the result stays on its grid.

    ``register`` does not apply to a single scan and is ignored. With ``brain_mask`` given,
    skull stripping is not run. With ``skullstrip`` skipped and no mask, the brain is the
    non-zero voxels, holes filled (the image is already stripped). ``detect_skull_stripped``
    reuses the skull-stripping mask to test whether the input was stripped already
    (:func:`skullstrip.looks_skull_stripped`). If it was, the input's own non-zero region is
    the brain mask. ``source`` names the file in errors. ``white_matter`` is where
    WhiteStripe looks for the white-matter mode (see :func:`whitestripe.white_matter_mode`).
    """
    skip = check_skip(skip)
    stages_run: list[str] = []
    timings: dict[str, float] = {}
    detected: bool | None = None
    current = image

    if "n4" not in skip:
        start = time.perf_counter()
        current = n4.correct_bias_field(current, mask=brain_mask)
        timings["n4"] = time.perf_counter() - start
        stages_run.append("n4")

    if brain_mask is not None:
        mask = np.asarray(brain_mask, dtype=bool)
    elif "skullstrip" not in skip:
        start = time.perf_counter()
        mask = skullstrip.compute_brain_mask(
            current, modality=modality, method=skullstrip_method, source=source
        )
        if detect_skull_stripped:
            # The input's zeros, not N4's output, tell whether it was stripped; N4 keeps them
            # zero but clips negative values to zero.
            stripped = skullstrip.looks_skull_stripped(image, brain_mask=mask)
            detected = stripped
            if stripped:
                mask = skullstrip.nonzero_brain_mask(image)
                skullstrip.check_brain_mask(mask, image, source=source)
        timings["skullstrip"] = time.perf_counter() - start
        if not detected:
            stages_run.append("skullstrip")
    else:
        mask = skullstrip.nonzero_brain_mask(current)
        skullstrip.check_brain_mask(mask, current, source=source)

    if "whitestripe" not in skip:
        start = time.perf_counter()
        current = whitestripe.whitestripe_normalize(
            current, mask, modality=modality, white_matter=white_matter
        )
        timings["whitestripe"] = time.perf_counter() - start
        stages_run.append("whitestripe")
    else:
        data = np.where(mask, np.asarray(current.dataobj, dtype=np.float32), 0.0)
        current = nib.Nifti1Image(data.astype(np.float32), current.affine, current.header)

    return ScanResult(
        normalized=current,
        brain_mask=mask,
        stages_run=stages_run,
        timings_s=timings,
        skull_stripped_detected=detected,
    )


# --------------------------------------------------------------------------------------------
# Stage cache: a stage whose inputs and parameters hash to a key seen before is read back.
# --------------------------------------------------------------------------------------------


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _StageCache:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits: list[str] = []

    def image(
        self,
        name: str,
        key: str,
        reference: nib.Nifti1Image,
        compute: Callable[[], nib.Nifti1Image],
    ) -> nib.Nifti1Image:
        if self.folder is None:
            return compute()
        path = self.folder / f"{name}-{key}.nii.gz"
        if path.exists():
            self.hits.append(name)
            data = np.asarray(io.load_image(path).dataobj, dtype=np.float32)
            return nib.Nifti1Image(data, reference.affine, reference.header)
        result = compute()
        io.save_image(np.asarray(result.dataobj), reference, path, overwrite=True)
        return result

    def mask(
        self,
        name: str,
        key: str,
        reference: nib.Nifti1Image,
        compute: Callable[[], npt.NDArray[np.bool_]],
    ) -> npt.NDArray[np.bool_]:
        if self.folder is None:
            return compute()
        path = self.folder / f"{name}-{key}.nii.gz"
        if path.exists():
            self.hits.append(name)
            return io.load_label(path, max_label=1) > 0
        result = compute()
        io.save_mask(result, reference, path, overwrite=True)
        return result

    def transform(
        self, name: str, key: str, compute: Callable[[], registration.RegistrationResult]
    ) -> tuple[sitk.Transform, dict[str, float]]:
        if self.folder is not None:
            path = self.folder / f"{name}-{key}.tfm"
            meta_path = self.folder / f"{name}-{key}.json"
            if path.exists() and meta_path.exists():
                self.hits.append(name)
                return registration.load_transform(path), json.loads(meta_path.read_text())
        result = compute()
        meta = {"nmi_before": result.nmi_before, "nmi_after": result.nmi_after}
        if self.folder is not None:
            registration.save_transform(result.transform, path, overwrite=True)
            io.write_bytes_atomic(meta_path, json.dumps(meta).encode(), overwrite=True)
        return result.transform, meta


# --------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------


@dataclass
class SubjectInputs:
    """Input files of one subject; at least one of ``t1`` and ``flair`` is set."""

    subject: str
    t1: Path | None = None
    flair: Path | None = None
    wmh: Path | None = None

    def __post_init__(self) -> None:
        if self.t1 is None and self.flair is None:
            raise InputImageError(None, f"subject {self.subject}: give a T1, a FLAIR or both.")


@dataclass
class SubjectResult:
    """Outcome of :func:`preprocess_subject`."""

    subject: str
    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    cached_stages: list[str] = field(default_factory=list)
    up_to_date: bool = False


def _load_label_on_grid(
    path: Path,
    reference: nib.Nifti1Image,
    t1_image: nib.Nifti1Image | None,
    t1_transform: sitk.Transform | None,
) -> npt.NDArray[np.uint8]:
    labels = io.load_label(path)
    header = nib.Nifti1Image.from_bytes(io.read_nifti_bytes(path)).header
    affine = io.choose_affine(path, header)
    if labels.shape == tuple(reference.shape[:3]) and np.allclose(
        affine, reference.affine, atol=1e-3
    ):
        return labels
    # A label drawn on the T1 follows the T1 through the registration; any other grid is
    # matched by world coordinates.
    on_t1 = (
        t1_image is not None
        and labels.shape == tuple(t1_image.shape[:3])
        and np.allclose(affine, t1_image.affine, atol=1e-3)
    )
    transform = t1_transform if on_t1 else None
    label_image = nib.Nifti1Image(labels.astype(np.float32), affine)
    resampled = registration.resample_to(label_image, reference, transform, interpolation="nearest")
    logger.info("%s: label resampled onto the reference grid (nearest neighbour)", path)
    return np.rint(np.asarray(resampled.dataobj)).astype(np.uint8)


def _parameters(skip: frozenset[str], skullstrip_method: str, *, has_t1: bool) -> dict[str, Any]:
    white_matter = "T1 white-matter estimate" if has_t1 else "FLAIR Gaussian mixture"
    return {
        "skip": sorted(skip),
        "skullstrip_method": skullstrip_method,
        "registration": {"transform": "Euler3D", "metric": "MattesMI", "levels_mm": [4, 2, 1]},
        "n4": {
            "shrink_to_mm": n4.SHRINK_TO_MM,
            "iterations": list(n4.ITERATIONS),
            "mask": "head (Otsu)",
        },
        "whitestripe": {"width": 0.05, "white_matter_mode_from": white_matter},
    }


def preprocess_subject(
    inputs: SubjectInputs,
    out_root: Path,
    *,
    skip: frozenset[str] = frozenset(),
    skullstrip_method: str = "deepbet",
    overwrite: bool = False,
    use_cache: bool = True,
    write_qc: bool = True,
    allow_qform: bool = False,
    command: str | None = None,
) -> SubjectResult:
    """Preprocess one subject into ``out_root/<subject>/``.

    Existing outputs made from the same input files and parameters are kept ("up to date");
    different existing outputs need ``overwrite``. Intermediate stage results are cached in
    ``.wmhseg_cache`` inside the subject folder, so changing a late stage's parameters does
    not rerun the early ones. ``allow_qform`` uses the qform of images whose sform is sheared.
    ``command`` is recorded in ``provenance.json``.
    """
    skip = check_skip(skip)
    # Each input is read and validated before it is hashed, so that a folder, a DICOM file or
    # a truncated file fails with io.load_image's message instead of an error from hashing.
    t1 = io.load_image(inputs.t1, allow_qform=allow_qform) if inputs.t1 else None
    flair = io.load_image(inputs.flair, allow_qform=allow_qform) if inputs.flair else None
    if inputs.wmh is not None:
        io.load_label(inputs.wmh)
    out_dir = io.prepare_output_dir(Path(out_root) / inputs.subject)
    parameters = _parameters(skip, skullstrip_method, has_t1=t1 is not None)
    parameters["allow_qform"] = allow_qform
    sources = {
        name: p
        for name, p in (("t1", inputs.t1), ("flair", inputs.flair), ("wmh", inputs.wmh))
        if p
    }
    checksums = {name: file_sha256(p) for name, p in sources.items()}
    run_key = _key(checksums, parameters, _pipeline_version())

    result = SubjectResult(subject=inputs.subject, out_dir=out_dir)
    provenance_path = out_dir / "provenance.json"
    if provenance_path.exists():
        try:
            previous = json.loads(provenance_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            if not overwrite:
                raise OutputError(
                    f"{provenance_path}: cannot be read ({error}); pass --overwrite to "
                    "preprocess this subject again."
                ) from error
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
        if previous.get("run_key") == run_key and all(
            (out_dir / name).exists() for name in previous.get("outputs", [])
        ):
            result.up_to_date = True
            result.outputs = {name: out_dir / name for name in previous["outputs"]}
            return result
        if not overwrite:
            raise OutputError(
                f"{out_dir}: contains preprocessing outputs from other inputs or parameters; "
                "pass --overwrite to replace them."
            )

    cache = _StageCache(io.prepare_output_dir(out_dir / CACHE_DIR_NAME) if use_cache else None)
    timings: dict[str, float] = {}

    def timed(name: str, function: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = function()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return value

    reference = flair if flair is not None else t1
    assert reference is not None

    # 1. N4 on each scan at its own resolution, inside the head.
    def bias_corrected(image: nib.Nifti1Image, name: str) -> nib.Nifti1Image:
        if "n4" in skip:
            return image
        key = _key(checksums[name], parameters["n4"])
        return timed(
            "n4",
            lambda: cache.image(f"n4_{name}", key, image, lambda: n4.correct_bias_field(image)),
        )

    t1_n4 = bias_corrected(t1, "t1") if t1 is not None else None
    flair_n4 = bias_corrected(flair, "flair") if flair is not None else None

    # 2. T1 onto the reference grid: registered to the FLAIR, or matched by world coordinates.
    transform: sitk.Transform | None = None
    registration_meta: dict[str, float] = {}
    t1_on_reference = t1_n4
    if t1_n4 is not None and flair_n4 is not None:
        if "register" not in skip:
            key = _key(
                checksums["t1"],
                checksums["flair"],
                parameters["registration"],
                parameters["n4"],
                sorted(skip),
            )
            transform, registration_meta = timed(
                "register",
                lambda: cache.transform(
                    "register", key, lambda: registration.register_rigid(t1_n4, flair_n4)
                ),
            )
        t1_on_reference = registration.resample_to(t1_n4, flair_n4, transform)

    # 3. One brain mask per subject, from the T1 when there is one (deepbet was trained on T1).
    mask_source_name = "t1" if t1_on_reference is not None else "flair"
    mask_source = t1_on_reference if t1_on_reference is not None else flair_n4
    mask_path = inputs.t1 if mask_source_name == "t1" else inputs.flair
    assert mask_source is not None
    if "skullstrip" in skip:
        brain = skullstrip.nonzero_brain_mask(reference)
        skullstrip.check_brain_mask(brain, reference, source=str(inputs.flair or inputs.t1))
    else:
        key = _key(checksums, parameters, "skullstrip")
        brain = timed(
            "skullstrip",
            lambda: cache.mask(
                "brain_mask",
                key,
                reference,
                lambda: skullstrip.compute_brain_mask(
                    mask_source,
                    modality=mask_source_name,  # type: ignore[arg-type]
                    method=skullstrip_method,
                    source=str(mask_path),
                ),
            ),
        )

    # 4. WhiteStripe, then write. With a T1, both scans take their white-matter mode inside
    # the T1's white matter, because on FLAIR grey and white matter overlap too much.
    white_matter = None
    if t1_on_reference is not None and "whitestripe" not in skip:
        white_matter = whitestripe.white_matter_estimate(
            np.asarray(t1_on_reference.dataobj, dtype=np.float32),
            brain,
            spacing=tuple(float(size) for size in reference.header.get_zooms()[:3]),
        )
    outputs: dict[str, Path] = {}
    for name, image in (("T1", t1_on_reference), ("FLAIR", flair_n4)):
        if image is None:
            continue
        scan = preprocess_scan(
            image,
            modality=name.lower(),  # type: ignore[arg-type]
            skip=skip | {"n4", "skullstrip"},
            brain_mask=brain,
            white_matter=white_matter,
        )
        timings["whitestripe"] = timings.get("whitestripe", 0.0) + scan.timings_s.get(
            "whitestripe", 0.0
        )
        outputs[f"{name}.nii.gz"] = io.save_image(
            np.asarray(scan.normalized.dataobj),
            reference,
            out_dir / f"{name}.nii.gz",
            overwrite=True,
        )
    outputs["brain_mask.nii.gz"] = io.save_mask(
        brain, reference, out_dir / "brain_mask.nii.gz", overwrite=True
    )
    if inputs.wmh is not None:
        labels = _load_label_on_grid(inputs.wmh, reference, t1, transform)
        # Labels 0/1/2 are kept: 2 marks other pathology that training ignores.
        outputs["wmh.nii.gz"] = io.save_label(
            labels, reference, out_dir / "wmh.nii.gz", overwrite=True
        )
    if transform is not None:
        outputs["T1_to_FLAIR.tfm"] = registration.save_transform(
            transform, out_dir / "T1_to_FLAIR.tfm", overwrite=True
        )
    if write_qc:
        outputs["qc.png"] = _write_qc(
            out_dir / "qc.png", reference, flair_n4, t1_on_reference, brain, inputs.subject
        )

    provenance = build_provenance(
        subject=inputs.subject,
        command=command,
        sources={name: str(p) for name, p in sources.items()},
        checksums=checksums,
        parameters=parameters,
        timings_s=timings,
        registration=registration_meta,
        cached_stages=cache.hits,
        outputs=sorted(outputs),
        run_key=run_key,
    )
    io.write_bytes_atomic(
        provenance_path, json.dumps(provenance, indent=2).encode(), overwrite=True
    )
    outputs["provenance.json"] = provenance_path
    result.outputs = outputs
    result.timings_s = timings
    result.cached_stages = cache.hits
    return result


def _write_qc(
    path: Path,
    reference: nib.Nifti1Image,
    flair: nib.Nifti1Image | None,
    t1: nib.Nifti1Image | None,
    brain: npt.NDArray[np.bool_],
    subject: str,
) -> Path:
    from skimage.filters import threshold_otsu

    from wmhseg import qc

    background = flair if flair is not None else t1
    assert background is not None
    outlines: dict[str, npt.NDArray[np.bool_]] = {"brain mask": brain}
    title = f"{subject}: {'FLAIR' if flair is not None else 'T1'} with brain mask"
    if t1 is not None and flair is not None:
        # The registered T1's tissue/CSF edge (Otsu threshold inside the brain) drawn over the
        # FLAIR shows misregistration as an outline that misses the FLAIR's ventricles and sulci.
        t1_data = np.asarray(t1.dataobj, dtype=np.float32)
        inside = t1_data[brain]
        if inside.size and float(inside.max()) > float(inside.min()):
            outlines["registered T1 tissue/CSF edge"] = brain & (t1_data > threshold_otsu(inside))
            title = f"{subject}: FLAIR, brain mask and the registered T1's tissue/CSF edge"
    return Path(
        qc.save_overlay_png(
            np.asarray(background.dataobj),
            reference.affine,
            path,
            outlines=outlines,
            title=title,
            overwrite=True,
        )
    )


def _pipeline_version() -> str:
    from wmhseg import __version__

    return __version__
