"""Small files that claim gigabytes: every reader checks the decoded size from the header against
MEDMOE_MAX_PIXELS / MEDMOE_MAX_VOXELS (or its argument) before decoding, and decodes in the smallest dtype
that holds the data. Files that are not DICOM are refused from their first bytes, before pydicom parses them."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from testkit.data import dicom_file

from medmoe.data.readers import decode_image, read_image
from medmoe.data.readers.dicom import dicom_signature, sniff_dicom
from medmoe.data.readers.nifti import check_nifti_size
from medmoe.data.volumes import read_ct, read_dicom_series
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import DecodeLimitError, limit

pytestmark = pytest.mark.timeout(120)


def _peak(function, *args, **kwargs) -> tuple[object, int]:
    """(result or exception, peak traced bytes): NumPy and Python allocations both reach tracemalloc."""
    tracemalloc.start()
    try:
        try:
            result = function(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - returned for the test to inspect
            result = err
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG signature, an IHDR claiming ``width x height`` and an empty image: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_png_claiming_more_pixels_than_the_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    error, peak = _peak(read_image, path)
    assert isinstance(error, DecodeLimitError), error
    assert "20000 x 20000 x 3 band(s) = 1,200,000,000 values, over the limit of 268,435,456" in str(error)
    assert "MEDMOE_MAX_PIXELS" in str(error) and peak < 4 * 2**20


def test_single_colour_png_decodes_without_float64_copies(tmp_path):
    """A single-colour 3000 x 3000 RGB PNG decodes to float32 grey with no float64 copy, under 80 MiB at peak."""
    path = tmp_path / "flat.png"
    Image.new("RGB", (3000, 3000), (40, 40, 40)).save(path)
    (image, meta), peak = _peak(read_image, path)
    assert image.shape == (3000, 3000) and image.dtype == np.float32 and meta.original_shape == (3000, 3000)
    # uint8 RGB (27 MB) and the float32 grey result (36 MB); float64 RGB alone would be 216 MB
    assert peak < 80 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_pixel_limit_from_environment_and_argument(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    monkeypatch.setenv("MEDMOE_MAX_PIXELS", "5000")
    with pytest.raises(DecodeLimitError, match=r"100 x 100 x 1 band\(s\) = 10,000 values, over the limit of 5,000"):
        read_image(path)
    assert read_image(path, max_pixels=20_000)[0].shape == (100, 100)
    monkeypatch.setenv("MEDMOE_MAX_PIXELS", "lots")
    with pytest.raises(InvalidInputError, match="MEDMOE_MAX_PIXELS='lots': expected a positive number"):
        read_image(path)
    with pytest.raises(InvalidInputError, match="max_pixels argument: expected a positive number"):
        limit("MEDMOE_MAX_PIXELS", -1)


def _deflated_multiframe(path, frames: int, rows: int, cols: int):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "OT", rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((frames, rows, cols), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflated_multiframe_dicom_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """A deflated DICOM of 8 frames of 1024 x 1024 in a few kilobytes, over a lowered pixel limit, is refused
    from its header before it is inflated; within the limit it reads in full."""
    path = _deflated_multiframe(tmp_path / "frames.dcm", 8, 1024, 1024)
    assert path.stat().st_size < 100_000  # 16 MiB of pixels in a few kilobytes
    monkeypatch.setenv("MEDMOE_MAX_PIXELS", str(4 * 2**20))
    error, peak = _peak(read_image, path)
    assert isinstance(error, DecodeLimitError), error
    assert "8 frame(s) x 1024 x 1024 x 1 sample(s) = 8,388,608 values" in str(error)
    assert peak < 12 * 2**20, f"{peak / 2**20:.0f} MiB"  # inflated in 1 MiB chunks, at most 8 MiB of header kept
    error, _ = _peak(decode_image, path.read_bytes(), "frames.dcm")
    assert isinstance(error, DecodeLimitError)
    image, meta = read_image(path, max_pixels=2**24)  # within the limit it reads in full
    assert image.shape == (1024, 1024) and meta.original_shape == (8, 1024, 1024)


def _nifti_header_gz(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    buffer = io.BytesIO()
    header.write_to(buffer)
    return gzip.compress(buffer.getvalue() + b"\x00" * 4)


def test_tiny_nifti_claiming_32767_squared_by_2_is_refused_before_reading(tmp_path):
    data = _nifti_header_gz((32767, 32767, 2))
    path = tmp_path / "claim.nii.gz"
    path.write_bytes(data)
    assert len(data) < 200
    for reader in (lambda: read_image(path), lambda: decode_image(data, "claim.nii.gz"), lambda: read_ct(path)):
        error, peak = _peak(reader)
        assert isinstance(error, DecodeLimitError), error
        assert "32767 x 32767 x 2 voxels = 2,147,352,578 values, over the limit of 1,073,741,824" in str(error)
        assert "MEDMOE_MAX_VOXELS" in str(error) and peak < 4 * 2**20


def test_uncompressed_nifti_shorter_than_its_header_is_corrupt(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(gzip.decompress(_nifti_header_gz((512, 512, 40))))
    with pytest.raises(Exception, match=r"truncated NIfTI file: its header announces"):
        read_ct(path)


def test_real_ct_sizes_pass_the_default_voxel_limit():
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 2000))
    check_nifti_size(header, "ct.nii.gz")  # 524 million voxels: a long whole-body CT
    header.set_data_shape((2048, 2048, 300))
    with pytest.raises(DecodeLimitError, match="MEDMOE_MAX_VOXELS"):
        check_nifti_size(header, "big.nii.gz")
    check_nifti_size(header, "big.nii.gz", max_voxels=2**31)


def test_dicom_series_is_checked_from_headers_before_decoding(tmp_path, monkeypatch):
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3"
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2.0 * k]
        ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [1, 1], 1, -1024
        ds.PixelData = np.full((32, 32), 24 + k, np.int16).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    decoded = []
    monkeypatch.setattr("medmoe.data.volumes.pixel_array", lambda ds: decoded.append(ds) or None)
    with pytest.raises(DecodeLimitError, match=r"3 slices of 32 x 32 = 3,072 values, over the limit of 2,000"):
        read_dicom_series(folder, max_voxels=2000)
    assert decoded == []
    monkeypatch.undo()
    volume = read_dicom_series(folder)
    assert volume.shape == (32, 32, 3) and volume.array.dtype == np.float32
    assert float(volume.array[0, 0, 2]) == 26 - 1024


# ---------------------------------------------------------------------------------------------- files that are not DICOM
def _zeros(path, size=300 * 2**20):
    """A sparse file of ``size`` zero bytes (instant to make, whatever its size)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _timed(function):
    start = time.perf_counter()
    try:
        function()
    except Exception as err:  # noqa: BLE001 - returned for the test to inspect
        return err, time.perf_counter() - start
    return None, time.perf_counter() - start


