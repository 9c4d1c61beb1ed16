"""Tests of checkpoint files: CPU tensors, GPU-saved files on a CPU machine, the model contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import checkpoint_payload

from wmhseg import checkpoint
from wmhseg.errors import ModelError


def _payload() -> dict[str, Any]:
    training = {"command": "test", "validation_dice": {"FLAIR": 0.5}}
    return {
        **checkpoint_payload(width=4, training=training),
        "optimizer_state": {"state": {}, "param_groups": []},
    }


def test_load_model_contract(tmp_path: Path) -> None:
    path = checkpoint.save_checkpoint(_payload(), tmp_path / "model.pt")
    model, info = checkpoint.load_model(path, device=torch.device("cpu"))
    assert not model.training
    assert info.model_name == "unet"
    assert info.size_divisor == 4
    assert info.threshold == 0.5
    assert info.in_plane_spacing_mm == 1.0
    assert info.training["validation_dice"] == {"FLAIR": 0.5}
    assert info.path == path


def test_load_model_run_folder_prefers_best(tmp_path: Path) -> None:
    checkpoint.save_checkpoint(_payload(), tmp_path / "last.pt")
    checkpoint.save_checkpoint(_payload(), tmp_path / "best.pt")
    _, info = checkpoint.load_model(tmp_path, device=torch.device("cpu"))
    assert info.path.name == "best.pt"


def test_load_model_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no best\.pt"):
        checkpoint.load_model(tmp_path, device=torch.device("cpu"))


def test_load_model_damaged_file(tmp_path: Path) -> None:
    path = checkpoint.save_checkpoint(_payload(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="cannot read"):
        checkpoint.load_model(path, device=torch.device("cpu"))


def test_default_model_loads() -> None:
    if not checkpoint.DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no default model in this checkout")
    model, info = checkpoint.load_model(None, device=torch.device("cpu"))
    assert info.path == checkpoint.DEFAULT_MODEL_PATH
    divisor = info.size_divisor
    assert model(torch.zeros(1, 1, divisor * 2, divisor * 2)).shape == (
        1,
        1,
        divisor * 2,
        divisor * 2,
    )


def _save_as_cuda(payload: dict[str, Any], path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Writes the storages tagged "cuda:0", exactly as torch.save does for CUDA tensors, so the
    # file needs map_location on a machine without a GPU.
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(payload, path)


def test_cuda_saved_file_needs_map_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so the simulated file loads without mapping")
    path = tmp_path / "gpu.pt"
    _save_as_cuda(_payload(), path, monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)


def test_cuda_saved_file_loads_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gpu.pt"
    _save_as_cuda(_payload(), path, monkeypatch)
    model, info = checkpoint.load_model(path, device=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert info.model_name == "unet"


def test_saved_tensors_are_cpu(tmp_path: Path) -> None:
    path = checkpoint.save_checkpoint(_payload(), tmp_path / "model.pt")
    # Without map_location: every storage must be tagged "cpu".
    state = torch.load(path, weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model_state"].values())


def test_to_cpu_nested() -> None:
    nested = {"a": [torch.ones(1), (torch.zeros(2),)], "b": 3}
    moved = checkpoint.to_cpu(nested)
    assert moved["b"] == 3
    assert moved["a"][1][0].device.type == "cpu"


def test_export_drops_resume_state(tmp_path: Path) -> None:
    source = checkpoint.save_checkpoint(_payload(), tmp_path / "last.pt")
    exported = checkpoint.export_model(source, tmp_path / "model.pt", training_update={"x": 1})
    payload = checkpoint.read_checkpoint(exported)
    assert "optimizer_state" not in payload
    assert payload["training"]["x"] == 1


def test_rng_states_roundtrip() -> None:
    states = checkpoint.capture_rng_states()
    expected = torch.rand(3)
    checkpoint.restore_rng_states(states)
    assert torch.equal(torch.rand(3), expected)
