"""The command-line entry point: help, version and error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from wmhseg import __version__
from wmhseg.cli import app

COMMANDS = ("preprocess", "train", "predict", "evaluate", "experiment", "check")


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_version_printed() -> None:
    result = CliRunner().invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.output.strip() == f"wmhseg {__version__}"


def test_console_script_runs_as_module() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "wmhseg", "--version"], capture_output=True, text=True, check=False
    )

    assert completed.returncode == 0
    assert __version__ in completed.stdout


def test_error_has_no_traceback_without_debug() -> None:
    result = CliRunner().invoke(app, ["check", "/nonexistent/scan.nii.gz"])

    assert result.exit_code != 0
    assert "file not found" in result.output
    assert "Traceback" not in result.output


def test_error_message_keeps_brackets(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["predict", "/nonexistent/[sub-01]_FLAIR.nii.gz", "--out", str(tmp_path)]
    )

    assert result.exit_code != 0
    assert "[sub-01]" in result.output


def test_predict_missing_input_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "FLAIR.nii.gz"), "--out", str(out)])

    assert result.exit_code == 2
    assert "file not found" in result.output
    assert not out.exists()