def test_a_folder_holding_300_mb_of_zeros_is_refused_in_under_a_second(tmp_path):
    """Every reader refuses a 300 MB file of zeros from its first bytes, in under a second (pydicom with
    force=True would parse it element by element, 8 zero bytes each)."""
    folder = tmp_path / "series"
    folder.mkdir()
    _zeros(folder / "00000.dcm")
    for reader in (lambda: read_ct(folder), lambda: read_dicom_series(folder), lambda: read_ct(folder / "00000.dcm"),
                   lambda: read_image(folder / "00000.dcm")):
        error, seconds = _timed(reader)
        assert isinstance(error, CorruptFileError | InvalidInputError), error
        assert "DICM" in str(error) and "00000.dcm" in str(error), error
        assert seconds < 1.0, f"{seconds:.2f} s"
    assert "none of its 1 file(s) (00000.dcm) starts like DICOM" in str(_timed(lambda: read_ct(folder))[0])


def _meta_then(tmp_path, tail: bytes, keep_dataset: int = 0):
    """A real CT slice's preamble and file meta group (plus ``keep_dataset`` bytes of its dataset), then ``tail``."""
    real = open(dicom_file("CT_small.dcm"), "rb").read()
    meta_end = 132
    while struct.unpack_from("<H", real, meta_end)[0] == 0x0002:  # explicit VR little endian, short VRs here
        vr = real[meta_end + 4:meta_end + 6]
        long_vr = vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR")
        meta_end += (12 + struct.unpack_from("<I", real, meta_end + 8)[0] if long_vr
                     else 8 + struct.unpack_from("<H", real, meta_end + 6)[0])
    path = tmp_path / "slice.dcm"
    path.write_bytes(real[:meta_end + keep_dataset] + tail)
    return path


def test_a_dicom_start_followed_by_zeros_is_refused_where_the_zeros_begin(tmp_path):
    zeros = b"\0" * 3 * 2**20
    right_after_meta = _meta_then(tmp_path, zeros)  # pydicom would read the zeros as a "command group"
    assert sniff_dicom(right_after_meta) is None
    assert _timed(lambda: read_image(right_after_meta))[1] < 1.0
    inside = _meta_then(tmp_path, zeros, keep_dataset=300)
    assert sniff_dicom(inside) == "part10"
    error, seconds = _timed(lambda: read_image(inside))
    assert isinstance(error, CorruptFileError) and "DICOM elements ascend" in str(error), error
    assert seconds < 1.0, f"{seconds:.2f} s"


@pytest.mark.parametrize("name, kind", [("CT_small.dcm", "part10"), ("rtstruct.dcm", "implicit-le"),
                                        ("ExplVR_LitEndNoMeta.dcm", "explicit-le"), ("MR_small.dcm", "part10")])
def test_the_sniff_recognises_dicom_with_and_without_a_preamble(name, kind):
    assert sniff_dicom(dicom_file(name)) == kind


