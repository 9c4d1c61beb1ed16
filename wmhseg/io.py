"""NIfTI reading, validation and writing.

Every image that wmhseg reads or writes goes through this module, so that geometry stays exact
and bad input turns into one clear :class:`~wmhseg.errors.InputImageError`:

* files are read by content, not by extension (gzip or plain NIfTI-1/NIfTI-2, DICOM detected);
* 4D files with one volume are squeezed, real 4D files are rejected before any ANTs call;
* a sheared or missing voxel-to-world transform is rejected, never replaced by an identity;
* NaN and Inf voxels are replaced by 0 with a warning, constant images are rejected;
* outputs copy the reference's shape, sform, qform, their codes and voxel sizes, are written to
  a temporary file in the same folder and renamed, and never replace an existing file unless
  ``overwrite`` is set.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from wmhseg.errors import GeometryError, InputImageError, OutputError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_GZIP_MAGIC = b"\x1f\x8b"
_DICOM_MAGIC_OFFSET = 128
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = b"n+2\x00"

# Columns of a rigid or scaled-rigid affine are orthogonal; this is the largest cosine between
# two columns that still counts as orthogonal (float32 headers round to about 1e-6).
ORTHOGONALITY_TOLERANCE = 1e-4

# The voxel count below which a "brain" cannot be a brain at any usual resolution (100 mL at 1 mm).
MIN_BRAIN_VOXELS = 100_000

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(path: PathLike) -> str:
    """Return the file name without ``.nii.gz`` or ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _looks_like_dicom(head: bytes) -> bool:
    return head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _reject_dicom_folder(path: Path) -> None:
    for child in sorted(path.iterdir())[:50]:
        if child.is_file():
            with child.open("rb") as handle:
                if _looks_like_dicom(handle.read(_DICOM_MAGIC_OFFSET + 4)):
                    raise InputImageError(
                        path,
                        "this is a folder of DICOM files; DICOM is not supported. "
                        "Convert it to NIfTI with dcm2niix first (dcm2niix -z y -o OUT_DIR "
                        f"{path}).",
                    )
    raise InputImageError(path, "this is a folder, not a NIfTI file. Give the .nii.gz file inside it.")


def read_nifti_bytes(path: PathLike) -> bytes:
    """Read a NIfTI file into uncompressed bytes, deciding gzip or plain by content.

    Raises:
        InputImageError: the file is missing, a folder, DICOM, not NIfTI, truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(path, "file not found. Check the path and its spelling.")
    if path.is_dir():
        _reject_dicom_folder(path)

    raw = path.read_bytes()
    if len(raw) == 0:
        raise InputImageError(path, "file is empty. Re-export or copy the image again.")

    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise InputImageError(
                path,
                f"file is truncated or corrupt ({error}). Copy or re-export the image again.",
            ) from error

    if _looks_like_dicom(raw):
        raise InputImageError(
            path,
            "this is a DICOM file, not NIfTI; DICOM is not supported. "
            "Convert it with dcm2niix first (dcm2niix -z y -o OUT_DIR DICOM_FOLDER).",
        )
    is_nifti1 = raw[344:348] in _NIFTI1_MAGICS
    is_nifti2 = raw[4:8] == _NIFTI2_MAGIC
    if not (is_nifti1 or is_nifti2):
        raise InputImageError(
            path,
            "not a NIfTI-1 or NIfTI-2 file (no NIfTI magic in the header). "
            "Convert the image to .nii.gz first.",
        )
    if raw[344:348] == b"ni1\x00":
        raise InputImageError(
            path,
            "this is the header of an .hdr/.img pair; give a single-file .nii or .nii.gz "
            "(convert with nibabel or fslchfiletype).",
        )

    name = path.name.lower()
    if compressed and not name.endswith(".gz"):
        _warn(f"{path}: file is gzip-compressed but its name does not end in .gz; read by content.")
    elif not compressed and name.endswith(".gz"):
        _warn(f"{path}: file is not gzip-compressed although its name ends in .gz; read by content.")
    return raw


def _warn(message: str) -> None:
    # The CLI routes warnings into logging (logging.captureWarnings), so no log call here.
    warnings.warn(message, UserWarning, stacklevel=3)


def _image_from_bytes(path: Path, raw: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    image_class = nib.Nifti2Image if raw[4:8] == _NIFTI2_MAGIC else nib.Nifti1Image
    try:
        image = image_class.from_bytes(raw)
    except Exception as error:  # nibabel raises several unrelated types for bad headers
        raise InputImageError(path, f"invalid NIfTI header ({error}).") from error

    header = image.header
    expected = int(header["vox_offset"]) + int(np.prod(image.shape)) * header.get_data_dtype().itemsize
    if len(raw) < expected:
        raise InputImageError(
            path,
            f"file is truncated or corrupt: the header promises {expected} bytes, the file has "
            f"{len(raw)}. Copy or re-export the image again.",
        )
    return image


def _squeeze_to_3d(path: Path, image: nib.Nifti1Image) -> nib.Nifti1Image:
    shape = image.shape
    if len(shape) == 3:
        return image
    if len(shape) < 3:
        raise InputImageError(path, f"image has {len(shape)} dimensions {shape}; give a 3D volume.")

    extra = shape[3:]
    volumes = int(np.prod(extra))
    if volumes != 1:
        raise InputImageError(
            path,
            f"4D image with {volumes} volumes (shape {shape}); give one 3D volume, for example "
            "extract the first with: fslroi IN OUT 0 1",
        )
    logger.info("%s: dropped singleton axes of shape %s; treating it as 3D", path, shape)
    data = np.asanyarray(image.dataobj).reshape(shape[:3])
    header = image.header.copy()
    header.set_data_shape(shape[:3])
    squeezed = image.__class__(data, None, header)
    _copy_geometry_fields(image.header, squeezed.header)
    return squeezed


def is_orthogonal(affine: npt.ArrayLike, tolerance: float = ORTHOGONALITY_TOLERANCE) -> bool:
    """Return True if the 3×3 part of ``affine`` is a rotation times voxel sizes (no shear)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(norms == 0):
        return False
    unit = matrix / norms
    gram = unit.T @ unit
    return bool(np.all(np.abs(gram - np.eye(3)) <= tolerance))


