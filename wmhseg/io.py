"""NIfTI reading, validation and writing.

Every image that wmhseg reads or writes goes through this module, so that geometry stays exact
and bad input turns into one clear :class:`~wmhseg.errors.InputImageError`:

* files are read by content, not by extension (gzip or plain NIfTI-1/NIfTI-2); DICOM, NRRD and
  MGH files and DICOM folders are recognised and rejected with the conversion to run;
* 4D files with one volume are squeezed with a warning, real 4D files are rejected before any
  ANTs or ITK call;
* a sheared or missing voxel-to-world transform is rejected, never replaced by an identity. A
  valid qform replaces a sheared sform only with ``allow_qform`` (CLI flag ``--use-qform``);
* NaN and Inf voxels are replaced by 0 with a warning, constant images are rejected;
* outputs copy the reference's shape, sform, qform, their codes and voxel sizes, are written to
  a temporary file in the same folder and renamed, and never replace an existing file unless
  ``overwrite`` is set. A missing output folder is created, parents included.

Notices about unusual but usable input are issued as :class:`InputImageWarning`; the CLI routes
Python warnings into logging.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterable
from io import BytesIO
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

# Columns of a rigid or scaled-rigid affine are orthogonal. This is the largest cosine between
# two columns that still counts as orthogonal, because float32 headers round to about 1e-6.
ORTHOGONALITY_TOLERANCE = 1e-4

# The voxel count below which a "brain" cannot be a brain at any usual resolution (100 mL at 1 mm).
MIN_BRAIN_VOXELS = 100_000

# A decoded label may lie this far from an integer and still be rounded to it. Scaled integer
# files cannot always store 0, 1 and 2 exactly (slope 1/3 with intercept 0.5 is off by 1/6),
# while a probability map or intensity image has values near 0.5 and is still rejected.
LABEL_ROUNDING_TOLERANCE = 0.25

# How many files of a folder are opened to decide whether it is a DICOM series.
_DICOM_FOLDER_PROBE_FILES = 200

NIFTI_SUFFIXES = (".nii.gz", ".nii")

_DCM2NIIX_HINT = (
    "DICOM is not supported; convert with dcm2niix first (dcm2niix -z y -o OUT_DIR {})."
)


class InputImageWarning(UserWarning):
    """An input image is unusual but usable (wrong suffix, extra axis, NaN voxels, ...)."""


def strip_nifti_suffix(path: PathLike) -> str:
    """Return the file name without ``.nii.gz`` or ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _warn(message: str) -> None:
    # stacklevel 3 points at the caller of the public function that found the problem.
    warnings.warn(message, InputImageWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Recognising the file format
# --------------------------------------------------------------------------------------------


def _looks_like_dicom(head: bytes) -> bool:
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    # Old DICOM files without the 128-byte preamble start with a group 0x0002 or 0x0008 tag in
    # little-endian explicit VR: two upper-case letters at bytes 4-5.
    vr = head[4:6]
    return head[:2] in (b"\x02\x00", b"\x08\x00") and len(vr) == 2 and vr.isalpha() and vr.isupper()


def _reject_folder(path: Path) -> None:
    probed = 0
    nifti_files: list[str] = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            if name.lower().endswith(NIFTI_SUFFIXES):
                nifti_files.append(name)
            if probed >= _DICOM_FOLDER_PROBE_FILES:
                continue
            probed += 1
            try:
                with open(os.path.join(root, name), "rb") as handle:
                    head = handle.read(_DICOM_MAGIC_OFFSET + 4)
            except OSError:
                continue
            if _looks_like_dicom(head):
                raise InputImageError(
                    path, "this is a folder of DICOM files. " + _DCM2NIIX_HINT.format(path)
                )
    hint = f" It contains {', '.join(sorted(nifti_files)[:3])}." if nifti_files else ""
    raise InputImageError(
        path, f"this is a folder, not a NIfTI file. Give the .nii.gz file itself.{hint}"
    )


def _reject_other_formats(path: Path, raw: bytes) -> None:
    if _looks_like_dicom(raw):
        raise InputImageError(
            path, "this is a DICOM file, not NIfTI. " + _DCM2NIIX_HINT.format("DICOM_FOLDER")
        )
    if raw[:4] == b"NRRD":
        raise InputImageError(
            path,
            "this is an NRRD file, not NIfTI. Convert it to .nii.gz first (for example with "
            "SimpleITK or 3D Slicer).",
        )
    # FreeSurfer MGH/MGZ: big-endian version 1, then four positive dimensions.
    if raw[:4] == b"\x00\x00\x00\x01" and len(raw) >= 284:
        raise InputImageError(
            path,
            "this looks like a FreeSurfer MGH/MGZ file, not NIfTI. Convert it with "
            "mri_convert IN.mgz OUT.nii.gz first.",
        )


def check_image_path(path: PathLike) -> None:
    """Raise :class:`InputImageError` if ``path`` is missing or a folder (DICOM or not)."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(path, "file not found. Check the path and its spelling.")
    if path.is_dir():
        _reject_folder(path)


def read_nifti_bytes(path: PathLike) -> bytes:
    """Read a NIfTI file into uncompressed bytes, deciding gzip or plain by content.

    A gzip file without a ``.gz`` suffix, or a plain file with one, is read with an
    :class:`InputImageWarning`.

    Raises:
        InputImageError: the file is missing, a folder, DICOM or another format, truncated or
            corrupt.
    """
    path = Path(path)
    check_image_path(path)

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputImageError(path, f"cannot read the file ({error.strerror}).") from error
    if len(raw) == 0:
        raise InputImageError(path, "file is empty. Copy or re-export the image again.")

    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise InputImageError(
                path,
                f"file is truncated or corrupt ({error}). Copy or re-export the image again.",
            ) from error

    _reject_other_formats(path, raw)
    is_nifti1 = raw[344:348] in _NIFTI1_MAGICS
    is_nifti2 = raw[4:8] == _NIFTI2_MAGIC
    if not (is_nifti1 or is_nifti2):
        raise InputImageError(
            path,
            "not a NIfTI-1 or NIfTI-2 file (no NIfTI magic in the header), whatever its "
            "extension. Check that it is the image you meant, or convert the image to NIfTI "
            "(for example with dcm2niix).",
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
        _warn(
            f"{path}: file is not gzip-compressed although its name ends in .gz; read by content."
        )
    return raw


def _image_from_bytes(path: Path, raw: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    image_class = nib.Nifti2Image if raw[4:8] == _NIFTI2_MAGIC else nib.Nifti1Image
    # The header is checked on its own first, because nibabel reads the voxels of an in-memory
    # file at once and a short file would fail there with a bare OSError.
    try:
        header = image_class.header_class.from_fileobj(BytesIO(raw))
        shape = header.get_data_shape()
        dtype = header.get_data_dtype()
    except Exception as error:  # nibabel raises several unrelated types for bad headers
        raise InputImageError(path, f"invalid NIfTI header ({error}).") from error

    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputImageError(
            path, f"voxels are stored as {dtype} (RGB, complex or similar); give a scalar image."
        )
    if any(int(size) <= 0 for size in shape):
        raise InputImageError(path, f"image has an empty dimension (shape {shape}).")

    expected = int(header["vox_offset"]) + int(np.prod(shape)) * dtype.itemsize
    if len(raw) < expected:
        raise InputImageError(
            path,
            f"file is truncated or corrupt: the header promises {expected} bytes, the file has "
            f"{len(raw)}. Copy or re-export the image again.",
        )
    try:
        return image_class.from_bytes(raw)
    except Exception as error:
        raise InputImageError(path, f"invalid NIfTI file ({error}).") from error


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return the 3D shape of an image, dropping trailing singleton axes with a warning."""
    if len(shape) < 3:
        raise InputImageError(path, f"image has {len(shape)} dimensions {shape}; give a 3D volume.")
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    volumes = int(np.prod(shape[3:]))
    if volumes != 1:
        raise InputImageError(
            path,
            f"4D image with {volumes} volumes; give one 3D volume (the shape is {shape}). "
            "For example extract the first with: fslroi IN OUT 0 1",
        )
    _warn(f"{path}: dropped the singleton axes of shape {shape}; treating it as a 3D volume.")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


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
    sheared or singular sform is rejected; the file's qform replaces it only with
    ``allow_qform``, and that is logged at WARNING level. With the sform code 0 the qform is
    used. With both codes 0 the file is rejected, never given an identity affine.
    """
    path = Path(path)
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    qform_usable = (
        qform is not None
        and qform_code > 0
        and bool(np.all(np.isfinite(qform)))
        and abs(float(np.linalg.det(qform[:3, :3]))) > 0
    )

    if sform is not None and sform_code > 0:
        if is_orthogonal(sform) and abs(float(np.linalg.det(sform[:3, :3]))) > 0:
            return np.asarray(sform, dtype=np.float64)

        if qform_usable and allow_qform:
            logger.warning(
                "%s: sform is sheared or singular (not a rigid transform); using the qform "
                "instead, as requested with --use-qform",
                path,
            )
            return np.asarray(qform, dtype=np.float64)

        sform_text = np.array2string(np.asarray(sform)[:3], precision=4, suppress_small=True)
        fix = (
            "Pass --use-qform to use the file's valid qform instead, or fix the header"
            if qform_usable
            else "The qform is not set either, so no usable transform is left. Fix the header "
            "(for example reslice with the tool that wrote the file)"
        )
        raise GeometryError(
            path,
            f"sform is sheared or singular, so it is not a rigid voxel-to-world transform:\n"
            f"{sform_text}\n{fix}.",
        )

    if qform_usable:
        return np.asarray(qform, dtype=np.float64)
    raise GeometryError(
        path,
        "header has no usable voxel-to-world transform (sform_code and qform_code are both 0), "
        "so left and right cannot be told apart. Fix the header with the tool that converted it.",
    )


def _check_zooms(path: Path, header: nib.Nifti1Header) -> None:
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise GeometryError(path, f"invalid voxel sizes {tuple(zooms)}; they must be positive.")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _clean_intensities(path: Path, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    nan_count = int(np.isnan(data).sum())
    inf_count = int(np.isinf(data).sum())
    if nan_count or inf_count:
        _warn(f"{path}: replaced {nan_count} NaN and {inf_count} Inf voxels with 0.")
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)

    if float(data.max()) == float(data.min()):
        raise InputImageError(
            path,
            f"image has zero intensity variance (every voxel is {float(data.flat[0]):g}); check "
            "that the file contains an MR image and was exported completely.",
        )
    return data


def load_image_and_header(
    path: PathLike, *, allow_qform: bool = False
) -> tuple[nib.Nifti1Image, nib.Nifti1Header]:
    """Read and validate a 3D MR image; also return the file's header as stored.

    The first item is what :func:`load_image` returns. The second is the header as read from
    the file (original data type, scaling and shape), for reports such as ``wmhseg check``.
    """
    path = Path(path)
    raw = read_nifti_bytes(path)
    image = _image_from_bytes(path, raw)
    shape = _spatial_shape(path, image.shape)
    affine = choose_affine(path, image.header, allow_qform=allow_qform)
    _check_zooms(path, image.header)

    data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    data = _clean_intensities(path, data)

    header = image.header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    loaded = nib.Nifti1Image(data, affine, header)
    # The constructor rewrites the sform when ``affine`` is the qform (--use-qform); restore
    # the file's fields so that outputs carry the same header as the input.
    _copy_geometry_fields(image.header, loaded.header)
    return loaded, image.header


def load_image(path: PathLike, *, allow_qform: bool = False) -> nib.Nifti1Image:
    """Read and validate a 3D MR image.

    Returns a float32 :class:`nibabel.Nifti1Image` whose ``affine`` is the usable transform
    (see :func:`choose_affine`) and whose header is a copy of the file's, codes included, so
    that outputs can copy it. Scaling (scl_slope, scl_inter) is applied to the data. With
    ``allow_qform`` and a sheared sform, ``affine`` is the qform while the header keeps the
    file's sheared sform.

    Raises:
        InputImageError: on any problem, with a message that names the file and the fix.
    """
    return load_image_and_header(path, allow_qform=allow_qform)[0]


def load_label(
    path: PathLike,
    reference: nib.Nifti1Image | None = None,
    *,
    max_label: int = 2,
    allow_qform: bool = False,
) -> npt.NDArray[np.uint8]:
    """Read a label file (0 background, 1 WMH, 2 other pathology to ignore) as uint8.

    Scaled integer files (scl_slope, scl_inter) are decoded and rounded to the nearest integer.
    Values more than :data:`LABEL_ROUNDING_TOLERANCE` from an integer, or outside
    ``0..max_label``, are an error. With ``reference``, the label must be on the same grid.
    """
    path = Path(path)
    raw = read_nifti_bytes(path)
    image = _image_from_bytes(path, raw)
    shape = _spatial_shape(path, image.shape)
    affine = choose_affine(path, image.header, allow_qform=allow_qform)
    values = np.asarray(image.get_fdata(dtype=np.float64)).reshape(shape)

    if not np.all(np.isfinite(values)):
        raise InputImageError(
            path, "label file contains NaN or Inf values; it is not a label file."
        )
    rounded = np.rint(values)
    off_integer = float(np.max(np.abs(values - rounded)))
    if off_integer > LABEL_ROUNDING_TOLERANCE:
        raise InputImageError(
            path,
            f"label values are not integers (up to {off_integer:.3g} away after scaling); "
            "this looks like an intensity image or a probability map, not a label file.",
        )
    if off_integer > 0:
        logger.info(
            "%s: rounded scaled label values (up to %.3g from an integer)", path, off_integer
        )

    low, high = int(rounded.min()), int(rounded.max())
    if low < 0 or high > max_label:
        allowed = "0 (background), 1 (WMH)" + (" and 2 (ignored)" if max_label >= 2 else "")
        raise InputImageError(
            path,
            f"label values range from {low} to {high}; expected {allowed}. "
            "Relabel or binarize the file first.",
        )

    if reference is not None:
        check_same_grid(path, shape, affine, reference)
    return rounded.astype(np.uint8)


def check_same_grid(
    path: PathLike,
    shape: tuple[int, ...],
    affine: npt.ArrayLike,
    reference: nib.Nifti1Image,
    *,
    tolerance_mm: float = 1e-3,
) -> None:
    """Raise :class:`InputImageError` if an image's shape or affine differs from the reference's."""
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

# Tolerance (in affine units, mm) for deciding that an in-memory affine is the header's own.
_HEADER_AFFINE_TOLERANCE = 1e-5


def _copy_geometry_fields(source: nib.Nifti1Header, target: nib.Nifti1Header) -> None:
    for field in _GEOMETRY_FIELDS:
        if field == "pixdim":
            # Keep qfac (pixdim[0]) and the voxel sizes; time and higher pixdims are irrelevant.
            target["pixdim"][:4] = source["pixdim"][:4]
        else:
            target[field] = source[field]


def _header_matches_affine(header: nib.Nifti1Header, affine: npt.NDArray[np.float64]) -> bool:
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    for matrix, code in ((sform, sform_code), (qform, qform_code)):
        if (
            matrix is not None
            and code > 0
            and np.allclose(matrix, affine, atol=_HEADER_AFFINE_TOLERANCE)
        ):
            return True
    return False


def _geometry_header(reference: nib.Nifti1Image) -> nib.Nifti1Header:
    """Return a header with the reference's geometry: its file fields, or its affine if newer.

    An image built as ``Nifti1Image(data, new_affine, old_header)`` keeps the old sform and
    qform in its header until it is saved. Copying those fields would silently write the old
    geometry, so then the sform and qform are set from ``reference.affine``, keeping the
    header's codes (sform "aligned" and qform "scanner" where they were 0).
    """
    source = reference.header
    header = nib.Nifti1Header()
    affine = reference.affine
    if affine is None or _header_matches_affine(source, np.asarray(affine, dtype=np.float64)):
        _copy_geometry_fields(source, header)
        return header

    matrix = np.asarray(affine, dtype=np.float64)
    header.set_data_shape(reference.shape[:3])
    sform_code = int(source["sform_code"]) or 2
    qform_code = int(source["qform_code"]) or 1
    header.set_sform(matrix, code=sform_code)
    if is_orthogonal(matrix):
        header.set_qform(matrix, code=qform_code)
    else:
        header.set_qform(matrix, code=0)
    header.set_zooms(tuple(float(v) for v in np.linalg.norm(matrix[:3, :3], axis=0)))
    header["xyzt_units"] = source["xyzt_units"]
    return header


def _image_like(
    data: npt.NDArray[np.generic], reference: nib.Nifti1Image, dtype: npt.DTypeLike
) -> nib.Nifti1Image:
    if tuple(data.shape) != tuple(reference.shape[:3]):
        raise ValueError(f"data shape {data.shape} differs from reference shape {reference.shape}")
    geometry = _geometry_header(reference)
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(dtype)
    _copy_geometry_fields(geometry, header)
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
    if path.is_dir():
        raise OutputError(f"{path}: output path is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: output exists already; pass --overwrite to replace it.")
    return path


def _probe_writable(folder: Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".wmhseg-write-check-"):
            pass
    except OSError as error:
        raise OutputError(
            f"{folder}: output folder is not writable ({error.strerror}). "
            "Choose a folder you can write to or fix its permissions."
        ) from error


def prepare_output_dir(path: PathLike) -> Path:
    """Create an output folder (and its parents) and check that files can be written in it.

    Run this before long work starts, so that a permission problem fails in seconds.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: output path exists and is not a folder; choose a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{path}: cannot create the output folder ({error.strerror}). "
            "Choose a folder you can write to."
        ) from error
    _probe_writable(path)
    return path


