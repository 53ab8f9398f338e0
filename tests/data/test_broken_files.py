"""Every broken input gives medmoe's own error, naming the file and the reason."""

from __future__ import annotations

import gzip
import io
import os

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from testkit.data import dicom_file

from medmoe.data.readers import decode_image, read_image
from medmoe.errors import CorruptFileError, MedMoEError, MissingFileError

pytestmark = pytest.mark.timeout(120)


def _expect_corrupt(path, reason: str) -> CorruptFileError:
    with pytest.raises(CorruptFileError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message, message
    assert reason.lower() in message.lower(), message
    return info.value


def test_missing_file_is_a_file_not_found_error(tmp_path):
    path = tmp_path / "nope.dcm"
    with pytest.raises(MissingFileError) as info:
        read_image(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, MedMoEError)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    _expect_corrupt(path, "empty")


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("Patient name: nobody\nThis is not a DICOM file.\n" * 20)
    _expect_corrupt(path, "DICOM")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_dicom(tmp_path, keep):
    data = open(dicom_file("CT_small.dcm"), "rb").read()
    path = tmp_path / f"truncated_{keep}.dcm"
    path.write_bytes(data[: int(len(data) * keep)])
    _expect_corrupt(path, "DICOM")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for suffix in (".dcm", ".png", ".jpg", ".nii", ".nii.gz", ""):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        _expect_corrupt(path, "")


def test_nan_nifti(tmp_path):
    data = np.ones((8, 8, 4), np.float32)
    data[3, 3, 2] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    _expect_corrupt(path, "NaN")
    with pytest.raises(CorruptFileError, match="NaN"):
        read_image(path, projection="mip")
    # a slice without the NaN is still readable
    assert read_image(path, axial_slice=0)[0].shape == (8, 8)


def test_truncated_png_jpeg_and_gzip(tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        _expect_corrupt(path, "")
    volume = tmp_path / "vol.nii.gz"
    noise = np.random.default_rng(2).random((16, 16, 16), dtype=np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), volume)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(volume.read_bytes()[: volume.stat().st_size // 2])
    _expect_corrupt(cut, "NIfTI")


def test_unsupported_extension_and_directory(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("FINDINGS: none")
    _expect_corrupt(path, "unsupported")
    _expect_corrupt(tmp_path, "directory")


def test_dicom_without_pixel_data(tmp_path):
    import pydicom

    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "header_only.dcm"
    ds.save_as(path)
    _expect_corrupt(path, "no pixel data")


SUFFIXES = [".dcm", ".png", ".jpg", ".nii", ".nii.gz", ".tif", ""]
PREFIXES = [
    b"",
    b"\0" * 128 + b"DICM",  # DICOM preamble
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"\x1f\x8b\x08\x00",  # gzip
    b"II*\x00",  # TIFF
    np.array([348], "<i4").tobytes(),  # NIfTI-1 header size, magic absent
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(min_size=0, max_size=2048),
    prefix=st.sampled_from(PREFIXES),
    suffix=st.sampled_from(SUFFIXES),
)
def test_random_bytes_property(tmp_path, body, prefix, suffix):
    """Whatever the bytes: a medmoe CorruptFileError naming the file, never another exception type."""
    data = prefix + body
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image, _ = read_image(path)
    except CorruptFileError as err:
        assert str(path) in str(err)
    else:  # astronomically unlikely, but then it must be a valid image
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert image.min() >= 0 and image.max() <= 1
    try:
        decode_image(data, os.path.basename(path))
    except CorruptFileError as err:
        assert os.path.basename(path) in str(err)


def test_gzip_of_garbage_named_nifti(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 40))
    _expect_corrupt(path, "NIfTI")
