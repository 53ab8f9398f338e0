"""Reading 3-D volumes (NIfTI files, DICOM series folders) with their geometry, and label maps; writing NIfTI.

The one volume reader of medmoe: segmentation training, evaluation and prediction read CTs here, and the 2-D
image readers of :mod:`medmoe.data.readers` share its NIfTI opener (:func:`~medmoe.data.readers.nifti.load_nifti`).

Every volume comes back as a :class:`Volume`: an ``(X, Y, Z)`` array in the file's own voxel order and the
4x4 voxel -> world affine in RAS+ millimetres (the NIfTI convention, which is also MONAI's default space).
DICOM series are stacked as ``(column, row, slice)`` with slices sorted along the slice normal by
``ImagePositionPatient``, rescaled to Hounsfield units, and their LPS geometry converted to RAS.

:class:`VolumeReader` wraps the same code as a MONAI ``ImageReader`` so that ``LoadImaged`` reads DICOM
series folders and NIfTI files alike. DICOM series go through :class:`DicomSeriesReader`, MONAI's
``PydicomReader`` with medmoe's file recognition, budgets, slice order and stacking in front (its docstring says
which part does what).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.data.image_reader import ImageReader, PydicomReader
from monai.utils import MetaKeys, SpaceKeys
from pydicom.pixels import pixel_array

from medmoe.data.readers.dicom import LOOKED_FOR, is_dicom_file, read_dicom_header
from medmoe.data.readers.nifti import is_nifti, load_nifti
from medmoe.data.readers.safety import require_regular_file
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import MAX_VOXELS_ENV, check_budget

logger = logging.getLogger(__name__)

# Below this the 1st percentile of a CT is air or fat; MR, PET and photographs are never negative there.
_CT_LOW_PERCENTILE_MAX_HU = -200.0
_CT_PLAUSIBLE_RANGE = (-3100.0, 40000.0)


@dataclass
class Volume:
    """A 3-D image and its geometry.

    Attributes:
        array: (X, Y, Z) voxel values (Hounsfield units for CT, integer ids for label maps).
        affine: (4, 4) voxel index -> RAS+ world millimetres.
        path: the file or folder read.
        meta: extra facts (``modality``, ``format``, ``series_uid``...).
    """

    array: np.ndarray
    affine: np.ndarray
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)


DICOM_SUFFIXES = (".dcm", ".ima")
_HEADER_DEFER_BYTES = 64 * 1024  # values this large (the pixel data) are read when a slice is decoded


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files of a series folder, by their first bytes (:func:`~medmoe.data.readers.dicom.sniff_dicom`,
    at most 512 bytes read per file): any name, hidden files and sub-folders left out.

    Raises:
        InvalidInputError: the folder holds no file, or none that starts like DICOM (the message says what
            was looked for and names a few of the files).
    """
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    dicoms = [p for p in files if is_dicom_file(p)]
    if not files:
        raise InvalidInputError(f"{folder}: folder holds no DICOM files (expected one CT series, one file per slice)")
    if not dicoms:
        examples = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
        raise InvalidInputError(f"{folder}: folder holds no DICOM files: none of its {len(files)} file(s) ({examples}) "
                                f"starts like DICOM (looked for {LOOKED_FOR})")
    for p in files:
        if p.suffix.lower() in DICOM_SUFFIXES and p not in dicoms:
            logger.warning("%s: named like DICOM but does not start like DICOM; skipped", p)
    return dicoms


