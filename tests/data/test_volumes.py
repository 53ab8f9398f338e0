"""Reading CT volumes: NIfTI, DICOM series (synthetic and the real TotalSegmentator example), clear errors."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd
from PIL import Image
from pydicom.data import get_testdata_file
from testkit.seg import TOTALSEG_SKIP, totalseg_datalist, write_dicom_series

from medmoe.data.volumes import DicomSeriesReader, VolumeReader, read_ct, read_label, write_nifti
from medmoe.errors import CorruptFileError, InvalidInputError
from medmoe.limits import DecodeLimitError

pytestmark = pytest.mark.timeout(120)


def _ct_like(shape=(24, 20, 6), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000.0)
    vol[3:-3, 3:-3, :] = 40.0 + rng.normal(0, 10, size=(shape[0] - 6, shape[1] - 6, shape[2]))
    vol[10:14, 8:12, :] = 700.0
    return np.rint(vol)


def test_dicom_series_sorted_by_position_rescaled_and_in_ras(tmp_path):
    vol = 2 * np.rint(_ct_like() / 2)  # representable with RescaleSlope 2
    vol[0, 0, :] = np.arange(vol.shape[2]) * 10 - 1000  # a slice-order marker
    folder = write_dicom_series(tmp_path / "series", vol, spacing=(0.8, 0.7, 2.5), origin=(-20.0, -30.0, 100.0),
                                slope=2.0, intercept=-2048.0)
    out = read_ct(folder)
    np.testing.assert_allclose(out.array, vol)  # file names are shuffled: order comes from ImagePositionPatient
    assert out.meta["modality"] == "CT" and out.meta["n_slices"] == vol.shape[2]
    # LPS (-20, -30, 100) with +x left, +y posterior -> RAS (20, 30, 100) with the first two axes negated.
    expected = np.array([[-0.8, 0, 0, 20.0], [0, -0.7, 0, 30.0], [0, 0, 2.5, 100.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(out.affine, expected, atol=1e-6)
    assert out.spacing == pytest.approx((0.8, 0.7, 2.5))


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_volume_reader_works_inside_monai_loadimaged(tmp_path):
    vol = _ct_like()
    folder = write_dicom_series(tmp_path / "series", vol)
    nifti = write_nifti(vol.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0]), tmp_path / "ct.nii.gz")
    load = LoadImaged(keys="image", reader=VolumeReader("ct"), image_only=True)
    for path in (folder, nifti):
        d = EnsureChannelFirstd(keys="image", channel_dim="no_channel")(load({"image": str(path)}))
        d = Orientationd(keys="image", axcodes="RAS", labels=None)(d)
        assert d["image"].shape == (1, *vol.shape)
        assert np.all(np.diag(d["image"].affine.numpy())[:3] > 0)  # RAS after Orientation
    # The DICOM volume is stored L->R, P->A: after RAS reorientation it is the source flipped on x and y.
    d = Orientationd(keys="image", axcodes="RAS", labels=None)(
        EnsureChannelFirstd(keys="image", channel_dim="no_channel")(load({"image": str(folder)})))
    np.testing.assert_allclose(d["image"][0].numpy(), vol[::-1, ::-1, :])


def test_real_totalsegmentator_dicom_series_matches_its_label_map_geometry(tmp_path_factory):
    datalist = totalseg_datalist(tmp_path_factory)
    if datalist is None:
        pytest.skip(TOTALSEG_SKIP)
    root = datalist.parent
    ct = read_ct(root / "example_ct_dicom")
    seg = read_label(root / "example_seg_dicom.nii.gz")
    assert ct.shape == (512, 512, 20) and seg.shape == (512, 512, 20)
    assert ct.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert -1100 <= ct.array.min() <= -900 and ct.array.max() > 500  # HU after RescaleIntercept -1024
    # Same world point for DICOM voxel (i, j, k) and label voxel (i, 511 - j, k): the NIfTI flips the rows.
    for ijk in [(0, 0, 0), (100, 200, 5), (511, 511, 19)]:
        world_ct = ct.affine @ [*ijk, 1]
        world_seg = seg.affine @ [ijk[0], 511 - ijk[1], ijk[2], 1]
        np.testing.assert_allclose(world_ct, world_seg, atol=1e-3)
    # And the anatomy agrees: labelled voxels are body tissue, not the air around the patient.
    labelled = seg.array[:, ::-1, :] > 0
    assert np.median(ct.array[labelled]) > -200
    assert np.median(ct.array[~labelled]) < np.median(ct.array[labelled])


def test_png_is_refused_as_not_a_volume(tmp_path):
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with pytest.raises(InvalidInputError, match="not a CT volume format"):
        read_ct(png)


def test_two_d_nifti_is_refused(tmp_path):
    path = write_nifti(np.full((32, 32), -500, np.int16), np.eye(4), tmp_path / "slice.nii.gz")
    with pytest.raises(InvalidInputError, match="2-D image"):
        read_ct(path)
    path = write_nifti(np.full((32, 32, 1), -500, np.int16), np.eye(4), tmp_path / "slab.nii.gz")
    with pytest.raises(InvalidInputError, match="2-D image"):
        read_ct(path)


def test_single_dicom_slice_and_mr_series_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="single DICOM slice"):
        read_ct(get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "mr"
    folder.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.save_as(folder / f"{k}.dcm")
    with pytest.raises(InvalidInputError, match="Modality is 'MR'"):
        read_ct(folder)
    assert read_ct(folder, check_ct=False).shape[2] == 3


def test_non_hounsfield_nifti_is_refused(tmp_path):
    mr_like = np.random.default_rng(0).uniform(0, 900, size=(16, 16, 8)).astype(np.float32)
    path = write_nifti(mr_like, np.eye(4), tmp_path / "mr.nii.gz")
    with pytest.raises(InvalidInputError, match="Hounsfield"):
        read_ct(path)


def test_unreadable_and_missing_files(tmp_path):
    good = write_nifti(_ct_like().astype(np.int16), np.eye(4), tmp_path / "ct.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="broken.nii.gz"):
        read_ct(broken)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_ct(tmp_path / "absent.nii.gz")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no DICOM files"):
        read_ct(empty)
    series = write_dicom_series(tmp_path / "series", _ct_like())
    victim = sorted(series.iterdir())[2]
    intact = victim.read_bytes()
    victim.write_bytes(intact[:-100])  # pixel data cut short
    with pytest.raises(CorruptFileError, match=victim.name):
        read_ct(series)
    victim.write_bytes(intact[:400])  # header cut: the slice is lost, leaving a hole in the stack
    with pytest.raises(CorruptFileError, match="slices are missing"):
        read_ct(series)
    victim.unlink()
    with pytest.raises(CorruptFileError, match="slices are missing"):
        read_ct(series)


def test_label_maps_read_as_integers(tmp_path):
    labels = np.zeros((8, 8, 8), np.float32)
    labels[2:4, 2:4, 2:4] = 2.0
    out = read_label(write_nifti(labels, np.eye(4), tmp_path / "lab.nii.gz"))
    assert out.array.dtype.kind == "i" and set(np.unique(out.array)) == {0, 2}
    bad = labels.copy()
    bad[0, 0, 0] = -1
    with pytest.raises(CorruptFileError, match="negative"):
        read_label(write_nifti(bad, np.eye(4), tmp_path / "neg.nii.gz"))


def test_written_nifti_keeps_affine_in_both_headers(tmp_path):
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    path = write_nifti(np.zeros((4, 5, 6), np.uint8), affine, tmp_path / "x.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.get_sform(), affine)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_oblique_series_with_long_decimal_strings_keeps_its_geometry(tmp_path):
    # Tilted 20 degrees about x, slices written in descending order along the normal, and orientation values
    # of 18 characters (over DICOM's 16 for DS): the affine still comes from the tags, not the identity.
    vol = _ct_like((20, 18, 7))
    folder = write_dicom_series(tmp_path / "oblique", vol, spacing=(0.8, 0.7, 2.5))
    angle = np.radians(20.0)
    row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-20.0, -30.0, 100.0])
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        k = round((float(ds.ImagePositionPatient[2]) - 100.0) / 2.5)
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = [float(v) for v in origin - normal * 2.5 * k]
        ds.save_as(path)
    assert len(str(pydicom.dcmread(path).ImageOrientationPatient[4])) > 16
    out = read_ct(folder)
    np.testing.assert_allclose(out.array, vol[:, :, ::-1])  # stacked by position: the last written slice first
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * 0.8, col_dir * 0.7, normal * 2.5
    lps[:3, 3] = origin - normal * 2.5 * (vol.shape[2] - 1)
    np.testing.assert_allclose(out.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-9)
    assert out.spacing == pytest.approx((0.8, 0.7, 2.5))


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_dicom_series_reader_inside_monai_loadimage_matches_read_ct(tmp_path):
    vol = _ct_like()
    folder = write_dicom_series(tmp_path / "series", vol, spacing=(0.8, 0.7, 2.5))
    image = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(folder))
    expected = read_ct(folder)
    np.testing.assert_array_equal(image.numpy(), expected.array)
    np.testing.assert_allclose(image.affine.numpy(), expected.affine)
    with pytest.raises(DecodeLimitError, match="6 slices of 20 x 24"):
        LoadImage(reader=DicomSeriesReader(max_voxels=1000), image_only=True)(str(folder))


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_a_series_refused_inside_loadimaged_raises_instead_of_falling_back_to_monai_readers(tmp_path):
    # LoadImage tries its own readers when a reader's read() raises; MONAI's PydicomReader would stack this
    # series with its hole. The refusal must reach the caller.
    folder = write_dicom_series(tmp_path / "series", _ct_like())
    sorted(folder.iterdir())[2].unlink()
    with pytest.raises(CorruptFileError, match="slices are missing"):
        LoadImaged(keys="image", reader=VolumeReader("ct"), image_only=True)({"image": str(folder)})
    with pytest.raises(CorruptFileError, match="slices are missing"):
        LoadImage(reader=DicomSeriesReader(), image_only=True)(str(folder))
