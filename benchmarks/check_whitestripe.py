"""White-matter mode and lesion median after WhiteStripe, on the shared real scans.

Usage: python benchmarks/check_whitestripe.py [DATA_DIR]  (default ../shared/data)

Each subject goes through `wmhseg preprocess` twice, as T1 + FLAIR and as FLAIR only (the
MNI patients with --skip register,n4,skullstrip). The white-matter mode of the normalized
images, in stripe s.d.s, is read inside three white-matter estimates made from the
preprocessed T1. Lesions, dilated by 2 voxels, are left out. The estimates:
  wmhseg       whitestripe.white_matter_estimate, the estimate WhiteStripe itself uses
  otsu-3d      top class of a 3-class Otsu split of the unsmoothed T1, eroded by 1 voxel
  otsu-plane3  the same class eroded by 3 voxels in-plane
Prints one Markdown table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from wmhseg.preprocess import whitestripe

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def _load(path: Path) -> FloatArray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _preprocess(arguments: list[str], out: Path) -> None:
    command = [sys.executable, "-m", "wmhseg", "preprocess", *arguments, "--out", str(out)]
    subprocess.run(command, capture_output=True, text=True, check=True)


def _estimates(
    t1: FloatArray, brain: BoolArray, spacing: tuple[float, ...]
) -> dict[str, BoolArray]:
    top_class = brain & (t1 > threshold_multiotsu(t1[brain], classes=3)[1])
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return {
        "wmhseg": whitestripe.white_matter_estimate(t1, brain, spacing=spacing),
        "otsu-3d": ndimage.binary_erosion(top_class),
        "otsu-plane3": ndimage.binary_erosion(top_class, in_plane, iterations=3),
    }


def main() -> None:
    data = Path(
        sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / ".." / "shared" / "data"
    )
    raw = data / "open_ms_data_longitudinal_raw"
    mni = data / "open_ms_data_3DMRMS_mni"
    subjects = {
        f"raw {p}": (raw / p / "study1_T1W.nii.gz", raw / p / "study1_FLAIR.nii.gz", None, [])
        for p in ("patient01", "patient04")
    }
    for p in ("patient07", "patient19"):
        subjects[f"MNI {p}"] = (
            mni / p / "T1.nii.gz",
            mni / p / "FLAIR.nii.gz",
            mni / p / "consensus_gt.nii.gz",
            ["--skip", "register,n4,skullstrip"],
        )

    print("| subject | estimate | T1 | FLAIR (T1 + FLAIR) | FLAIR (FLAIR only) | lesion median |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (t1_path, flair_path, wmh_path, extra) in subjects.items():
            both, alone = Path(tmp) / "both", Path(tmp) / "alone"
            wmh = ["--wmh", str(wmh_path)] if wmh_path else []
            _preprocess(["--t1", str(t1_path), "--flair", str(flair_path), *wmh,
                         "--subject", "s", *extra], both)  # fmt: skip
            _preprocess(["--flair", str(flair_path), "--subject", "s", *extra], alone)
            folder = both / "s"
            t1, flair = _load(folder / "T1.nii.gz"), _load(folder / "FLAIR.nii.gz")
            flair_alone = _load(alone / "s" / "FLAIR.nii.gz")
            brain = _load(folder / "brain_mask.nii.gz") > 0
            brain_alone = _load(alone / "s" / "brain_mask.nii.gz") > 0
            spacing = tuple(float(z) for z in nib.load(folder / "T1.nii.gz").header.get_zooms())
            lesions = np.zeros(brain.shape, dtype=bool)
            lesion_median = "–"
            if wmh_path:
                truth = _load(folder / "wmh.nii.gz") == 1
                lesions = ndimage.binary_dilation(truth, iterations=2)
                lesion_median = f"{float(np.median(flair[truth])):.1f}"
            for name, white in _estimates(t1, brain, spacing).items():
                white = white & ~lesions
                modes = [
                    whitestripe.kde_mode(t1[white]),
                    whitestripe.kde_mode(flair[white]),
                    # The FLAIR-only brain mask differs a little from the T1 + FLAIR one.
                    whitestripe.kde_mode(flair_alone[white & brain_alone]),
                ]
                cells = " | ".join(f"{mode:+.2f}" for mode in modes)
                print(f"| {label} | {name} | {cells} | {lesion_median} |")
            shutil.rmtree(both)
            shutil.rmtree(alone)


if __name__ == "__main__":
    main()
