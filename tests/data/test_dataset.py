"""ImageReportDataset items, (seed, epoch, index) determinism, bad samples and collation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.data import dicom_file, make_manifest
from torch.utils.data import DataLoader

import medmoe.data.dataset as dataset_module
from medmoe.data.dataset import BadSample, ImageReportDataset, collate_image_report, sample_generator
from medmoe.data.manifest import ManifestRow, read_manifest
from medmoe.data.modalities import MODALITIES
from medmoe.data.readers import read_image
from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

pytestmark = pytest.mark.timeout(120)


def test_item_contents(tmp_path):
    path, rows = make_manifest(tmp_path, n=3)
    ds = ImageReportDataset(path, image_size=32)
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"image", "report", "modality", "labels", "index", "path"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert item["report"] == "Finding number 1 in the left lung. Case 1."
    assert item["modality"] == MODALITIES.index("ct")  # "CT" in the manifest, normalised
    assert item["labels"] == ["label1"]
    assert item["index"] == 1
    assert item["path"] == rows[1].image


def test_split_filter(tmp_path):
    path, _ = make_manifest(tmp_path, n=7)
    assert len(ImageReportDataset(path, split="train")) == 3
    assert len(ImageReportDataset(path, split="validation")) == 2
    assert len(ImageReportDataset(path)) == 7


def test_modality_from_dicom_when_manifest_has_none(tmp_path):
    image = tmp_path / "ct.dcm"
    shutil.copy(dicom_file("CT_small.dcm"), image)
    rows = [
        ManifestRow(image=str(image), report="Axial slice.", modality=None),
        ManifestRow(image=str(image), report="Axial slice.", modality="PET"),
    ]
    ds = ImageReportDataset(rows, image_size=32)
    assert ds[0]["modality"] == MODALITIES.index("ct")
    assert ds[1]["modality"] == MODALITIES.index("ct")  # unknown manifest value: the file decides
    png_rows = [ManifestRow(image=str(make_manifest(tmp_path / "p", n=1)[1][0].image), report="x", modality=None)]
    assert ImageReportDataset(png_rows, image_size=32)[0]["modality"] == -1


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    path, _ = make_manifest(tmp_path, n=4, size=(64, 64))
    a = ImageReportDataset(path, image_size=32, train=True, seed=7)
    b = ImageReportDataset(path, image_size=32, train=True, seed=7)
    # a "resumed" dataset jumps straight to epoch 3 and reads items in another order
    a.set_epoch(3)
    b.set_epoch(3)
    for index in (2, 0, 3):
        assert torch.equal(a[index]["image"], b[index]["image"])
    reference = a[2]["image"]
    a.set_epoch(4)
    assert not torch.allclose(a[2]["image"], reference)
    a.set_epoch(3)
    assert torch.equal(a[2]["image"], reference)
    other_seed = ImageReportDataset(path, image_size=32, train=True, seed=8)
    other_seed.set_epoch(3)
    assert not torch.allclose(other_seed[2]["image"], reference)
    # evaluation mode is deterministic regardless of epoch
    ev = ImageReportDataset(path, image_size=32)
    first = ev[0]["image"]
    ev.set_epoch(9)
    assert torch.equal(ev[0]["image"], first)


@pytest.mark.timeout(180)
def test_same_batches_with_and_without_workers(tmp_path):
    path, _ = make_manifest(tmp_path, n=6)
    ds = ImageReportDataset(path, image_size=24, train=True, seed=1)
    ds.set_epoch(2)
    single = list(DataLoader(ds, batch_size=3, collate_fn=collate_image_report))
    multi = list(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_image_report))
    for x, y in zip(single, multi, strict=True):
        assert torch.equal(x["images"], y["images"])
        assert x["reports"] == y["reports"]


def test_bad_samples_are_returned_not_raised(tmp_path):
    path, rows = make_manifest(tmp_path, n=2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = read_manifest(path) + [
        ManifestRow(image=str(tmp_path / "missing.png"), report="FINDINGS: ok."),
        ManifestRow(image=str(corrupt), report="FINDINGS: ok."),
        ManifestRow(image=rows[0].image, report="FINDINGS: XXXX.\nIMPRESSION:"),
    ]
    ds = ImageReportDataset(rows, image_size=16)
    items = [ds[i] for i in range(len(ds))]
    bad = [item for item in items if isinstance(item, BadSample)]
    assert [b.index for b in bad] == [2, 3, 4]
    assert bad[0].path.endswith("missing.png") and "no such file" in bad[0].reason
    assert bad[1].path.endswith("corrupt.png") and "CorruptFileError" in bad[1].reason
    assert bad[2].reason == "empty report after cleaning"
    # label-only evaluation rows may have no report
    assert not isinstance(ImageReportDataset(rows, image_size=16, require_report=False)[4], BadSample)


def test_collate_drops_and_reports_bad_samples(tmp_path):
    path, _ = make_manifest(tmp_path, n=3)
    ds = ImageReportDataset(path, image_size=16)
    samples = [ds[0], BadSample(7, "/x.png", "broken"), ds[2]]
    batch = collate_image_report(samples)
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["reports"] == [ds[0]["report"], ds[2]["report"]]
    assert batch["modality"].dtype == torch.long and batch["modality"].tolist() == [0, 2]
    assert batch["index"].tolist() == [0, 2]
    assert batch["labels"] == [["label0"], ["label0"]]
    assert batch["bad"] == [BadSample(7, "/x.png", "broken")]
    empty = collate_image_report([BadSample(1, "/a", "r")], image_size=16)
    assert empty["images"].shape == (0, 3, 16, 16) and empty["reports"] == [] and len(empty["bad"]) == 1
    assert batch["images"].dtype == torch.uint8 and empty["images"].dtype == torch.uint8


def test_loader_counts_bad_samples_over_an_epoch(tmp_path):
    path, _ = make_manifest(tmp_path, n=4)
    (tmp_path / "images" / "img001.png").write_bytes(b"")  # break one image after writing the manifest
    loader = DataLoader(ImageReportDataset(path, image_size=16), batch_size=2, collate_fn=collate_image_report)
    good = bad = 0
    for batch in loader:
        good += len(batch["reports"])
        bad += len(batch["bad"])
    assert (good, bad) == (3, 1)


# --- decoding at the size that is needed, uint8 items -----------------------------------------------------


def _large_jpeg(path, seed: int = 0):
    """A 3000x2500 radiograph-like JPEG: gradient, ripple, a round opacity with sharp edges, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:2500, 0:3000].astype(np.float32)
    picture = 40 + 140 * x / 3000 + 30 * np.sin(y / 300) + 40 * (((x - 1500) ** 2 + (y - 1100) ** 2) < 400**2)
    picture = np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(path, quality=92)
    return path


