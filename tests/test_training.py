"""Tests of the training loop, exact resume after SIGINT and the train command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_training_subjects
from typer.testing import Result

from wmhseg import checkpoint
from wmhseg.errors import OutputError, TrainingError
from wmhseg.training import TrainConfig, train


def tiny_config(data_dir: Path, out_dir: Path, **changes: Any) -> TrainConfig:
    """A configuration small enough to train in about a second per epoch."""
    config = TrainConfig(
        data_dir=data_dir,
        out_dir=out_dir,
        mode="conservative",
        window=5,
        prior=(2.0, 2.0),
        model="unet",
        width=4,
        depth=2,
        batch_size=4,
        crop_size=(16, 16),
        steps_per_epoch=3,
        max_epochs=4,
        lr_patience=0,
        lr_factor=0.5,
        validation_subjects=("sub01",),
        threads=1,
    )
    return dataclasses.replace(config, **changes)


def _assert_same_weights(first: Path, second: Path) -> None:
    a = checkpoint.read_checkpoint(first)
    b = checkpoint.read_checkpoint(second)
    for name, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][name]), name


def _lr(path: Path) -> float:
    return float(checkpoint.read_checkpoint(path)["optimizer_state"]["param_groups"][0]["lr"])


def test_train_writes_run_folder(training_data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(training_data, tmp_path / "run", max_epochs=2))
    names = {p.name for p in result.run_dir.iterdir()}
    expected = {"config.json", "command.txt", "last.pt", "best.pt", "metrics.csv", "lambda.csv"}
    assert expected <= names
    assert "lambda.png" in names
    assert result.epochs_run == 2
    assert set(result.best_validation_dice) == {"FLAIR", "T1"}


def test_train_lambda_trace_one_row_per_step(training_data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(training_data, tmp_path / "run", max_epochs=2))
    rows = (result.run_dir / "lambda.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lambda_FLAIR,lambda_T1,choice")
    assert len(rows) == 1 + 2 * 3


def test_train_config_json_roundtrip(training_data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(training_data, tmp_path / "run", max_epochs=1))
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["mode"] == "conservative"
    assert saved["window"] == 5


def test_train_refuses_existing_run(training_data: Path, tmp_path: Path) -> None:
    train(tiny_config(training_data, tmp_path / "run", max_epochs=1))
    with pytest.raises(OutputError, match="--resume"):
        train(tiny_config(training_data, tmp_path / "run", max_epochs=1))


def test_train_rejects_flat_prior(training_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="greater than 1"):
        train(tiny_config(training_data, tmp_path / "run", prior=(1.0, 3.0)))


@pytest.mark.parametrize("mode", ["fixed", "simple", "greedy"])
def test_train_modes_run(training_data: Path, tmp_path: Path, mode: str) -> None:
    result = train(tiny_config(training_data, tmp_path / mode, mode=mode, max_epochs=1))
    assert len(result.final_weights) == 2


def test_train_first_order_estimator(training_data: Path, tmp_path: Path) -> None:
    config = tiny_config(training_data, tmp_path / "run", estimator="first_order", max_epochs=1)
    result = train(config)
    assert sum(result.final_weights) == pytest.approx(1.0)


def test_train_three_domains(tmp_path: Path) -> None:
    data_dir = write_training_subjects(tmp_path / "data", domains=("FLAIR", "T1", "T2"))
    config = tiny_config(
        data_dir,
        tmp_path / "run",
        domains=("FLAIR", "T1", "T2"),
        prior=(2.0, 2.0, 2.0),
        batch_size=6,
        max_epochs=2,
    )
    result = train(config)
    assert len(result.final_weights) == 3
    assert sum(result.final_weights) == pytest.approx(1.0)
    assert set(result.best_validation_dice) == {"FLAIR", "T1", "T2"}


def test_train_flair_subjects_zero_drops_flair(tmp_path: Path) -> None:
    data_dir = write_training_subjects(tmp_path / "data", subjects=3)
    config = tiny_config(data_dir, tmp_path / "run", flair_subjects=0, max_epochs=1)
    with pytest.raises(TrainingError, match="no training slices for domain FLAIR"):
        train(config)


def test_train_device_cpu_logged(
    training_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="wmhseg.training")
    result = train(tiny_config(training_data, tmp_path / "run", max_epochs=1, device="cpu"))
    assert result.device == "cpu"
    assert "training on device cpu" in caplog.text


# -------------------------------------------------------------------------------------------
# Exact resume (SIGINT after an epoch, and during a checkpoint write)
# -------------------------------------------------------------------------------------------

_INTERRUPTED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_training import tiny_config
from wmhseg.training import train

def stop_after_second_epoch(event):
    if event.kind == "epoch" and event.epoch == 1:
        os.kill(os.getpid(), signal.SIGINT)

train(tiny_config(Path({data!r}), Path({out!r})), progress=stop_after_second_epoch)
"""