@pytest.mark.parametrize("head", [
    b"",
    b"\0" * 1024,
    b"\0" * 128 + b"DICM" + b"\0" * 100,  # a marker, then no file meta group
    b"<!DOCTYPE html><html><body>not an image</body></html>",
    b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\0" * 100,
    b"\x1f\x8b\x08\x00" + b"\0" * 100,
    b"patient,report\n1,clear lungs\n",
    b"\x08\x00\x16\x00UI\xff\x7f1.2.3",  # a plausible first element whose length runs past the file
    b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100",  # big endian without a preamble (retired; see dicom_signature)
])
def test_the_sniff_refuses_other_files(head):
    assert dicom_signature(head, len(head)) is None


def test_series_files_are_found_by_their_bytes_whatever_their_names(tmp_path):
    from testkit.seg import write_dicom_series

    folder = write_dicom_series(tmp_path / "series", np.full((8, 8, 3), -500.0))
    for k, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / f"IM{k:04d}")  # PACS exports often have no suffix
    (folder / "README.txt").write_text("exported by a PACS")
    _zeros(folder / "DICOMDIR.dcm", 4096)  # named like DICOM, but zeros: skipped with a warning
    volume = read_ct(folder, check_ct=False)
    assert volume.shape == (8, 8, 3)


# ---------------------------------------------------------------------------------------------- the byte budget
def test_the_decoded_bytes_budget_counts_bytes_per_sample(tmp_path, monkeypatch):
    eight, sixteen = tmp_path / "eight.png", tmp_path / "sixteen.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(eight)
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(sixteen)
    monkeypatch.setenv("MEDMOE_MAX_DECODED_BYTES", "15000")
    assert read_image(eight)[0].shape == (100, 100)  # 10,000 bytes
    with pytest.raises(DecodeLimitError, match=r"100 x 100 pixels x 2 byte\(s\) \(I;16\) = 20,000 bytes, over the "
                                               r"limit of 15,000 \(raise it with MEDMOE_MAX_DECODED_BYTES"):
        read_image(sixteen)
    assert read_image(sixteen, max_decoded_bytes=20_000)[0].shape == (100, 100)
    with pytest.raises(DecodeLimitError, match="MEDMOE_MAX_DECODED_BYTES"):
        decode_image(sixteen.read_bytes(), "sixteen.png")


def test_a_16_bit_dicom_counts_two_bytes_per_value(tmp_path):
    path = _deflated_multiframe(tmp_path / "frames.dcm", 2, 64, 64)  # 2 x 64 x 64 x 16 bits = 16,384 bytes
    with pytest.raises(DecodeLimitError, match=r"2 frame\(s\) x 64 x 64 x 1 sample\(s\) x 2 byte\(s\) = 16,384 bytes"):
        read_image(path, max_decoded_bytes=10_000)
    assert read_image(path, max_decoded_bytes=16_384)[0].shape == (64, 64)


_PEAK = """
import sys
from medmoe.data.readers import read_image
def peak_kb():  # VmHWM starts afresh at exec (ru_maxrss would carry the parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before = peak_kb()
image, _ = read_image(sys.argv[1], target_size=None if sys.argv[2] == "full" else int(sys.argv[2]))
print((peak_kb() - before) * 1024, image.shape)
"""


def _peak_growth_in_a_fresh_process(path, target: str) -> int:
    """Bytes the peak resident memory (VmHWM) of a new Python process grows by while it reads ``path``."""
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), target], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[0])


def test_a_280_kb_9400_squared_single_colour_png_decodes_within_twice_its_decoded_bytes(tmp_path):
    """9400 x 9400 RGB = 265 MB decoded: reading it in a fresh process grows the peak resident memory by less
    than twice that at full size and less than 1.5 times that at target_size=74 (what the page's classifier
    asks for)."""
    path = tmp_path / "flat.png"
    Image.new("RGB", (9400, 9400), (40, 40, 40)).save(path)
    assert path.stat().st_size < 300_000
    decoded = 9400 * 9400 * 3
    full = _peak_growth_in_a_fresh_process(path, "full")
    assert full < 2 * decoded, f"{full / 2**20:.0f} MiB"
    reduced = _peak_growth_in_a_fresh_process(path, "74")
    assert reduced < 1.5 * decoded, f"{reduced / 2**20:.0f} MiB"


def test_rgb_rows_grey_then_colour_come_back_in_colour(tmp_path):
    rgb = np.zeros((3000, 700, 3), np.uint8)
    rgb[:, :, :] = 90
    rgb[2500:, 100:200, 0] = 250  # colour only near the bottom, after several blocks of grey rows
    path = tmp_path / "late_colour.png"
    Image.fromarray(rgb).save(path)
    image, meta = read_image(path)
    assert image.shape == (3000, 700, 3) and meta.original_shape == (3000, 700, 3)
    assert np.array_equal(np.rint(image * 255).astype(np.uint8), rgb)
