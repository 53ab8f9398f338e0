"""Fuzzing the image and volume readers: truncated, bit-flipped and size-inflated PNG, JPEG,
TIFF, BMP, DICOM (plain and deflated, multi-frame) and NIfTI (plain and gzipped) end as medmoe errors, never
another exception, and no call adds more than MEMORY_BOUND to the process under the lowered limits."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given
from testkit.fuzz import FUZZ, check_outcome, image_seeds, lowered_limits, mutated, peak_growth

from medmoe.data.readers import decode_image, read_image
from medmoe.data.volumes import read_ct, read_dicom_series

pytestmark = pytest.mark.timeout(300)

SEEDS = image_seeds()
VOLUMES = {name: data for name, data in SEEDS.items() if name.startswith("a.nii")}


@pytest.fixture(scope="module", autouse=True)
def _limits(tmp_path_factory):
    with lowered_limits():
        folder = tmp_path_factory.mktemp("warm")
        for name, data in SEEDS.items():  # first calls import decoders: not what the bound is about
            (folder / name).write_bytes(data)
            read_image(folder / name)
        yield


@FUZZ
@given(sample=mutated(SEEDS))
def test_image_readers_fail_only_with_medmoe_errors_and_bounded_memory(tmp_path, sample):
    name, data = sample
    path = tmp_path / name
    path.write_bytes(data)
    check_outcome(*peak_growth(lambda: read_image(path)), f"read_image({name})")
    check_outcome(*peak_growth(lambda: decode_image(data, name, target_size=64)), f"decode_image({name})")


@FUZZ
@given(sample=mutated(VOLUMES))
def test_volume_reader_fails_only_with_medmoe_errors_and_bounded_memory(tmp_path, sample):
    name, data = sample
    path = tmp_path / name
    path.write_bytes(data)
    check_outcome(*peak_growth(lambda: read_ct(path, check_ct=False)), f"read_ct({name})")


@FUZZ
@given(sample=mutated({"a.dcm": SEEDS["a.dcm"]}))
def test_dicom_series_reader_fails_only_with_medmoe_errors_and_bounded_memory(tmp_path, sample):
    folder = tmp_path / "series"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "0.dcm").write_bytes(SEEDS["a.dcm"])
    (folder / "1.dcm").write_bytes(sample[1])
    check_outcome(*peak_growth(lambda: read_dicom_series(folder, check_ct=False)), "read_dicom_series")