def read_ct(path: str | os.PathLike, *, check_ct: bool = True, max_voxels: int | None = None) -> Volume:
    """Read a CT volume from a NIfTI file or a DICOM series folder.

    Args:
        path: ``.nii`` / ``.nii.gz`` file, or a folder holding one DICOM series (one file per slice).
        check_ct: refuse DICOM whose Modality is not CT and volumes whose intensities are not plausible
            Hounsfield units (no air or fat anywhere, e.g. MR or a photograph).
        max_voxels: limit on the volume's voxels (default ``MEDMOE_MAX_VOXELS``, 2**30: a 512 x 512 x 2000
            CT passes), checked from the NIfTI header or the DICOM headers before any voxel is decoded.

    Returns:
        :class:`Volume` with ``array`` (X, Y, Z) float32 in HU.

    Raises:
        InvalidInputError: the path does not exist, is not a volume format, is 2-D, or is not CT.
        CorruptFileError: the file exists but cannot be decoded, or is not a regular file (FIFO, device).
        DecodeLimitError: the headers claim more voxels than ``max_voxels``.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or folder (expected a CT as NIfTI or a DICOM series folder)")
    if p.is_dir():
        volume = read_dicom_series(p, check_ct=check_ct, max_voxels=max_voxels)
    elif is_nifti(p):
        volume = read_nifti_volume(p, max_voxels=max_voxels, dtype=np.float32)
    elif p.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(p):
        raise _single_dicom_error(p)
    else:
        raise InvalidInputError(
            f"{p}: not a CT volume format (got {p.suffix or 'no suffix'!r}; expected a .nii/.nii.gz file "
            "or a folder holding a DICOM series)"
        )
    if check_ct:  # both readers return float32
        check_hounsfield(volume)
    return volume


def read_label(path: str | os.PathLike, *, max_voxels: int | None = None) -> Volume:
    """Read an integer label map (NIfTI). Values are rounded to integers; negative values are rejected.
    ``max_voxels`` as for :func:`read_ct`."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such label file")
    if not is_nifti(p):
        raise InvalidInputError(f"{p}: label maps must be NIfTI (.nii/.nii.gz), got {p.suffix!r}")
    volume = read_nifti_volume(p, max_voxels=max_voxels)
    arr = volume.array
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise CorruptFileError(f"{p}: label map holds NaN or infinite values")
        arr = np.rint(arr)
    if arr.size and arr.min() < 0:
        raise CorruptFileError(f"{p}: label map holds negative ids (min {arr.min()}); expected 0 = background, 1..N")
    volume.array = arr.astype(np.int32 if arr.size and arr.max() > 32767 else np.int16, copy=False)
    return volume


def read_nifti_volume(path: str | os.PathLike, *, max_voxels: int | None = None, dtype: Any = None) -> Volume:
    """Read a 3-D NIfTI file (a trailing singleton 4th dimension is dropped).

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        max_voxels: limit on the voxels its header announces (default ``MEDMOE_MAX_VOXELS``), checked
            before reading them.
        dtype: the float dtype of a scaled image (``scl_slope`` / ``scl_inter`` set) or of the result; None
            keeps unscaled data in its stored dtype and scales to float32 (never to nibabel's float64).
    """
    p = Path(path)
    require_regular_file(p, "NIfTI file")
    image = load_nifti(str(p), str(p), max_voxels=max_voxels)
    try:
        proxy = image.dataobj
        scaled = nib.is_proxy(proxy) and not (float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0)
        if scaled or dtype is not None:
            array = image.get_fdata(dtype=np.dtype(dtype or np.float32), caching="unchanged")
        else:
            array = np.asarray(proxy)
    except Exception as err:  # nibabel and gzip raise many types for truncated files
        raise CorruptFileError(f"{p}: cannot read NIfTI voxel data ({type(err).__name__}: {err})") from err
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    _require_3d(array.shape, p)
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CorruptFileError(f"{p}: NIfTI affine is singular or not finite:\n{affine}")
    return Volume(array=array, affine=affine, path=str(p), meta={"format": "nifti", "modality": None})


def _require_3d(shape: Sequence[int], path: Path) -> None:
    if len(shape) < 3 or sum(int(s) > 1 for s in shape[:3]) < 3:
        raise InvalidInputError(
            f"{path}: a 2-D image (shape {tuple(int(s) for s in shape)}); expected a 3-D CT volume with at least "
            "2 voxels along each axis"
        )
    if len(shape) > 3:
        raise InvalidInputError(f"{path}: a {len(shape)}-D image (shape {tuple(shape)}); expected one 3-D volume")