def check_output_dir(path: PathLike) -> Path:
    """Check that an output folder could be written, leaving nothing behind.

    For a missing folder, the nearest existing parent must be a folder in which a subfolder
    can be created, because :func:`prepare_output_dir` will create the rest. A temporary
    subfolder is made and removed to find out: permission bits do not tell for root, nor on
    read-only and virtual file systems. Returns that existing folder.
    """
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        role = "output path" if existing == path else "parent of the output folder"
        raise OutputError(f"{existing}: {role} exists and is not a folder; choose a folder.")
    if existing != path:
        try:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".wmhseg-write-check-"))
        except OSError as error:
            raise OutputError(
                f"{path}: cannot create the output folder because {existing} is not writable "
                f"({error.strerror}). Choose a folder you can write to."
            ) from error
    else:
        _probe_writable(path)
    return existing


def _file_mode() -> int:
    # mkstemp creates files readable by the owner only; give outputs the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: PathLike, payload: bytes, *, overwrite: bool = False) -> Path:
    """Write ``payload`` to a temporary file beside ``path``, then rename it into place.

    A missing parent folder is created. A crash or kill leaves either the previous file or
    nothing at ``path``, never a partial file.
    """
    path = check_can_write(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
    except OSError as error:
        raise OutputError(
            f"{path}: cannot write the output ({error.strerror}). Choose a folder you can write to."
        ) from error

    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _file_mode())
        # NOTE: with overwrite=False a file created by another process between the check above
        # and this rename is still replaced; wmhseg itself never writes one output twice.
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"{path}: writing the output failed ({error.strerror}).") from error
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
    """Write a float32 image on the reference's grid, with its sform, qform and codes.

    Raises:
        ValueError: ``data`` contains NaN or Inf, or its shape differs from the reference's.
    """
    values = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"cannot write NaN or Inf voxels to {path}; replace them first")
    return save_nifti(_image_like(values, reference, np.float32), path, overwrite=overwrite)


