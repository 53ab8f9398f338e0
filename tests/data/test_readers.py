"""Readers on the real sample files of DATA.md, on generated NIfTI/PNG/JPEG, and format detection."""

from __future__ import annotations

import shutil
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from testkit.data import deid_ultrasound, dicom_file, package_dir

from medmoe.data.readers import ImageMeta, decode_image, detect_format, read_image
from medmoe.errors import InvalidInputError

pytestmark = pytest.mark.timeout(60)


def _dataset(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _check_unit(image, shape):
    assert image.dtype == np.float32
    assert image.shape == shape
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.max() - image.min() > 0.2, "image should have contrast after windowing"


# (file, expected shape, medmoe modality, DICOM code, photometric)
REAL_DICOM = [
    ("CT_small.dcm", (128, 128), "ct", "CT", "MONOCHROME2"),
    ("MR_small.dcm", (64, 64), "mri", "MR", "MONOCHROME2"),
    ("RG1_UNCI.dcm", (1955, 1841), "xray", "CR", "MONOCHROME1"),
    ("US1_UNCI.dcm", (480, 640, 3), "ultrasound", "US", "RGB"),
    ("examples_rgb_color.dcm", (240, 320, 3), "ultrasound", "US", "RGB"),
    ("examples_palette.dcm", (350, 800, 3), "ultrasound", "US", "PALETTE COLOR"),
    ("examples_ybr_color.dcm", (240, 320, 3), "ultrasound", "US", "YBR_FULL_422"),
    ("JPEG2000_UNC.dcm", (1024, 256), None, "NM", "MONOCHROME2"),
    ("emri_small.dcm", (64, 64), "mri", "MR", "MONOCHROME2"),
]


@pytest.mark.parametrize(("name", "shape", "modality", "code", "photometric"), REAL_DICOM)
def test_real_dicom_files(name, shape, modality, code, photometric):
    image, meta = read_image(dicom_file(name))
    _check_unit(image, shape)
    assert isinstance(meta, ImageMeta)
    assert meta.format == "dicom"
    assert meta.modality == modality
    assert meta.source_modality == code
    assert meta.photometric == photometric
    assert code in (meta.description or "")


@pytest.mark.parametrize(
    ("name", "shape"),
    [("GREYSCALE_IMAGE.dcm", (768, 1024)), ("RGB_IMAGE.dcm", (768, 1024, 3)), ("ultrasound-multiframe.dcm", (600, 800, 3))],
)
def test_deid_data_ultrasounds(name, shape):
    image, meta = read_image(deid_ultrasound(name))
    _check_unit(image, shape)
    assert meta.modality == "ultrasound"
    # these files carry calibrated ultrasound regions: spacing in mm from cm deltas
    assert meta.spacing is not None and 0.01 < meta.spacing[0] < 1.0


def test_spacing_and_body_part_from_tags():
    _, ct = read_image(dicom_file("CT_small.dcm"))
    assert ct.spacing == pytest.approx((0.661468, 0.661468))
    _, nm = read_image(dicom_file("JPEG2000_UNC.dcm"))
    assert nm.spacing == pytest.approx((2.26, 2.26))
    assert nm.body_part == "whole body"
    _, cr = read_image(dicom_file("RG1_UNCI.dcm"))
    assert cr.body_part == "chest"
    assert cr.spacing is None  # the file stores PixelSpacing 0\0, which means unknown


def test_window_center_width_from_tags_matches_dicom_formula():
    path = dicom_file("MR_small.dcm")
    ds = _dataset(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = ds.pixel_array.astype(np.float64)
    # PS3.3 C.11.2.1.2.1 linear window
    expected = np.clip((raw - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    image, _ = read_image(path)
    np.testing.assert_allclose(image, expected, atol=1e-4)


def test_rescale_slope_intercept_then_window_in_hounsfield_units(tmp_path):
    path = dicom_file("CT_small.dcm")
    ds = _dataset(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image, _ = read_image(path, window=(40, 400))
    np.testing.assert_allclose(image, np.clip((hu - (40 - 200)) / 400, 0, 1), atol=1e-5)
    # doubling the slope on a copy must change the HU values the window sees
    ds.RescaleSlope = 2
    copy = tmp_path / "slope2.dcm"
    ds.save_as(copy)
    image2, _ = read_image(copy, window=(40, 400))
    hu2 = ds.pixel_array.astype(np.float64) * 2 + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image2, np.clip((hu2 + 160) / 400, 0, 1), atol=1e-5)
    assert not np.allclose(image, image2)


def test_voi_lut_sequence_is_applied():
    path = dicom_file("vlut_04.dcm")
    ds = _dataset(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    first = int(ds.VOILUTSequence[0].LUTDescriptor[1])
    raw = ds.pixel_array.astype(np.int64)
    expected = lut[np.clip(raw - first, 0, len(lut) - 1)] / lut.max()
    image, _ = read_image(path)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    source = dicom_file("MR_small.dcm")
    ds = _dataset(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    normal, _ = read_image(source)
    flipped, meta = read_image(inverted)
    assert meta.photometric == "MONOCHROME1"
    np.testing.assert_allclose(flipped, 1.0 - normal, atol=1e-6)


def test_real_monochrome1_chest_radiograph_shows_bone_bright():
    image, meta = read_image(dicom_file("RG1_UNCI.dcm"))
    assert meta.photometric == "MONOCHROME1"
    raw = _dataset(dicom_file("RG1_UNCI.dcm")).pixel_array.astype(np.float64)
    # MONOCHROME1: low stored values are displayed white, so output and stored values anti-correlate
    corr = np.corrcoef(image[::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1]
    assert corr < -0.9


def test_ybr_is_converted_to_rgb():
    rgb, _ = read_image(dicom_file("SC_rgb.dcm"))
    ybr, meta = read_image(dicom_file("SC_ybr_full_uncompressed.dcm"))
    assert meta.photometric == "YBR_FULL"
    # the same picture stored in two colour spaces; unconverted YBR would differ by far more
    assert np.abs(rgb - ybr).max() < 8 / 255


def test_palette_color_becomes_rgb():
    from pydicom.pixels import apply_color_lut

    path = dicom_file("OBXXXX1A.dcm")
    image, meta = read_image(path)
    assert image.shape == (600, 800, 3)
    assert meta.original_shape == (600, 800)
    ds = _dataset(path)
    expected = apply_color_lut(ds.pixel_array, ds) / 65535.0  # 16-bit LUT entries
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert np.abs(image[..., 0] - image[..., 2]).max() > 0.1, "palette image should contain colour"


def test_multiframe_default_middle_and_chosen_frame():
    path = dicom_file("emri_small.dcm")
    frames = _dataset(path).pixel_array.astype(np.float64)
    assert frames.shape[0] == 10
    middle, meta = read_image(path)
    assert meta.frame == 5 and meta.original_shape == (10, 64, 64)
    first, meta0 = read_image(path, frame=0)
    assert meta0.frame == 0
    assert not np.allclose(middle, first)
    # each output is its own frame, rescaled: it correlates with that frame far better than with the other
    assert np.corrcoef(first.ravel(), frames[0].ravel())[0, 1] > 0.95
    assert np.corrcoef(middle.ravel(), frames[5].ravel())[0, 1] > 0.95
    with pytest.raises(InvalidInputError, match="frame 10 out of range"):
        read_image(path, frame=10)


def test_multiframe_colour_cine_frame_choice():
    path = dicom_file("examples_ybr_color.dcm")
    default, meta = read_image(path)
    assert meta.frame == 15 and meta.original_shape == (30, 240, 320, 3)
    last, _ = read_image(path, frame=29)
    assert default.shape == last.shape == (240, 320, 3)
    assert not np.allclose(default, last)


def test_dicom_without_extension_and_png_named_dcm(tmp_path):
    plain = tmp_path / "IM0001"
    shutil.copy(dicom_file("CT_small.dcm"), plain)
    assert read_image(plain)[1].format == "dicom"
    fake = tmp_path / "really_a_png.dcm"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(fake, format="PNG")
    image, meta = read_image(fake)
    assert meta.format == "png"
    np.testing.assert_allclose(image, 128 / 255)


def test_png_8_and_16_bit_exact_values(tmp_path):
    grey8 = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    image, meta = read_image(tmp_path / "g8.png")
    assert meta.format == "png" and meta.photometric == "L"
    np.testing.assert_allclose(image, grey8 / 255.0, atol=1e-7)

    grey16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    grey16[0, 0], grey16[-1, -1] = 0, 65535
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    image16, meta16 = read_image(tmp_path / "g16.png")
    assert meta16.photometric.startswith("I")
    np.testing.assert_allclose(image16, grey16 / 65535.0, atol=1e-7)


def test_rgb_png_and_grey_jpeg(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    image, _ = read_image(tmp_path / "red.png")
    assert image.shape == (10, 12, 3)
    np.testing.assert_allclose(image[..., 0], 1.0)
    np.testing.assert_allclose(image[..., 1:], 0.0)
    # a grey picture stored as a colour JPEG comes back grey (H, W)
    grey_rgb = np.repeat(np.full((16, 16, 1), 90, np.uint8), 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png")[0].shape == (16, 16)


def test_real_pediatric_chest_jpeg():
    folder = package_dir("pneumonia_model_package") / "datasets" / "pneumonia-data" / "val"
    path = sorted(folder.glob("*.jpeg"))[0]
    image, meta = read_image(path)
    assert meta.format == "jpeg"
    assert image.ndim == 2 and min(image.shape) > 500
    _check_unit(image, image.shape)


def _volume_with_marker(shape=(20, 24, 10)):
    data = np.zeros(shape, np.float32)
    data[..., :] = np.arange(shape[2])[None, None, :]  # slice k has value k (plus the marker)
    return data


def test_nifti_axial_slice_orientation_is_radiological(tmp_path):
    # RAS+ voxel axes (+x is the patient's right, +y anterior)
    data = np.zeros((20, 24, 10), np.float32)
    data[18, 22, 4] = 100.0  # x=18 of 20 -> right; y=22 of 24 -> anterior
    data[1, 1, 4] = 50.0  # left, posterior
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.0, 1.0])), ras)
    image, meta = read_image(ras, axial_slice=4)
    assert image.shape == (24, 20)  # rows = anterior-posterior, columns = right-left
    assert meta.spacing == pytest.approx((0.7, 0.5))
    assert meta.frame == 4 and meta.original_shape == (20, 24, 10)
    assert np.unravel_index(image.argmax(), image.shape) == (1, 1)  # top-left: anterior, patient's right
    # the same anatomy stored LPS-wise (both in-plane axes reversed) reads identically
    lps = tmp_path / "lps.nii"
    nib.save(nib.Nifti1Image(data[::-1, ::-1, :].copy(), np.diag([-0.5, -0.7, 2.0, 1.0])), lps)
    image_lps, _ = read_image(lps, axial_slice=4)
    np.testing.assert_allclose(image_lps, image, atol=1e-6)


def test_nifti_default_slice_projection_and_4d(tmp_path):
    data = _volume_with_marker()
    data[5, 5, 2] = 1000.0
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    middle, meta = read_image(path, window=(5, 10))  # values 0..9 map linearly
    assert meta.frame == 5
    np.testing.assert_allclose(middle, 0.5, atol=1e-6)
    mip, meta_mip = read_image(path, projection="mip", window=(500, 1000))
    assert meta_mip.frame is None
    assert mip.max() == pytest.approx(1.0)
    mean, _ = read_image(path, projection="mean")
    assert mean.shape == (24, 20)
    four_d = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(np.stack([data, data * 0 + 3], axis=-1), np.eye(4)), four_d)
    first_volume, meta4 = read_image(four_d, axial_slice=7, window=(5, 10))
    assert meta4.original_shape == (20, 24, 10, 2)
    np.testing.assert_allclose(first_volume, 0.7, atol=1e-6)
    with pytest.raises(InvalidInputError, match="out of range"):
        read_image(path, axial_slice=10)
    with pytest.raises(InvalidInputError, match="projection"):
        read_image(path, projection="max")
    with pytest.raises(InvalidInputError):
        read_image(path, frame=1)


def test_real_mni_template_nifti():
    path = package_dir("nilearn") / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    image, meta = read_image(path)
    assert meta.format == "nifti" and meta.original_shape == (197, 233, 189)
    assert image.shape == (233, 197)
    _check_unit(image, image.shape)


def test_decode_image_from_bytes_matches_read_image(tmp_path):
    for path in (dicom_file("CT_small.dcm"), dicom_file("US1_UNCI.dcm")):
        with open(path, "rb") as fh:
            data = fh.read()
        np.testing.assert_array_equal(decode_image(data, "x.dcm")[0], read_image(path)[0])
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(_volume_with_marker(), np.eye(4)), vol)
    np.testing.assert_array_equal(decode_image(vol.read_bytes(), "v.nii.gz")[0], read_image(vol)[0])


def test_detect_format_magic_before_extension():
    assert detect_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 10, "a.dcm") == "png"
    assert detect_format(b"\xff\xd8\xff\xe0", "a.png") == "jpeg"
    assert detect_format(b"\0" * 128 + b"DICM", "a.jpg") == "dicom"
    assert detect_format(b"\x1f\x8b\x08", "volume.bin") == "nifti"
    assert detect_format(b"hello", "notes.txt") is None
    assert detect_format(b"hello", "scan.nii.gz") == "nifti"


# --- decoding at the size that is needed (target_size) ---------------------------------------------------


def _xray_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Float image in [0, 1]: gradient, slow ripple, a bright disc with sharp edges and pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 0.15 + 0.55 * x / width + 0.15 * np.sin(y / (height / 8))
    image += 0.12 * (((x - 0.5 * width) ** 2 + (y - 0.45 * height) ** 2) < (0.15 * height) ** 2)
    image += rng.normal(0.0, 0.03, (height, width)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _write_dicom(path, stored: np.ndarray, **tags) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    """Full-size inputs as a loader meets them: 3000x2500 JPEG and PNG, 2000x2000 12-bit DICOMs."""
    root = tmp_path_factory.mktemp("large")
    picture = _xray_like(2500, 3000)
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(root / "chest.jpg", quality=92)
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(root / "chest.png", compress_level=1)
    stored = np.round(_xray_like(2000, 2000, seed=1) * 4095)
    _write_dicom(root / "window.dcm", stored, WindowCenter=2000, WindowWidth=3000,
                 RescaleSlope=1, RescaleIntercept=0)
    _write_dicom(root / "robust.dcm", stored)  # no window: percentile range
    _write_dicom(root / "ct_hu.dcm", stored, RescaleSlope=0.5, RescaleIntercept=-1024)
    _write_dicom(root / "mono1.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    return root


def _final(image: np.ndarray, size: int = 224) -> torch.Tensor:
    from medmoe.data.transforms import resize_pad, to_tensor

    return resize_pad(to_tensor(image), size)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "options", "reduced_shape"),
    [
        ("chest.jpg", {}, (625, 750)),  # JPEG draft mode: 1/4 scale
        ("chest.png", {}, (417, 500)),  # 3000 // 448 = 6, edge blocks kept
        ("window.dcm", {}, (500, 500)),
        ("robust.dcm", {}, (500, 500)),
        ("ct_hu.dcm", {"window": (-400, 1500)}, (500, 500)),
        ("mono1.dcm", {}, (500, 500)),
    ],
)
def test_reduced_decode_matches_full_decode_after_resize(large_images, name, options, reduced_shape):
    path = large_images / name
    full, full_meta = read_image(path, **options)
    small, small_meta = read_image(path, target_size=448, **options)
    assert small.dtype == np.float32 and small.shape == reduced_shape
    assert 448 <= max(small.shape) < 2 * 448
    assert small_meta == full_meta  # the metadata describes the stored image
    assert small.min() >= 0.0 and small.max() <= 1.0
    difference = (_final(small) - _final(full)).abs()
    assert float(difference.mean()) < 1 / 255, f"mean abs difference {float(difference.mean()) * 255:.2f}/255"
    assert float(difference.max()) < 16 / 255


def test_jpeg_draft_mode_decodes_fewer_pixels(large_images, monkeypatch):
    from PIL import JpegImagePlugin

    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    image, meta = read_image(large_images / "chest.jpg", target_size=300)
    assert drafts == [("L", (300, 250))]
    assert image.shape == (313, 375)  # libjpeg's 1/8 scale, not a reduction of the full decode
    assert meta.original_shape == (2500, 3000)


def _peak_bytes_per_pixel(path, pixels: int, **options) -> float:
    import tracemalloc  # NumPy reports its allocations to tracemalloc

    tracemalloc.start()
    try:
        read_image(path, **options)
        return tracemalloc.get_traced_memory()[1] / pixels
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("name", "pixels", "limit", "full_limit"),
    [("chest.jpg", 3000 * 2500, 2.0, 6.0), ("chest.png", 3000 * 2500, 2.0, 6.0),
     ("window.dcm", 2000 * 2000, 12.0, 16.0)],
)
def test_decode_makes_no_full_size_float64_copy(large_images, name, pixels, limit, full_limit):
    # A float64 copy of the full image alone is 8 bytes per stored pixel; the DICOM path holds the file's
    # 16-bit pixels twice (bytes, array) and one float32 copy for the box reduction: 8 bytes per pixel.
    # At full size too, 8-bit pixels stay uint8 until the one float32 copy returned (1 + 4 bytes per pixel,
    # where float64 copies would add 8 + 8); DICOM 2 + 2 + 4 + 4 + checks.
    full = _peak_bytes_per_pixel(large_images / name, pixels)
    reduced = _peak_bytes_per_pixel(large_images / name, pixels, target_size=448)
    assert full < full_limit, f"{full:.1f} bytes per pixel at full size"
    assert reduced < limit, f"{reduced:.1f} bytes per pixel"


def test_large_16_bit_png_and_rgb_jpeg_reduce(tmp_path):
    picture = _xray_like(1000, 1200, seed=2)
    Image.fromarray(np.round(picture * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    full, meta = read_image(tmp_path / "deep.png")
    small, _ = read_image(tmp_path / "deep.png", target_size=300)
    assert meta.photometric.startswith("I") and small.shape == (250, 300) and small.dtype == np.float32
    assert float((_final(small, 128) - _final(full, 128)).abs().mean()) < 1 / 255

    rgb = np.stack([picture, 1 - picture, np.full_like(picture, 0.3)], axis=-1)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(tmp_path / "colour.jpg", quality=92)
    full_rgb, _ = read_image(tmp_path / "colour.jpg")
    small_rgb, _ = read_image(tmp_path / "colour.jpg", target_size=150)
    assert small_rgb.shape == (125, 150, 3)  # 1/8 scale keeps the colour channels
    assert float((_final(small_rgb, 96) - _final(full_rgb, 96)).abs().mean()) < 1 / 255


def test_target_size_not_below_the_image_changes_nothing(tmp_path, large_images):
    Image.fromarray((_xray_like(300, 400) * 255).astype(np.uint8)).save(tmp_path / "small.jpg")
    for path in (tmp_path / "small.jpg", dicom_file("CT_small.dcm")):
        np.testing.assert_array_equal(read_image(path, target_size=400)[0], read_image(path)[0])
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(_volume_with_marker(), np.eye(4)), vol)
    np.testing.assert_array_equal(read_image(vol, target_size=4)[0], read_image(vol)[0])  # NIfTI: full size
    data = (large_images / "window.dcm").read_bytes()
    np.testing.assert_array_equal(decode_image(data, "w.dcm", target_size=448)[0],
                                  read_image(large_images / "window.dcm", target_size=448)[0])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "224"])
def test_target_size_must_be_a_positive_integer(bad):
    with pytest.raises(InvalidInputError, match="target_size"):
        read_image(dicom_file("CT_small.dcm"), target_size=bad)


def test_an_unknown_read_option_is_refused_by_name():
    path = dicom_file("CT_small.dcm")
    with pytest.raises(TypeError, match="fram"):
        read_image(path, fram=0)
    with pytest.raises(TypeError, match="max_pixel"):
        decode_image(b"\0" * 200, "ct.dcm", max_pixel=10)