@pytest.mark.parametrize("train", [False, True])
def test_items_decode_at_the_transform_decode_size(tmp_path, monkeypatch, train):
    path = _large_jpeg(tmp_path / "chest.jpg")
    decoded = []

    def spy(*args, **kwargs):
        image, meta = read_image(*args, **kwargs)
        decoded.append((kwargs.get("target_size"), image.shape))
        return image, meta

    monkeypatch.setattr(dataset_module, "read_image", spy)
    ds = ImageReportDataset([ManifestRow(image=str(path), report="FINDINGS: Round opacity.")], image_size=224,
                            train=train, seed=4)
    ds.set_epoch(1)
    item = ds[0]
    assert ds.transform.decode_size == 334
    assert decoded == [(334, (313, 375))]  # libjpeg's 1/8 scale
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 224, 224)
    # The reference: full-resolution decode, normalised float transform. Same picture within rounding and
    # resampling, compared in [0, 1] units.
    full, _ = read_image(path)
    reference = ImageTransform(image_size=224, train=train, normalized=True)(
        full, generator=sample_generator(4, 1, 0) if train else None)
    reference = reference * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    difference = (item["image"].float() / 255 - reference).abs()
    assert float(difference.mean()) < 1 / 255, f"{float(difference.mean()) * 255:.2f}/255"  # measured 0.3-0.4