def save_mask(
    mask: npt.NDArray[np.generic],
    reference: nib.Nifti1Image,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a binary mask as uint8 {0, 1} with unit scaling on the reference's grid.

    ``mask`` may be boolean or any numeric type (int64 network output included) with values
    0 and 1 only.

    Raises:
        ValueError: ``mask`` has other values (use :func:`save_label` for labels 0/1/2).
    """
    values = np.asarray(mask)
    if values.dtype != np.bool_ and not np.all((values == 0) | (values == 1)):
        found = np.unique(values[(values != 0) & (values != 1)])[:5]
        raise ValueError(
            f"mask for {path} must contain only 0 and 1, found {found.tolist()}; threshold "
            "it first, or use save_label for multi-valued labels"
        )
    return save_nifti(
        _image_like(values.astype(np.uint8), reference, np.uint8), path, overwrite=overwrite
    )


def save_label(
    labels: npt.NDArray[np.generic],
    reference: nib.Nifti1Image,
    path: PathLike,
    *,
    max_label: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write integer labels ``0..max_label`` as uint8 with unit scaling on the reference's grid.

    Raises:
        ValueError: ``labels`` has non-integer values or values outside ``0..max_label``.
    """
    values = np.asarray(labels)
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
        raise ValueError(f"labels for {path} must be integers")
    if values.size and (values.min() < 0 or values.max() > max_label):
        raise ValueError(
            f"labels for {path} range from {values.min()} to {values.max()}, "
            f"expected 0..{max_label}"
        )
    return save_nifti(
        _image_like(values.astype(np.uint8), reference, np.uint8), path, overwrite=overwrite
    )