def _single_dicom_error(path: Path) -> InvalidInputError:
    """Why a single DICOM file is not a CT volume."""
    ds = read_dicom_header(path, str(path), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    modality = str(ds.get("Modality", "?"))
    if frames > 1:
        return InvalidInputError(
            f"{path}: a multi-frame DICOM object ({modality}, {frames} frames); enhanced multi-frame CT is not "
            "supported, pass a folder holding a classic one-file-per-slice CT series"
        )
    return InvalidInputError(
        f"{path}: a single DICOM slice ({modality}) is a 2-D image; pass the folder holding the whole series"
    )


def read_dicom_series(folder: str | os.PathLike, *, check_ct: bool = True, max_voxels: int | None = None) -> Volume:
    """Stack a folder of single-frame DICOM slices into a volume in HU, through :class:`DicomSeriesReader`.

    Files are recognised by their first bytes (any name; :func:`dicom_files`), so a folder of other files is
    refused after reading 512 bytes of each. The series with the most slices is used when the folder holds
    several (others are logged). Slices are sorted by their position along the slice normal, and each is
    rescaled with its own slope/intercept. Headers are read first (pixel data deferred, not loaded): Rows x
    Columns x slices is checked against ``max_voxels`` (default ``MEDMOE_MAX_VOXELS``) before any slice is
    decoded, and the slices are then decoded one at a time into one float32 array.

    Raises:
        DecodeLimitError: the series claims more voxels than ``max_voxels``.
        InvalidInputError: no DICOM files, a non-CT modality (when ``check_ct``), or a single slice.
        CorruptFileError: unreadable files or missing geometry tags.
    """
    reader = DicomSeriesReader(check_ct=check_ct, max_voxels=max_voxels)
    slices = reader.series(folder)
    array, header = PydicomReader.get_data(reader, slices)  # the stacking, without the series search
    return Volume(
        array=array,
        affine=np.asarray(header[MetaKeys.AFFINE], dtype=np.float64),
        path=str(folder),
        meta={"format": "dicom", "modality": _modality(slices[0]), "series_uid": _series_uid(slices[0]),
              "n_slices": len(slices)},
    )


class DicomSeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` for one CT series folder, read through medmoe's checks.

    PydicomReader's ``get_data`` gives the (column, row, slice) axis order and the voxel -> RAS affine: the
    first slice's ImageOrientationPatient, ImagePositionPatient and PixelSpacing, the slice step from the first
    to the last ImagePositionPatient, converted from LPS. The parts below are medmoe's own, because
    PydicomReader's do not fit untrusted folders:

    - finding the files (:meth:`series`): PydicomReader passes every file of the folder to ``pydicom.dcmread``
      (a file without the ``DICM`` preamble is skipped with a warning, or parsed whatever its bytes with
      ``force=True``) and reads each whole, pixel data included, with no size budget; here a file counts
      when its first bytes parse as DICOM (:func:`dicom_files`), and its header is read by
      :func:`~medmoe.data.readers.dicom.read_dicom_header` with the pixel data deferred, so a 300 MB file of
      zeros is refused in milliseconds and Rows x Columns x slices is checked against ``max_voxels`` before
      any pixel is decoded;
    - one series: PydicomReader stacks every file it read; here the series with the most slices, others logged;
    - the order (:meth:`series`): PydicomReader sorts by InstanceNumber and skips slices without one; here the
      slices are sorted by their position along the slice normal (InstanceNumber is optional and need not
      follow position), and duplicate positions or missing slices are refused;
    - the stacking (:meth:`_combine_dicom_series`): PydicomReader keeps every file's pixel bytes, decodes every
      slice into a list and stacks it with ``np.stack`` into float64; here the slices are decoded one at a time
      into one float32 array and each file's pixel bytes are dropped once decoded. Measured on a 512 x 512 x
      120 series (tracemalloc): peak 123 MiB here for the 120 MiB volume, 602 MiB for PydicomReader's;
    - the geometry values (:meth:`_get_meta_dict`): read from the header as floats, where PydicomReader's
      DICOM JSON conversion leaves out over-long decimal strings and its affine falls back to the identity.

    :meth:`read` only names the folder and :meth:`get_data` reads it, so that inside ``LoadImage`` a refusal
    is raised rather than passed over to MONAI's own readers.

    Args:
        check_ct: refuse a series whose Modality is not CT.
        max_voxels: limit on Rows x Columns x slices (default ``MEDMOE_MAX_VOXELS``).

    Example:
        >>> LoadImage(reader=DicomSeriesReader(), image_only=True)("ct_folder")  # (X, Y, Z) HU, RAS affine
    """

    def __init__(self, *, check_ct: bool = True, max_voxels: int | None = None):
        super().__init__(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True)
        self.check_ct = check_ct
        self.max_voxels = max_voxels

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, str | os.PathLike) else list(filename)
        return len(names) == 1 and Path(names[0]).is_dir()

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Path:
        """The series folder. Its files are read by :meth:`get_data`, so that a refusal reaches the caller:
        MONAI's ``LoadImage`` catches what a reader's ``read`` raises and tries its own readers on the same
        folder, which read a folder refused here (a missing slice, over ``max_voxels``) without these checks."""
        return _single_path(data, "DicomSeriesReader")

    def get_data(self, img: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """The (X, Y, Z) float32 HU array of the series in folder ``img`` and MONAI's metadata (RAS affine)."""
        return super().get_data(self.series(img))

    def series(self, folder: str | os.PathLike) -> list[pydicom.Dataset]:
        """The headers of the folder's largest series, sorted along the slice normal (pixel data deferred),
        after the checks listed under :func:`read_dicom_series`."""
        folder = Path(folder)
        slices = _largest_series(folder)
        modality = _modality(slices[0][1])
        if self.check_ct and modality != "CT":
            raise InvalidInputError(f"{folder}: DICOM Modality is {modality or 'missing'!r}; expected a CT series ('CT')")
        if len(slices) < 2:
            raise InvalidInputError(
                f"{folder}: the series has a single slice, a 2-D image; expected a 3-D CT series (>= 2 slices)"
            )
        slices = _sorted_along_normal(folder, slices)
        rows, cols = _slice_size(folder, slices)
        check_budget(str(folder), f"{len(slices)} slices of {rows} x {cols}", rows * cols * len(slices),
                     MAX_VOXELS_ENV, self.max_voxels)
        self.has_series = True
        self.filenames = [[str(f) for f, _ in slices]]
        return [ds for _, ds in slices]

    def _combine_dicom_series(self, data: Sequence[pydicom.Dataset], filenames: Sequence[os.PathLike]):
        """Decode the sorted slices into one float32 array in HU; returned as PydicomReader's (row, column,
        slice) view of a C-ordered (column, row, slice) array, so that its ``swap_ij`` copies nothing."""
        rows, cols = int(data[0].Rows), int(data[0].Columns)
        array = np.empty((cols, rows, len(data)), dtype=np.float32)
        for k, (ds, name) in enumerate(zip(data, filenames, strict=True)):
            _decode_slice(ds, Path(name), array[:, :, k])
        metadata = self._get_meta_dict(data[0])
        metadata["lastImagePositionPatient"] = np.asarray(data[-1].ImagePositionPatient, dtype=np.float64)
        metadata[MetaKeys.SPATIAL_SHAPE] = (rows, cols, len(data))
        return array.swapaxes(0, 1), metadata

    def _get_meta_dict(self, img: pydicom.Dataset) -> dict:
        """The geometry tags PydicomReader's affine reads (orientation, position, pixel spacing), as floats in
        its DICOM JSON layout. PydicomReader's own converts the whole header to DICOM JSON, which leaves out
        a value pydicom deems invalid (a DS longer than 16 characters, such as ``0.9396926207859083`` in an
        oblique series), and the affine then falls back to the identity."""
        return {tag: {"Value": [float(v) for v in img[keyword].value]}
                for tag, keyword in _GEOMETRY_JSON_TAGS.items() if keyword in img}


_GEOMETRY_JSON_TAGS = {"00200037": "ImageOrientationPatient", "00200032": "ImagePositionPatient",
                       "00280030": "PixelSpacing"}
_Slice = tuple[Path, pydicom.Dataset]  # a file and its header


def _single_path(data: Sequence[os.PathLike] | os.PathLike, reader: str) -> Path:
    names = [data] if isinstance(data, str | os.PathLike) else list(data)
    if len(names) != 1:
        raise InvalidInputError(f"{reader} reads one volume at a time, got {len(names)} paths")
    return Path(names[0])


def _modality(ds: pydicom.Dataset) -> str:
    return str(ds.get("Modality", "")).upper()


def _series_uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", ""))


def _largest_series(folder: Path) -> list[_Slice]:
    """(file, header) of each image of the series with the most slices, headers read with the pixel data
    deferred; a file of that series without pixel data is refused, other image-less files are skipped."""
    series: dict[str, list[_Slice]] = {}
    imageless: list[tuple[Path, str]] = []
    for f in dicom_files(folder):
        ds = read_dicom_header(f, str(f), defer_size=_HEADER_DEFER_BYTES)
        if "PixelData" in ds:
            series.setdefault(_series_uid(ds), []).append((f, ds))
        else:
            imageless.append((f, _series_uid(ds)))
    if not series:
        raise InvalidInputError(f"{folder}: no DICOM file in the folder holds an image")
    uid, slices = max(series.items(), key=lambda kv: len(kv[1]))
    for f, other_uid in imageless:
        if other_uid == uid:
            raise CorruptFileError(f"{f}: a slice of the series without pixel data (truncated file?)")
        logger.debug("%s: no pixel data (another series or a non-image object), skipped", f)
    if len(series) > 1:
        logger.warning("%s holds %d series; reading the largest (%s, %d slices)", folder, len(series), uid, len(slices))
    return slices


def _sorted_along_normal(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    """The slices sorted by ImagePositionPatient along the normal of the first one's ImageOrientationPatient.

    Raises:
        CorruptFileError: geometry tags missing, malformed or not finite; two slices at one position; a gap
            over 1.5 times the smallest step (missing slices).
    """
    try:
        orientation = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64).reshape(6)
        positions = np.asarray([np.asarray(ds.ImagePositionPatient, dtype=np.float64).reshape(3) for _, ds in slices])
        spacing = np.asarray(slices[0][1].PixelSpacing, dtype=np.float64).reshape(2)
        if not (np.isfinite(orientation).all() and np.isfinite(positions).all() and np.isfinite(spacing).all()):
            raise ValueError("values are not finite")
    except (AttributeError, TypeError, ValueError) as err:
        raise CorruptFileError(
            f"{folder}: DICOM geometry tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) "
            f"missing or malformed ({err})"
        ) from err
    along = positions @ np.cross(orientation[:3], orientation[3:])
    order = np.argsort(along)
    gaps = np.diff(along[order])
    if np.any(gaps < 1e-3):
        raise CorruptFileError(f"{folder}: two slices share a position; the folder mixes acquisitions")
    if gaps.max() > 1.5 * gaps.min():
        raise CorruptFileError(
            f"{folder}: slices are missing: a gap of {gaps.max():.2f} mm after slice {int(np.argmax(gaps))} "
            f"where the series steps {np.median(gaps):.2f} mm"
        )
    if gaps.max() - gaps.min() > 0.1 * np.median(gaps):
        logger.warning("%s: uneven slice spacing (%.2f..%.2f mm); using the mean", folder, gaps.min(), gaps.max())
    return [slices[i] for i in order]


def _slice_size(folder: Path, slices: list[_Slice]) -> tuple[int, int]:
    """(Rows, Columns) shared by every slice."""
    sizes = sorted({(_int_tag(ds, "Rows", f), _int_tag(ds, "Columns", f)) for f, ds in slices})
    if len(sizes) != 1:
        raise CorruptFileError(f"{folder}: slices differ in size {sizes}")
    return sizes[0]


def _decode_slice(ds: pydicom.Dataset, path: Path, plane: np.ndarray) -> None:
    """Decode one greyscale slice into ``plane`` (column, row) in HU (its own RescaleSlope / Intercept), then
    drop the file's pixel bytes from ``ds``."""
    rows, cols = plane.shape[1], plane.shape[0]
    frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    if frames != 1 or samples != 1:
        raise InvalidInputError(
            f"{path}: expected a single-frame greyscale slice, got {frames} frame(s) of {samples} sample(s)"
        )
    try:
        pixels = pixel_array(ds)
    except Exception as err:
        raise CorruptFileError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err})") from err
    if pixels.shape != (rows, cols):
        if pixels.ndim != 2:
            raise InvalidInputError(f"{path}: expected a single-frame greyscale slice, got pixel shape {pixels.shape}")
        raise CorruptFileError(f"{path}: pixel data of shape {pixels.shape}, its header says {(rows, cols)}")
    plane[...] = pixels.T  # (rows, cols) -> (col, row) to match x, y
    plane *= np.float32(float(ds.get("RescaleSlope", 1) or 1))
    plane += np.float32(float(ds.get("RescaleIntercept", 0) or 0))
    del ds.PixelData  # the decoded slice is in the volume; drop the file's bytes


def _int_tag(ds: pydicom.Dataset, keyword: str, path: Path) -> int:
    try:
        return int(ds[keyword].value)
    except Exception as err:  # missing or malformed
        raise CorruptFileError(f"{path}: DICOM {keyword} missing or malformed ({err})") from err


def check_hounsfield(volume: Volume) -> None:
    """Raise when intensities cannot be Hounsfield units (no air/fat at all, or absurd values)."""
    arr = volume.array
    if not np.isfinite(arr).all():
        raise CorruptFileError(f"{volume.path}: the volume holds NaN or infinite values")
    sample = arr.reshape(-1)[:: max(1, arr.size // 2_000_000)]
    low, high = float(sample.min()), float(sample.max())
    p1 = float(np.percentile(sample, 1))
    if low < _CT_PLAUSIBLE_RANGE[0] or high > _CT_PLAUSIBLE_RANGE[1] or p1 > _CT_LOW_PERCENTILE_MAX_HU:
        raise InvalidInputError(
            f"{volume.path}: intensities do not look like CT Hounsfield units (min {low:.0f}, 1st percentile "
            f"{p1:.0f}, max {high:.0f}; a CT has air or fat below {_CT_LOW_PERCENTILE_MAX_HU:.0f} HU). "
            "Is this MR or another modality?"
        )


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: Any = None) -> Path:
    """Write ``array`` (X, Y, Z[, C]) with ``affine`` as NIfTI (sform and qform set, so readers agree)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array if dtype is None else array.astype(dtype))
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    nib.save(image, str(p))
    return p


def same_grid(a_affine: np.ndarray, a_shape: Sequence[int], b_affine: np.ndarray, b_shape: Sequence[int],
              atol: float = 1e-3) -> bool:
    """True when two volumes share voxel grid and geometry."""
    return tuple(a_shape) == tuple(b_shape) and np.allclose(a_affine, b_affine, atol=atol)


class VolumeReader(ImageReader):
    """MONAI ``ImageReader`` for NIfTI files and DICOM series folders (one volume per call).

    Args:
        kind: ``"ct"`` (float32 HU, CT checks as in :func:`read_ct`) or ``"label"`` (integer ids).
        check_ct: for ``kind="ct"``, refuse non-CT inputs.

    Example:
        >>> LoadImaged(keys="image", reader=VolumeReader("ct"))
    """

    def __init__(self, kind: str = "ct", check_ct: bool = True):
        super().__init__()
        if kind not in ("ct", "label"):
            raise InvalidInputError(f"VolumeReader kind {kind!r}: expected 'ct' or 'label'")
        self.kind = kind
        self.check_ct = check_ct

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, str | os.PathLike) else list(filename)
        return len(names) == 1 and (is_nifti(names[0]) or Path(names[0]).is_dir())

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Path:
        """The file or folder. It is read by :meth:`get_data`, so that a refusal reaches the caller: MONAI's
        ``LoadImage`` catches what a reader's ``read`` raises and tries its own readers on the same path,
        which read what was refused here (a series with a missing slice, a volume over the voxel limit)
        without these checks."""
        return _single_path(data, "VolumeReader")

    def get_data(self, img: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """The volume at ``img`` (:func:`read_label` or :func:`read_ct`) and MONAI's metadata."""
        volume = read_label(img) if self.kind == "label" else read_ct(img, check_ct=self.check_ct)
        header: dict[str, Any] = {
            MetaKeys.AFFINE: volume.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: volume.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            "pixdim": np.asarray([1.0, *volume.spacing, 1, 1, 1, 1]),
            "format": volume.meta.get("format"),
            "modality": volume.meta.get("modality") or "",
        }
        return volume.array, header
