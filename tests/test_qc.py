"""QC pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread

from wmhseg.errors import OutputError
from wmhseg.qc import choose_axial_slices, save_overlay_png


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    volume = np.zeros((40, 48, 20), dtype=np.float32)
    volume[8:32, 8:40, 3:17] = 100.0
    lesion = np.zeros(volume.shape, dtype=np.uint8)
    lesion[15:18, 20:24, 12] = 1
    return volume, lesion


def test_qc_png_written(tmp_path: Path) -> None:
    volume, lesion = _phantom()
    path = save_overlay_png(
        volume,
        np.diag([-1.0, -1.0, 3.0, 1.0]),
        tmp_path / "qc.png",
        outlines={"WMH": lesion},
        overlay=volume,
        title="phantom",
    )

    picture = imread(path)
    assert picture.ndim == 3
    assert picture.shape[1] > picture.shape[0]
    assert not list(tmp_path.glob("*.partial"))


def test_qc_png_refuses_overwrite(tmp_path: Path) -> None:
    volume, _ = _phantom()
    target = tmp_path / "qc.png"
    target.write_bytes(b"previous")

    with pytest.raises(OutputError, match="--overwrite"):
        save_overlay_png(volume, np.eye(4), target)
    assert target.read_bytes() == b"previous"


def test_slices_include_lesion_slice() -> None:
    volume, lesion = _phantom()

    without_focus = choose_axial_slices(volume, 4)
    with_focus = choose_axial_slices(volume, 4, focus=lesion)

    assert 12 in with_focus
    assert all(3 <= k <= 16 for k in without_focus)
    assert len(with_focus) == 4


def test_qc_png_rejects_unknown_focus(tmp_path: Path) -> None:
    volume, lesion = _phantom()

    with pytest.raises(ValueError, match="focus"):
        save_overlay_png(
            volume, np.eye(4), tmp_path / "qc.png", outlines={"WMH": lesion}, focus="x"
        )
