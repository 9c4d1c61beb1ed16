"""Quality-control pictures: a row of axial slices with mask outlines, written as PNG.

People check segmentations and registrations by eye; these pictures are what they open first.
Slices are shown in neurological convention (the patient's right on the picture's right) and
with true millimetre proportions, whatever the file's voxel order.
"""

from __future__ import annotations

import io as bytes_io
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in containers
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from wmhseg.convert import ras_affine, to_ras
from wmhseg.io import write_bytes_atomic

OUTLINE_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2")


def choose_axial_slices(
    volume: npt.NDArray[np.generic], n_slices: int, *, focus: npt.NDArray[np.generic] | None = None
) -> list[int]:
    """Pick ``n_slices`` axial indices of a RAS volume, spread over its non-zero extent.

    With ``focus`` (a mask), half of the slices go to those with the most mask voxels, so that
    small lesion loads still show up in the picture.
    """
    depth = volume.shape[2]
    occupied = np.flatnonzero(np.any(volume != 0, axis=(0, 1)))
    low, high = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, depth - 1)
    margin = (high - low) // 10
    spread = np.linspace(low + margin, high - margin, n_slices).round().astype(int).tolist()

    if focus is None or not np.any(focus):
        return sorted(set(spread))
    # Busiest slices first, kept apart so that one large lesion does not fill the row.
    counts = np.count_nonzero(focus, axis=(0, 1))
    separation = max(1, (high - low) // (2 * n_slices))
    chosen: set[int] = set()
    for k in (int(k) for k in np.argsort(counts)[::-1]):
        if len(chosen) >= n_slices // 2 or counts[k] == 0:
            break
        if all(abs(k - other) >= separation for other in chosen):
            chosen.add(k)

    # Then the evenly spread slices farthest from those already chosen.
    remaining = [k for k in spread if k not in chosen]
    while len(chosen) < n_slices and remaining:
        farthest = max(remaining, key=lambda k: min((abs(k - c) for c in chosen), default=0))
        chosen.add(farthest)
        remaining.remove(farthest)
    return sorted(chosen)


def _intensity_window(volume: npt.NDArray[np.generic]) -> tuple[float, float]:
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def save_overlay_png(
    background: npt.NDArray[np.generic],
    affine: npt.ArrayLike,
    path: str | Path,
    *,
    outlines: Mapping[str, npt.NDArray[np.generic]] | None = None,
    overlay: npt.NDArray[np.generic] | None = None,
    focus: str | None = None,
    n_slices: int = 6,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Draw axial slices of ``background`` with mask outlines and write them as a PNG.

    Args:
        background: 3D image on the grid described by ``affine``.
        affine: voxel-to-world (RAS+) affine of ``background``.
        path: output PNG path; written atomically.
        outlines: masks on the same grid, each drawn as a coloured contour named in the legend.
        overlay: a second image on the same grid blended in a heat colour map, for checking
            that two images are aligned.
        focus: key of the outline (for example the WMH mask) whose busiest slices take half
            of the row; without it the slices are spread evenly over the image.
        n_slices: number of axial slices in the row.
        title: text above the row.
        overwrite: replace an existing file.
    """
    outlines = dict(outlines or {})
    matrix = np.asarray(affine, dtype=np.float64)
    image = to_ras(np.asarray(background, dtype=np.float32), matrix)
    masks = {name: to_ras(np.asarray(mask) > 0, matrix) for name, mask in outlines.items()}
    blended = to_ras(np.asarray(overlay, dtype=np.float32), matrix) if overlay is not None else None

    spacing = np.linalg.norm(ras_affine(matrix, image.shape)[:3, :3], axis=0)
    extent = (0.0, image.shape[0] * spacing[0], 0.0, image.shape[1] * spacing[1])
    if focus is not None and focus not in masks:
        raise ValueError(f"focus {focus!r} is not one of the outlines {sorted(masks)}")
    slices = choose_axial_slices(image, n_slices, focus=masks[focus] if focus else None)
    low, high = _intensity_window(image)

    figure, axes = plt.subplots(
        1, len(slices), figsize=(2.6 * len(slices), 3.2), squeeze=False, facecolor="black"
    )
    for axis, k in zip(axes[0], slices, strict=True):
        axis.imshow(
            image[:, :, k].T, cmap="gray", vmin=low, vmax=high, origin="lower", extent=extent
        )
        if blended is not None:
            overlay_low, overlay_high = _intensity_window(blended)
            axis.imshow(
                np.ma.masked_equal(blended[:, :, k].T, 0),
                cmap="hot",
                alpha=0.35,
                vmin=overlay_low,
                vmax=overlay_high,
                origin="lower",
                extent=extent,
            )
        for index, mask in enumerate(masks.values()):
            if np.any(mask[:, :, k]):
                axis.contour(
                    mask[:, :, k].T.astype(np.float32),
                    levels=[0.5],
                    colors=OUTLINE_COLOURS[index % len(OUTLINE_COLOURS)],
                    linewidths=0.9,
                    origin="lower",
                    extent=extent,
                )
        axis.set_title(f"axial {k}", color="white", fontsize=8)
        axis.text(0.02, 0.5, "L", color="white", fontsize=8, transform=axis.transAxes)
        axis.text(0.93, 0.5, "R", color="white", fontsize=8, transform=axis.transAxes)
        axis.set_axis_off()

    if masks:
        handles = [
            plt.Line2D([0], [0], color=OUTLINE_COLOURS[i % len(OUTLINE_COLOURS)], label=name)
            for i, name in enumerate(masks)
        ]
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            labelcolor="white",
        )
    if title:
        figure.suptitle(title, color="white", fontsize=10)

    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, facecolor="black", bbox_inches="tight")
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