@pytest.mark.slow
def test_resume_after_sigint_matches(training_data: Path, tmp_path: Path) -> None:
    reference = train(tiny_config(training_data, tmp_path / "reference"))

    script = _INTERRUPTED_RUN.format(
        tests=str(Path(__file__).parent), data=str(training_data), out=str(tmp_path / "resumed")
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment
    )
    assert completed.returncode != 0, "the run was not interrupted"
    assert "KeyboardInterrupt" in completed.stderr
    interrupted = checkpoint.read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert interrupted["epoch"] == 1

    resumed = train(tiny_config(training_data, tmp_path / "resumed", resume=True))
    assert resumed.epochs_run == 4
    _assert_same_weights(reference.last_checkpoint, resumed.last_checkpoint)
    assert _lr(reference.last_checkpoint) == _lr(resumed.last_checkpoint)
    reference_trace = (reference.run_dir / "lambda.csv").read_text()
    assert (resumed.run_dir / "lambda.csv").read_text() == reference_trace


def _interrupt_checkpoint_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raise KeyboardInterrupt in the middle of the next checkpoint file write."""
    original_save = checkpoint.write_bytes_atomic
    real_fsync = os.fsync

    def fsync_then_interrupt(descriptor: int) -> None:
        real_fsync(descriptor)
        raise KeyboardInterrupt

    def save(path: Any, payload: bytes, *, overwrite: bool = False) -> Path:
        monkeypatch.setattr(os, "fsync", fsync_then_interrupt)
        return original_save(path, payload, overwrite=overwrite)

    monkeypatch.setattr(checkpoint, "write_bytes_atomic", save)


def test_interrupted_write_keeps_checkpoint(
    training_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(training_data, run_dir, max_epochs=1))
    before = (run_dir / "last.pt").read_bytes()

    with monkeypatch.context() as patch:
        _interrupt_checkpoint_writes(patch)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(training_data, run_dir, max_epochs=2, resume=True))

    assert (run_dir / "last.pt").read_bytes() == before
    assert checkpoint.read_checkpoint(run_dir / "last.pt")["epoch"] == 0
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_resume_after_interrupted_write_matches(
    training_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(tiny_config(training_data, tmp_path / "reference"))
    run_dir = tmp_path / "run"
    train(tiny_config(training_data, run_dir, max_epochs=2))
    with monkeypatch.context() as patch:
        _interrupt_checkpoint_writes(patch)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(training_data, run_dir, resume=True))

    resumed = train(tiny_config(training_data, run_dir, resume=True))
    _assert_same_weights(reference.last_checkpoint, resumed.last_checkpoint)
    assert _lr(reference.last_checkpoint) == _lr(resumed.last_checkpoint)


# -------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------

TINY_OPTIONS = (
    "--width", "4", "--depth", "2", "--crop", "16", "16", "--batch-size", "4",
    "--steps-per-epoch", "2", "--max-epochs", "1", "--validation-subjects", "sub01",
    "--threads", "1",
)  # fmt: skip


def test_cli_train_cpu(run_cli: Callable[..., Result], training_data: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train", training_data, "--out", tmp_path / "run", *TINY_OPTIONS, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert "Trained on device cpu" in result.stderr
    command = (tmp_path / "run" / "command.txt").read_text()
    assert command.startswith("wmhseg")


def test_cli_train_rejects_flat_prior(
    run_cli: Callable[..., Result], training_data: Path, tmp_path: Path
) -> None:
    result = run_cli("train", training_data, "--out", tmp_path / "run", "--prior", "1", "5")
    assert result.exit_code != 0
    assert "greater than 1" in result.stderr
    assert "Traceback" not in result.output


def test_cli_train_existing_run_needs_resume(
    run_cli: Callable[..., Result], training_data: Path, tmp_path: Path
) -> None:
    first = run_cli("train", training_data, "--out", tmp_path / "run", *TINY_OPTIONS)
    assert first.exit_code == 0, first.output
    second = run_cli("train", training_data, "--out", tmp_path / "run", *TINY_OPTIONS)
    assert second.exit_code == OutputError.exit_code
    resumed = run_cli("train", training_data, "--out", tmp_path / "run", *TINY_OPTIONS, "--resume")
    assert resumed.exit_code == 0, resumed.output
