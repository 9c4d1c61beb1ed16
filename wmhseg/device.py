"""Choice of the torch device for training and prediction."""

from __future__ import annotations

import torch

from wmhseg.errors import WmhsegError


class DeviceError(WmhsegError):
    """The requested torch device is invalid or not available."""


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device; ``auto`` prefers CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name} was requested but PyTorch {torch.__version__} sees no CUDA GPU. "
            "Use --device cpu or --device auto."
        )
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"invalid device {name!r}; use auto, cpu, cuda or cuda:N.") from error
