"""Provenance records: package versions, parameters, timings and input checksums."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PACKAGES = (
    "wmhseg",
    "numpy",
    "nibabel",
    "SimpleITK",
    "antspyx",
    "intensity-normalization",
    "deepbet",
    "torch",
    "scipy",
)


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Return the installed version of each package the pipeline depends on."""
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_provenance(**fields: Any) -> dict[str, Any]:
    """Return a provenance record: ``fields`` plus versions, Python and a UTC time stamp."""
    return {
        **fields,
        "packages": package_versions(),
        "python": platform.python_version(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