def choose_affine(
    path: PathLike, header: nib.Nifti1Header, *, allow_qform: bool = False
) -> npt.NDArray[np.float64]:
    """Return the voxel-to-world affine that wmhseg will use, or raise if none is usable.

    The sform is used when its code is set and it is a rigid transform with voxel sizes. A
    sheared sform is rejected; its qform replaces it only with ``allow_qform``, and that is logged.
    No code set at all is an error, never an identity fallback.
    """
    path = Path(path)
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    qform_usable = qform is not None and qform_code > 0 and np.all(np.isfinite(qform))

    if sform is not None and sform_code > 0:
        if is_orthogonal(sform) and abs(np.linalg.det(sform[:3, :3])) > 0:
            return np.asarray(sform, dtype=np.float64)

        shown = np.array2string(np.asarray(sform)[:3], precision=4, suppress_small=True)
        if qform_usable and allow_qform:
            logger.warning(
                "%s: sform is sheared (not a rigid transform); using the qform as requested", path
            )
            return np.asarray(qform, dtype=np.float64)
        fix = (
            "Pass --use-qform to use the file's valid qform instead, or fix the header"
            if qform_usable
            else "Fix the header (for example reslice with the tool that wrote it)"
        )
        raise GeometryError(
            path,
            f"sform is sheared, so it is not a rigid voxel-to-world transform:\n{shown}\n{fix}.",
        )

    if qform_usable:
        return np.asarray(qform, dtype=np.float64)
    raise GeometryError(
        path,
        "header has no voxel-to-world transform (sform_code and qform_code are both 0), so "
        "left and right cannot be told apart. Fix the header with the tool that converted it.",
    )


def _clean_intensities(path: Path, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    nan_count = int(np.isnan(data).sum())
    inf_count = int(np.isinf(data).sum())
    if nan_count or inf_count:
        _warn(f"{path}: replaced {nan_count} NaN and {inf_count} Inf voxels with 0.")
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)

    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise InputImageError(
            path,
            f"image has zero intensity variance (every voxel is {value:g}); check that the file "
            "holds an MR image and was exported completely.",
        )
    return data


def load_image(path: PathLike, *, allow_qform: bool = False) -> nib.Nifti1Image:
    """Read and validate a 3D MR image.

    Returns a float32 :class:`nibabel.Nifti1Image` whose affine is the usable transform (see
    :func:`choose_affine`) and whose header is a copy of the file's, codes included, so that
    outputs can copy it. Scaling (scl_slope, scl_inter) is applied to the data.

    Raises:
        InputImageError: on any problem, with a message that names the file and the fix.
    """
    path = Path(path)
    raw = read_nifti_bytes(path)
    image = _squeeze_to_3d(path, _image_from_bytes(path, raw))
    affine = choose_affine(path, image.header, allow_qform=allow_qform)

    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise GeometryError(path, f"invalid voxel sizes {tuple(zooms)}; they must be positive.")

    data = _clean_intensities(path, np.asarray(image.get_fdata(dtype=np.float32)))
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    loaded = nib.Nifti1Image(data, affine, header)
    _copy_geometry_fields(image.header, loaded.header)
    return loaded


