"""wmhseg.inference on tiny synthetic scans with a small stand-in network.

The stand-in network marks voxels brighter than 2 (after normalization) as WMH, so the expected
mask is known exactly. Preprocessing stages are skipped, because their own tests cover them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from wmhseg import inference, metrics
from wmhseg.errors import InputImageError, OutputError

ALL_STAGES = frozenset({"n4", "skullstrip", "whitestripe"})


class BrightVoxelNet(torch.nn.Module):
    """Logits > 0 where the input exceeds 2; rejects inputs that are not padded."""

    def __init__(self, size_divisor: int = 8, integer_output: bool = False) -> None:
        super().__init__()
        self.size_divisor = size_divisor
        self.integer_output = integer_output
        self.seen_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_shapes.append(tuple(x.shape))
        if x.shape[-1] % self.size_divisor or x.shape[-2] % self.size_divisor:
            raise ValueError(f"input {tuple(x.shape)} not padded to {self.size_divisor}")
        logits = (x - 2.0) * 10.0
        return logits.round().to(torch.int64) if self.integer_output else logits


@dataclass
class StandInInfo:
    """The ModelInfo fields that inference reads."""

    model_name: str = "bright-voxel"
    size_divisor: int = 8
    threshold: float = 0.5
    path: Path = Path("stand-in.pt")
    training: dict[str, object] = field(default_factory=dict)


def _predictor(size_divisor: int = 8, integer_output: bool = False) -> inference.Predictor:
    return inference.Predictor(
        model=BrightVoxelNet(size_divisor, integer_output),
        info=StandInInfo(size_divisor=size_divisor),
        device=torch.device("cpu"),
    )


def _scan(
    path: Path,
    shape: tuple[int, int, int] = (40, 48, 12),
    zooms: tuple[float, ...] = (2.0, 2.0, 4.0),
    *,
    with_lesion: bool = True,
) -> tuple[Path, np.ndarray]:
    """Write a skull-stripped-looking FLAIR: brain of 1.0, a lesion of 5.0, background 0.

    Voxels are large so that the brain passes the preprocessing's plausible-volume check
    (at least 100 mL) in a small array.
    """
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.array(shape, dtype=np.float32) * 0.45
    distance = sum(((grid[i] - centre[i]) / radius[i]) ** 2 for i in range(3))
    data = np.where(distance < 1.0, 1.0, 0.0).astype(np.float32)
    data += np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32) * (data > 0)
    lesion = np.zeros(shape, dtype=bool)
    x, y, z = (int(c) for c in centre)
    if with_lesion:
        lesion[x - 2 : x + 3, y - 3 : y + 2, max(z - 1, 0) : z + 1] = True
    data[lesion] = 5.0

    affine = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    affine[:3, 3] = (30.0, -40.0, -12.5)
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=2)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path, lesion


def _options(**overrides: object) -> inference.PredictOptions:
    values: dict[str, object] = {"modality": "flair", "skip": ALL_STAGES}
    values.update(overrides)
    return inference.PredictOptions(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ modality


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-01_ses-1_T1w.nii.gz", "t1"),
        ("sub-01_FLAIR.nii.gz", "flair"),
        ("sub-01_acq-t1_FLAIR.nii.gz", "flair"),
        ("study1_T1W.nii.gz", "t1"),
        ("FLAIR.nii.gz", "flair"),
        ("patient1_t2flair.nii", "flair"),
        ("T1.nii.gz", "t1"),
    ],
)
def test_modality_from_name(name: str, expected: str) -> None:
    assert inference.infer_modality(name)[0] == expected


@pytest.mark.parametrize("name", ["patient01.nii.gz", "t1_to_flair.nii.gz", "scan_t2.nii.gz"])
def test_modality_unknown_asks_for_option(name: str) -> None:
    with pytest.raises(InputImageError, match="--modality"):
        inference.infer_modality(name)


def test_modality_option_wins() -> None:
    assert inference.infer_modality("sub-01_T1w.nii.gz", "FLAIR") == ("flair", "option")


def test_skip_rejects_unknown_stage() -> None:
    with pytest.raises(Exception, match="bet"):
        inference.parse_skip("n4,bet")


# ------------------------------------------------------------------ network on slices


@pytest.mark.parametrize("shape", [(61, 75, 23), (17, 17, 5)])
def test_slices_padded_and_cropped(shape: tuple[int, int, int]) -> None:
    model = BrightVoxelNet(size_divisor=16)
    volume = np.zeros(shape, dtype=np.float32)
    volume[5, 7, 2] = 4.0
    probabilities = inference.predict_slices(
        model, volume, size_divisor=16, device=torch.device("cpu"), batch_size=4
    )
    assert probabilities.shape == shape
    assert probabilities[5, 7, 2] > 0.99
    assert probabilities.sum() - probabilities[5, 7, 2] < 1e-3


def test_slices_batched() -> None:
    model = BrightVoxelNet(size_divisor=1)
    inference.predict_slices(
        model,
        np.zeros((8, 8, 10), np.float32),
        size_divisor=1,
        device=torch.device("cpu"),
        batch_size=4,
    )
    assert [shape[0] for shape in model.seen_shapes] == [4, 4, 2]


def test_probabilities_on_input_grid_lps() -> None:
    # An LPS, anisotropic volume goes to the 1 mm RAS network grid and back to its own grid.
    affine = np.diag([-0.72, -0.72, 3.0, 1.0])
    volume = np.zeros((50, 60, 7), dtype=np.float32)
    volume[10:20, 30:40, 3] = 5.0
    probabilities = inference.predict_probabilities(_predictor(size_divisor=8), volume, affine)
    mask = probabilities >= 0.5
    assert probabilities.shape == volume.shape
    assert metrics.dice(mask, volume > 2) > 0.9


# ------------------------------------------------------------------ one image, written outputs


def test_predict_image_keeps_header(tmp_path: Path) -> None:
    image_path, lesion = _scan(tmp_path / "sub01_FLAIR.nii.gz")
    result = inference.predict_image(image_path, _predictor(), tmp_path / "out", _options())
    written = nib.load(result.outputs["mask"])
    original = nib.load(image_path)
    assert written.shape == original.shape
    np.testing.assert_allclose(written.header.get_sform(), original.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(written.header.get_qform(), original.header.get_qform(), atol=1e-5)
    assert int(written.header["sform_code"]) == 2
    assert int(written.header["qform_code"]) == 1
    np.testing.assert_allclose(written.header.get_zooms(), original.header.get_zooms(), atol=1e-5)
    assert metrics.dice(np.asarray(written.dataobj), lesion) > 0.9


@pytest.mark.parametrize(
    ("shape", "zooms"), [((61, 75, 23), (2.0, 2.0, 2.0)), ((17, 17, 5), (6.0, 6.0, 8.0))]
)
def test_predict_image_odd_sizes(
    tmp_path: Path, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> None:
    image_path, _ = _scan(tmp_path / "odd_FLAIR.nii.gz", shape=shape, zooms=zooms)
    result = inference.predict_image(image_path, _predictor(16), tmp_path / "out", _options())
    assert nib.load(result.outputs["mask"]).shape == shape


def test_integer_network_output_writes_uint8(tmp_path: Path) -> None:
    image_path, _ = _scan(tmp_path / "sub01_FLAIR.nii.gz")
    predictor = _predictor(integer_output=True)
    result = inference.predict_image(image_path, predictor, tmp_path / "out", _options())
    header = nib.load(result.outputs["mask"]).header
    assert int(header["datatype"]) == 2
    assert int(header["bitpix"]) == 8
    assert set(np.unique(np.asarray(nib.load(result.outputs["mask"]).dataobj))) <= {0, 1}


def test_empty_prediction_is_valid(tmp_path: Path) -> None:
    image_path, _ = _scan(tmp_path / "sub01_FLAIR.nii.gz", with_lesion=False)
    result = inference.predict_image(image_path, _predictor(), tmp_path / "out", _options())
    assert result.wmh_volume_ml == 0.0
    assert not np.asarray(nib.load(result.outputs["mask"]).dataobj).any()
    row = inference.read_stats_csv(tmp_path / "out" / "wmh_stats.csv")[0]
    assert float(row["wmh_volume_ml"]) == 0.0


def test_probabilities_saved_float32(tmp_path: Path) -> None:
    image_path, _ = _scan(tmp_path / "sub01_FLAIR.nii.gz")
    options = _options(save_probabilities=True)
    result = inference.predict_image(image_path, _predictor(), tmp_path / "out", options)
    image = nib.load(result.outputs["probabilities"])
    assert image.get_data_dtype() == np.float32
    assert float(image.get_fdata().max()) <= 1.0


def test_provenance_json(tmp_path: Path) -> None:
    image_path, _ = _scan(tmp_path / "sub01_FLAIR.nii.gz")
    result = inference.predict_image(image_path, _predictor(), tmp_path / "out", _options())
    record = json.loads(result.outputs["json"].read_text())
    assert record["input"]["sha256"] == inference.sha256_of(image_path)
    assert record["model"]["info"]["model_name"] == "bright-voxel"
    assert record["device"] == "cpu"
    assert "network" in record["timings_s"]


def test_stats_row_replaced_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, _ = _scan(tmp_path / "a_FLAIR.nii.gz")
    second, _ = _scan(tmp_path / "b_FLAIR.nii.gz")
    inference.predict_image(first, _predictor(), out, _options())
    inference.predict_image(second, _predictor(), out, _options())
    _scan(first, with_lesion=False)  # same name, now without a lesion
    inference.predict_image(first, _predictor(), out, _options(overwrite=True))
    rows = list(csv.DictReader((out / "wmh_stats.csv").open()))
    assert [row["image"] for row in rows] == ["a_FLAIR", "b_FLAIR"]
    assert float(rows[0]["wmh_volume_ml"]) == 0.0
    assert int(rows[1]["lesion_count"]) == 1


def test_existing_output_rejected(tmp_path: Path) -> None:
    image_path, _ = _scan(tmp_path / "sub01_FLAIR.nii.gz")
    inference.predict_image(image_path, _predictor(), tmp_path / "out", _options())
    with pytest.raises(OutputError, match="--overwrite"):
        inference.predict_image(image_path, _predictor(), tmp_path / "out", _options())


def test_input_never_replaced(tmp_path: Path) -> None:
    # An input named like an output of another input would be overwritten by it.
    other, _ = _scan(tmp_path / "sub01_FLAIR_wmh.nii.gz")
    image_path = tmp_path / "sub01_FLAIR.nii.gz"
    image_path.write_bytes(other.read_bytes())
    with pytest.raises(OutputError, match="input"):
        inference.check_outputs(image_path, tmp_path, _options(overwrite=True), inputs=[other])


def test_one_failure_does_not_stop_others(tmp_path: Path) -> None:
    good, _ = _scan(tmp_path / "good_FLAIR.nii.gz")
    bad = tmp_path / "bad_FLAIR.nii.gz"
    bad.write_bytes(b"not an image")
    batch = inference.predict_images([bad, good], _predictor(), tmp_path / "out", _options())
    assert [result.image for result in batch.results] == [good]
    assert [path for path, _ in batch.failures] == [bad]


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="collide"):
        inference.check_unique_names(
            [tmp_path / "a" / "FLAIR.nii.gz", tmp_path / "b" / "FLAIR.nii"]
        )


def test_network_sees_brain_box_only() -> None:
    affine = np.eye(4)
    volume = np.zeros((80, 90, 3), dtype=np.float32)
    brain = np.zeros(volume.shape, dtype=bool)
    brain[30:40, 20:30, :] = True
    volume[brain] = 1.0
    volume[35, 25, 1] = 5.0
    predictor = _predictor(size_divisor=1)
    probabilities = inference.predict_probabilities(predictor, volume, affine, brain_mask=brain)
    margin = inference.BRAIN_BOX_MARGIN
    assert predictor.model.seen_shapes[0][-2:] == (10 + 2 * margin, 10 + 2 * margin)
    assert probabilities[35, 25, 1] > 0.99


def test_network_skips_slices_without_brain() -> None:
    volume = np.zeros((20, 20, 6), dtype=np.float32)
    brain = np.zeros(volume.shape, dtype=bool)
    brain[5:15, 5:15, 2:4] = True
    volume[brain] = 1.0
    predictor = _predictor(size_divisor=1)
    inference.predict_probabilities(predictor, volume, np.eye(4), brain_mask=brain)
    assert sum(shape[0] for shape in predictor.model.seen_shapes) == 2
