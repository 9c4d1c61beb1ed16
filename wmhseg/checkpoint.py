"""Checkpoints: saving training state, resuming it exactly, and loading models for inference.

A checkpoint is a ``torch.save`` dictionary whose tensors are all on the CPU, so it loads on a
machine without the GPU it was trained on. It is written to a temporary file in the same folder
and renamed into place, so an interrupted write leaves the previous checkpoint intact.
Files are read with ``weights_only=True``: loading a checkpoint never runs pickled code.

Keys of a training checkpoint (``last.pt``, ``best.pt`` in a run folder): ``format_version``,
``model_name``, ``model_kwargs``, ``model_state``, ``size_divisor``, ``threshold``,
``in_plane_spacing_mm``, ``domains``, ``wmhseg_version``, ``training`` (command, config, data,
validation Dice per modality) and, for resuming, ``optimizer_state``, ``scheduler_state``,
``weighting_state``, ``epoch``, ``global_step``, ``lambda_history``, ``metrics_history``,
``best_score``, ``epochs_without_improvement`` and ``rng_states``. A model-only export (the
shipped default model) keeps everything but the resume keys.
"""

from __future__ import annotations

import io as bytes_io
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmhseg import __version__
from wmhseg.errors import ModelError
from wmhseg.io import write_bytes_atomic
from wmhseg.models import build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "assets" / "default_model.pt"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

RESUME_KEYS = (
    "optimizer_state",
    "scheduler_state",
    "weighting_state",
    "lambda_history",
    "metrics_history",
    "rng_states",
    "best_score",
    "epochs_without_improvement",
)
MODEL_KEYS = ("model_name", "model_kwargs", "model_state")


@dataclass
class ModelInfo:
    """Metadata of a loaded model, read from its checkpoint."""

    model_name: str
    model_kwargs: dict[str, Any]
    size_divisor: int
    threshold: float
    in_plane_spacing_mm: float
    wmhseg_version: str
    training: dict[str, Any]
    path: Path
    domains: list[str] = field(default_factory=lambda: ["FLAIR", "T1"])
    epoch: int | None = None


def to_cpu(value: Any) -> Any:
    """Return ``value`` with every tensor inside dicts, lists and tuples moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_cpu(item) for item in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(item) for item in value)
    return value


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically with CPU tensors, replacing an existing file at ``path``."""
    buffer = bytes_io.BytesIO()
    torch.save(to_cpu(payload), buffer)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; raise :class:`ModelError` if it is not a wmhseg one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ModelError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}: {error}). "
            "The file is damaged or was not written by wmhseg."
        ) from error
    if not isinstance(payload, dict) or any(key not in payload for key in MODEL_KEYS):
        raise ModelError(f"{path}: not a wmhseg checkpoint (model keys missing).")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format {version} is not supported by wmhseg {__version__} "
            f"(expected {FORMAT_VERSION}). Use the wmhseg version that trained it."
        )
    return payload


def resolve_checkpoint(source: str | Path | None) -> Path:
    """Return the checkpoint file for a run folder, a checkpoint file or None (default model).

    In a run folder the best checkpoint is used, else the last one.
    """
    if source is None:
        if not DEFAULT_MODEL_PATH.is_file():
            raise ModelError(
                f"{DEFAULT_MODEL_PATH}: the default model is missing from this installation. "
                "Reinstall wmhseg or pass a model with --model."
            )
        return DEFAULT_MODEL_PATH
    path = Path(source)
    if path.is_dir():
        for name in (BEST_CHECKPOINT, LAST_CHECKPOINT):
            if (path / name).is_file():
                return path / name
        raise ModelError(
            f"{path}: no {BEST_CHECKPOINT} or {LAST_CHECKPOINT} in this folder; give a training "
            "run folder written by 'wmhseg train' or a checkpoint file."
        )
    if not path.exists():
        raise ModelError(f"{path}: model not found; give a run folder or a checkpoint file.")
    return path


def model_info(payload: dict[str, Any], path: Path) -> ModelInfo:
    """Build the :class:`ModelInfo` of a checkpoint dictionary."""
    return ModelInfo(
        model_name=str(payload["model_name"]),
        model_kwargs=dict(payload["model_kwargs"]),
        size_divisor=int(payload.get("size_divisor", 1)),
        threshold=float(payload.get("threshold", 0.5)),
        in_plane_spacing_mm=float(payload.get("in_plane_spacing_mm", 1.0)),
        wmhseg_version=str(payload.get("wmhseg_version", "unknown")),
        training=dict(payload.get("training", {})),
        path=path,
        domains=list(payload.get("domains", ["FLAIR", "T1"])),
        epoch=payload.get("epoch"),
    )


def build_from_checkpoint(payload: dict[str, Any], path: Path) -> torch.nn.Module:
    """Build the network that a checkpoint describes and load its weights (on the CPU)."""
    try:
        model = build_model(str(payload["model_name"]), **dict(payload["model_kwargs"]))
        model.load_state_dict(payload["model_state"])
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        raise ModelError(
            f"{path}: checkpoint does not match the network it names "
            f"({payload.get('model_name')!r}): {error}"
        ) from error
    return model


def load_model(
    source: str | Path | None, *, device: torch.device
) -> tuple[torch.nn.Module, ModelInfo]:
    """Load a model for inference: a run folder, a checkpoint file or None (default model).

    The model is returned in eval mode on ``device``. Tensors are mapped to the CPU first, so
    checkpoints written on a GPU load on machines without one.
    """
    path = resolve_checkpoint(source)
    payload = read_checkpoint(path)
    model = build_from_checkpoint(payload, path).to(device)
    model.eval()
    info = model_info(payload, path)
    logger.info("loaded model %s (%s) on %s", path, info.model_name, device)
    return model, info


def export_model(
    source: str | Path, path: str | Path, *, training_update: dict[str, Any] | None = None
) -> Path:
    """Write a model-only copy of a checkpoint (no optimizer or resume state) to ``path``.

    ``training_update`` is merged into the ``training`` metadata, e.g. to record measured
    validation Dice. The weights stay float32.
    """
    payload = read_checkpoint(source)
    exported = {key: value for key, value in payload.items() if key not in RESUME_KEYS}
    exported["training"] = {**dict(payload.get("training", {})), **(training_update or {})}
    return save_checkpoint(exported, path)


# --------------------------------------------------------------------------------------------
# Random number generator states, for exact resume
# --------------------------------------------------------------------------------------------


def capture_rng_states() -> dict[str, Any]:
    """Return the states of Python's, NumPy's global and torch's generators."""
    numpy_state: Any = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [
            str(numpy_state[0]),
            numpy_state[1].tolist(),
            int(numpy_state[2]),
            int(numpy_state[3]),
            float(numpy_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore generator states written by :func:`capture_rng_states`."""
    random.setstate(_as_tuple(states["python"]))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(item) for item in value)
    return value