def load_label(
    path: PathLike,
    reference: nib.Nifti1Image | None = None,
    *,
    max_label: int = 2,
) -> npt.NDArray[np.uint8]:
    """Read a label file (0 background, 1 WMH, 2 other pathology to ignore) as uint8.

    Scaled integer files (scl_slope, scl_inter) are decoded and rounded; values that are not
    close to integers or lie outside ``0..max_label`` are an error. With ``reference``, the
    label must be on the same grid.
    """
    path = Path(path)
    raw = read_nifti_bytes(path)
    image = _squeeze_to_3d(path, _image_from_bytes(path, raw))
    affine = choose_affine(path, image.header)
    values = np.asarray(image.get_fdata(dtype=np.float64))

    if not np.all(np.isfinite(values)):
        raise InputImageError(path, "label file contains NaN or Inf values.")
    rounded = np.rint(values)
    off_integer = float(np.max(np.abs(values - rounded))) if values.size else 0.0
    if off_integer > 1e-2:
        raise InputImageError(
            path,
            f"label values are not integers (up to {off_integer:.3g} away after scaling); "
            "this looks like an intensity image, not a label file.",
        )
    low, high = int(rounded.min()), int(rounded.max())
    if low < 0 or high > max_label:
        raise InputImageError(
            path,
            f"label values range from {low} to {high}; expected 0 (background), 1 (WMH)"
            + (f" and 2 (ignored)" if max_label >= 2 else "")
            + ". Binarize the file first.",
        )

    if reference is not None:
        check_same_grid(path, image.shape, affine, reference)
    return rounded.astype(np.uint8)


def check_same_grid(
    path: PathLike,
    shape: tuple[int, ...],
    affine: npt.ArrayLike,
    reference: nib.Nifti1Image,
    *,
    tolerance_mm: float = 1e-3,
) -> None:
    """Raise if an image's shape or affine differs from the reference's."""
    if tuple(shape[:3]) != tuple(reference.shape[:3]):
        raise InputImageError(
            path,
            f"shape {tuple(shape[:3])} differs from the image it belongs to "
            f"{tuple(reference.shape[:3])}; resample it onto that image's grid first.",
        )
    if not np.allclose(np.asarray(affine), reference.affine, atol=tolerance_mm):
        raise InputImageError(
            path,
            "affine differs from the image it belongs to; resample it onto that image's grid "
            "first (nearest-neighbour for labels).",
        )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_GEOMETRY_FIELDS = (
    "pixdim",
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def _copy_geometry_fields(source: nib.Nifti1Header, target: nib.Nifti1Header) -> None:
    for field in _GEOMETRY_FIELDS:
        if field == "pixdim":
            # Keep qfac (pixdim[0]) and the voxel sizes; time and higher pixdims are irrelevant.
            target["pixdim"][:4] = source["pixdim"][:4]
        else:
            target[field] = source[field]


def _image_like(
    data: npt.NDArray[np.generic], reference: nib.Nifti1Image, dtype: npt.DTypeLike
) -> nib.Nifti1Image:
    if tuple(data.shape) != tuple(reference.shape[:3]):
        raise ValueError(f"data shape {data.shape} differs from reference shape {reference.shape}")
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(dtype)
    _copy_geometry_fields(reference.header, header)
    header.set_slope_inter(1.0, 0.0)
    header["descrip"] = b"wmhseg"
    # With affine=None nibabel keeps the header's sform and qform exactly as copied.
    return nib.Nifti1Image(np.asarray(data, dtype=dtype), None, header)


def check_can_write(
    path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike] = ()
) -> Path:
    """Raise :class:`OutputError` if ``path`` may not be written; return it as a Path.

    An input is never replaced, even with ``overwrite``.
    """
    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise OutputError(f"{path}: output would replace an input file; choose another output.")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: output exists already; pass --overwrite to replace it.")
    return path


def prepare_output_dir(path: PathLike) -> Path:
    """Create an output folder (and its parents) and check that files can be written in it.

    Run this before long work starts, so that a permission problem fails in seconds.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{path}: cannot create the output folder ({error.strerror}). "
            "Choose a folder you can write to."
        ) from error
    if not path.is_dir():
        raise OutputError(f"{path}: output path exists and is not a folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".wmhseg-write-check-"):
            pass
    except OSError as error:
        raise OutputError(
            f"{path}: output folder is not writable ({error.strerror}). "
            "Choose a folder you can write to or fix its permissions."
        ) from error
    return path


def write_bytes_atomic(path: PathLike, payload: bytes, *, overwrite: bool = False) -> Path:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place.

    A crash or kill leaves either the previous file or nothing, never a partial file.
    """
    path = check_can_write(path, overwrite=overwrite)
    if not path.parent.exists():
        raise OutputError(f"{path.parent}: output folder does not exist.")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_nifti(image: nib.Nifti1Image, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write a NIfTI image atomically, gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    return write_bytes_atomic(path, payload, overwrite=overwrite)


def save_image(
    data: npt.NDArray[np.floating],
    reference: nib.Nifti1Image,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a float32 image on the reference's grid, with its sform, qform and codes."""
    values = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"refusing to write NaN or Inf voxels to {path}")
    return save_nifti(_image_like(values, reference, np.float32), path, overwrite=overwrite)


def save_mask(
    mask: npt.NDArray[np.generic],
    reference: nib.Nifti1Image,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a binary mask as uint8 {0, 1} with unit scaling on the reference's grid."""
    values = np.asarray(mask)
    if values.dtype != np.bool_:
        values = values > 0
    return save_nifti(_image_like(values.astype(np.uint8), reference, np.uint8), path, overwrite=overwrite)
