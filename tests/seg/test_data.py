"""The partially labelled CT dataset: shapes, label masks, resume determinism, balance, bad samples, real CT."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from testkit.seg import TOTALSEG_SDIST, TOTALSEG_SKIP, phantom_datalist, totalseg_datalist

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.data import (
    BadSample,
    build_seg_dataset,
    dataset_weights,
    expand_labels,
    load_datalist,
    seg_collate,
)
from medmoe_samples.ct.totalseg import totalseg_class_map

pytestmark = pytest.mark.timeout(180)
PATCH = (32, 32, 32)
SPACING = (6.0, 6.0, 6.0)  # coarse: the tests check plumbing, not anatomy


@pytest.fixture(scope="module")
def train_ds(tmp_path_factory):
    return build_seg_dataset(phantom_datalist(tmp_path_factory), "training", patch_size=PATCH, spacing=SPACING,
                             samples_per_volume=2, seed=7, progress=False)


def test_patches_carry_label_ids_that_expand_to_truthful_multi_hot(train_ds):
    names = train_ds.class_names
    assert {"liver", "spleen", "kidney_left", "kidney_right", "liver_tumour", "kidney_tumour", "pancreas"} <= set(names)
    batch = seg_collate([train_ds[0], train_ds[1], train_ds[2]])
    k = len(names)
    assert batch["image"].shape == (6, 1, *PATCH) and batch["image"].dtype == torch.float32
    # compact labels: int16 ids and one bool table; the only float tensor of the batch is the image
    assert batch["label_ids"].shape == (6, 1, *PATCH) and batch["label_ids"].dtype == torch.int16
    assert [key for key, v in batch.items() if torch.is_tensor(v) and v.is_floating_point()] == ["image"]
    assert batch["label_mask"].shape == (6, k) and batch["label_mask"].dtype == torch.bool
    assert batch["bad"] == [] and len(batch["dataset"]) == len(batch["path"]) == 6
    # the prompted classes are chosen here, on the host: those some sample labels
    active = batch["active"]
    assert active == [c for c in range(k) if batch["label_mask"][:, c].any()]
    assert torch.equal(batch["active_mask"], batch["label_mask"][:, active])
    assert batch["label_table"].dtype == torch.bool and batch["label_table"].shape[1] == len(active)
    label = expand_labels(batch["label_ids"], batch["label_table"])
    assert label.shape == (6, len(active), *PATCH) and label.dtype == torch.bool
    # HU window -> [0, 1], then intensity jitter of at most x(1 +- 0.1) and +- 0.05
    assert -0.05 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.15 + 1e-6
    # nothing is marked present for a class the sample's dataset does not label
    assert not (label.amax(dim=(2, 3, 4)) & ~batch["active_mask"]).any()
    template = train_ds.template
    for row, dataset in zip(batch["label_mask"], batch["dataset"]):
        assert row.tolist() == template.label_mask(dataset, names).tolist()
    # an organ includes its lesions: liver tumour voxels are liver voxels too
    li, lt = active.index(names.index("liver")), active.index(names.index("liver_tumour"))
    assert not (label[:, lt] & ~label[:, li]).any()
    # positive sampling: most patches contain labelled foreground
    assert (label.flatten(1).any(dim=1)).sum() >= 3


def test_expanded_labels_equal_each_samples_template_multi_hot(train_ds):
    """Three datasets in one batch: each sample's ids, shifted into the batch table, expand to exactly the
    multi-hot its own dataset's label map gives (ClassTemplate.multi_hot), on the prompted classes."""
    items = [patch for i in range(3) for patch in train_ds[i]]
    assert len({item["dataset"] for item in items}) == 3
    batch = seg_collate(items)
    label = expand_labels(batch["label_ids"], batch["label_table"])
    for b, item in enumerate(items):
        full = train_ds.template.multi_hot(item["label_ids"], item["dataset"], train_ds.class_names)
        assert torch.equal(label[b], full[batch["active"]]), item["dataset"]
        assert full[batch["active"]].any()  # the comparison covers foreground, not only background


def test_a_batch_without_labelled_classes_prompts_one_unlabelled_class(train_ds):
    items = train_ds[0]
    for item in items:
        item["label_mask"] = torch.zeros_like(item["label_mask"])
    batch = seg_collate(items)
    assert batch["active"] == [0] and not batch["active_mask"].any()
    assert batch["label_table"].shape[1] == 1


def test_randomness_is_a_function_of_seed_epoch_and_index(train_ds, tmp_path_factory):
    train_ds.set_epoch(3)
    a = train_ds[4]
    again = build_seg_dataset(phantom_datalist(tmp_path_factory), "training", patch_size=PATCH, spacing=SPACING,
                              samples_per_volume=2, seed=7, progress=False, cache=False)
    again.set_epoch(3)
    _ = again[1]  # reading other items first must not change item 4 (no shared RNG stream)
    b = again[4]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label_ids"], y["label_ids"])
    train_ds.set_epoch(4)
    c = train_ds[4]
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))
    train_ds.set_epoch(0)


def test_balanced_epochs_give_every_source_the_same_share(train_ds):
    sources = list(train_ds.sources)
    assert len(sources) == 3 and len(train_ds) == 3 * max(len(v) for v in train_ds.sources.values())
    for epoch in (0, 1):
        train_ds.set_epoch(epoch)
        picked = [train_ds.entry_index(i) for i in range(len(train_ds))]
        per_source = Counter(train_ds.entries[i]["dataset"] for i in picked)
        assert set(per_source.values()) == {len(train_ds) // 3}
        assert sorted(set(picked)) == list(range(len(train_ds.entries)))  # every volume is visited
    train_ds.set_epoch(0)
    w = dataset_weights(train_ds)
    totals = Counter()
    for entry, weight in zip(train_ds.entries, w.tolist()):
        totals[entry["dataset"]] += weight
    assert all(t == pytest.approx(1.0) for t in totals.values())


def test_validation_items_are_whole_volumes_with_labels_on_the_anatomy(tmp_path_factory):
    ds = build_seg_dataset(phantom_datalist(tmp_path_factory), "validation", patch_size=PATCH, spacing=(4.0, 4.0, 4.0),
                           train=False, cache=False, progress=False)
    names = ds.class_names
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert isinstance(item, dict)
        # whole volumes carry label ids (int16), not K float channels
        assert item["image"].shape[0] == 1 and item["label_ids"].shape == item["image"].shape
        assert item["label_ids"].dtype == torch.int16 and item["label_mask"].shape[0] == len(names)
        # body crop: the 240 mm antero-posterior field of view shrinks to the body (air in front and behind)
        assert item["image"].shape[2] < 240 / 4
        # every dataset (stored RAS or LPS, at its own spacing) ends up with labels on the right tissue
        hu = item["image"][0] * 425.0 - 175.0
        for name, (lo, hi) in {"liver": (40, 80), "aorta": (130, 230), "kidney_left": (70, 170)}.items():
            k = names.index(name)
            if item["label_mask"][k]:
                assert lo < float(hu[ds.class_mask(item, k)].median()) < hi, (item["dataset"], name)
                seen.add(item["dataset"])
        # and in RAS: the array's first axis runs towards the patient's right, whatever the file's orientation
        right, left = names.index("kidney_right"), names.index("kidney_left")
        if item["label_mask"][right]:
            x = torch.arange(hu.shape[0], dtype=torch.float32)[:, None, None]
            masks = [ds.class_mask(item, k).float() for k in (right, left)]
            centre = [float((x * m).sum() / m.sum()) for m in masks]
            assert centre[0] > centre[1] + 10, item["dataset"]
    assert seen == {"phantom-A", "phantom-B", "phantom-C"}


def test_bad_volumes_are_skipped_with_path_and_reason(tmp_path, tmp_path_factory):
    good = load_datalist(phantom_datalist(tmp_path_factory)).entries("training")[0]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    doc = {"label_maps": {"toy": {"1": "liver"}},
           "training": [{"image": good["image"], "label": good["label"], "dataset": "toy"},
                        {"image": str(broken), "label": good["label"], "dataset": "toy"},
                        {"image": str(tmp_path / "missing.nii.gz"), "label": good["label"], "dataset": "toy"}]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    ds = build_seg_dataset(path, "training", patch_size=PATCH, spacing=SPACING, progress=False,
                           cache_dir=tmp_path / "cache")
    assert ds.prepare() == {"built": 1, "cached": 0, "bad": 2}
    assert ds.prepare() == {"built": 0, "cached": 3, "bad": 0}  # failures are recorded, not retried
    batch = seg_collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape[0] == 1
    assert [b.path for b in batch["bad"]] == [str(broken), str(tmp_path / "missing.nii.gz")]
    assert all(isinstance(b, BadSample) and b.reason for b in batch["bad"])
    assert "NIfTI" in batch["bad"][0].reason and "no such file" in batch["bad"][1].reason
    only_bad = seg_collate([ds[1]])
    assert only_bad["image"].shape[0] == 0 and len(only_bad["bad"]) == 1


def test_datalist_errors_name_the_problem(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "dataset": "no-such-dataset"}]}))
    with pytest.raises(InvalidInputError, match="no-such-dataset"):
        load_datalist(path)
    path.write_text(json.dumps({"training": [{"label": "a.nii.gz"}]}))
    with pytest.raises(InvalidInputError, match="expected an object with image"):
        load_datalist(path)
    path.write_text("{broken")
    with pytest.raises(InvalidInputError, match="not a JSON datalist"):
        load_datalist(path)
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "dataset": "BTCV"}]}))
    with pytest.raises(InvalidInputError, match="no split 'test'"):
        build_seg_dataset(path, "test")


@pytest.mark.slow
def test_real_dicom_ct_and_its_label_map_align_after_loading(tmp_path_factory):
    datalist = totalseg_datalist(tmp_path_factory)
    if datalist is None:
        pytest.skip(TOTALSEG_SKIP)
    ds = build_seg_dataset(datalist, "test", spacing=(3.0, 3.0, 3.0), train=False, cache=False, progress=False)
    item = ds[0]
    assert isinstance(item, dict), getattr(item, "reason", "")
    assert item["path"].endswith("example_ct_dicom") and item["dataset"] == "TotalSegmentator"
    names = ds.class_names
    present = [bool(ds.class_mask(item, k).any()) for k in range(len(names))]
    assert present[names.index("liver")] and present[names.index("vertebrae_T12")]
    # TotalSegmentator labels every class of its datalist but the aorta report's coeliac trunk
    assert {n for k, n in enumerate(names) if not item["label_mask"][k]} == {"celiac_trunk"}
    # geometry: the DICOM series (LPS) and its NIfTI label map (flipped rows) end up voxel-aligned, so the
    # liver label covers liver-bright soft tissue and the vertebra label covers bone
    image = item["image"][0]
    liver = ds.class_mask(item, names.index("liver"))
    bone = ds.class_mask(item, names.index("vertebrae_T12"))
    hu = lambda w: w * 425.0 - 175.0  # noqa: E731
    assert 20 < hu(float(image[liver].median())) < 200
    assert hu(float(image[bone].median())) > hu(float(image[liver].median())) + 50


def test_totalsegmentator_pack_label_map_matches_the_template(tmp_path_factory):
    datalist = totalseg_datalist(tmp_path_factory)
    if datalist is None:
        pytest.skip(TOTALSEG_SKIP)
    tarball_map = totalseg_class_map(TOTALSEG_SDIST)
    assert len(tarball_map) == 117
    template = ClassTemplate.default()
    packaged = template.label_map("TotalSegmentator")
    assert {k: template.resolve(v) for k, v in tarball_map.items()} == packaged
    doc = json.loads(datalist.read_text())
    assert doc["test"][0]["image"] == "example_ct_dicom"
    assert [e["dataset"] for e in doc["training"]] == ["TotalSegmentator", "aorta-report"]
    assert [e["dataset"] for e in doc["test"]] == ["TotalSegmentator"]


@pytest.mark.slow
def test_aorta_report_masks_merge_onto_its_ct_only_where_they_cover_it(tmp_path_factory):
    datalist = totalseg_datalist(tmp_path_factory)
    if datalist is None:
        pytest.skip(TOTALSEG_SKIP)
    from medmoe.data.volumes import read_ct, read_label

    doc = json.loads(datalist.read_text())
    assert doc["label_maps"]["aorta-report"] == {"1": "aorta", "2": "heart", "3": "brachiocephalic_trunk",
                                                 "4": "celiac_trunk"}
    # masks whose crop cuts the structure (T12, the left carotid and subclavian) or that are empty stay out
    assert {"vertebrae_T12", "subclavian_artery_left", "iliac_artery_left"} <= set(doc["aorta_report"]["excluded"])
    root = datalist.parent
    ct, label = read_ct(root / "aorta_report/example_ct.nii.gz"), read_label(root / "aorta_report/label.nii.gz")
    assert label.shape == ct.shape == (233, 167, 191)
    np.testing.assert_allclose(label.affine, ct.affine, atol=1e-4)
    counts = np.bincount(label.array.ravel(), minlength=5)
    assert counts[1] == pytest.approx(72810, abs=20) and counts[2] == pytest.approx(198176, abs=20)
    assert float(np.median(ct.array[label.array == 1])) > 200  # arterial phase: the aorta is bright on its CT


def test_a_cropped_mask_counts_only_when_its_crop_holds_the_structure():
    from medmoe.data.volumes import Volume
    from medmoe_samples.ct.totalseg import mask_coverage, merge_masks

    ct = Volume(np.zeros((20, 20, 20), np.int16), np.diag([1.5, 1.5, 1.5, 1.0]), "ct")
    crop_affine = ct.affine.copy()
    crop_affine[:3, 3] = [1.5 * 5, 0.0, 0.0]  # a 10 x 20 x 20 crop starting at i = 5
    inside = np.zeros((10, 20, 20), np.uint8)
    inside[3:6, 0:4, 5:8] = 1  # touches j = 0, a face the crop shares with the CT: fine
    cut = np.zeros((10, 20, 20), np.uint8)
    cut[0:3, 5:8, 5:8] = 1  # touches i = 0 of the crop, which lies inside the CT: cut by the crop
    assert mask_coverage(Volume(inside, crop_affine, "a"), ct) is None
    assert "cut by the crop" in mask_coverage(Volume(cut, crop_affine, "b"), ct)
    assert "empty" in mask_coverage(Volume(np.zeros_like(inside), crop_affine, "c"), ct)
    full = np.zeros((20, 20, 20), np.uint8)
    full[9:12, 1:3, 5:8] = 1  # on the CT's own grid: counts; 12 of its 18 voxels are the first mask's too
    label, kept, excluded = merge_masks(ct, [("aorta", Volume(inside, crop_affine, "a")),
                                             ("heart", Volume(cut, crop_affine, "b")), ("liver", Volume(full, ct.affine, "d"))])
    assert kept == {1: "aorta", 2: "liver"} and set(excluded) == {"heart"}
    assert (label == 1).sum() == inside.sum() and label[8, 0, 5] == 1  # crop voxel (3, 0, 5) at CT (8, 0, 5)
    assert (label == 2).sum() == 6  # the earlier mask keeps the shared voxels


def test_soft_labels_are_partial_volume_fractions_aligned_with_the_hard_labels(tmp_path_factory):
    kwargs = dict(patch_size=PATCH, spacing=(5.0, 5.0, 5.0), samples_per_volume=1, seed=5, progress=False, cache=False)
    hard = build_seg_dataset(phantom_datalist(tmp_path_factory), "training", **kwargs)
    soft = build_seg_dataset(phantom_datalist(tmp_path_factory), "training", soft_labels=True, **kwargs)
    names = soft.class_names
    fractional = 0
    for index in range(3):  # one item of each phantom dataset (stored RAS or LPS, at different spacings)
        a, b = hard[index][0], soft[index][0]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label_mask"], b["label_mask"])
        h = expand_labels(a["label_ids"][None], a["label_table"])[0].float()
        assert b["soft_label"].shape == h.shape and b["soft_label"].dtype == torch.float16
        s = b["soft_label"].float()
        assert 0 <= float(s.min()) and float(s.max()) <= 1
        # nothing for classes the dataset does not label; organs still contain their lesions
        assert not s[~b["label_mask"]].any()
        li, lt = names.index("liver"), names.index("liver_tumour")
        assert (s[lt] <= s[li] + 1e-3).all()
        for k in torch.nonzero(h.flatten(1).sum(1) > 50).flatten().tolist():
            inter = float((h[k].bool() & (s[k] > 0.5)).sum())
            dice = 2 * inter / float(h[k].sum() + (s[k] > 0.5).sum())
            assert dice > 0.85, (b["dataset"], names[k], dice)  # same place as nearest-neighbour labels
            assert 0.85 < float(s[k].sum() / h[k].sum()) < 1.15, (b["dataset"], names[k])
        fractional += int(((s > 0.05) & (s < 0.95)).sum())
    assert fractional > 100  # boundaries carry fractions, not only 0 and 1


def test_soft_labels_average_the_footprint_of_a_coarser_voxel():
    """On a grid exactly 2x coarser, linear resampling alone would only pick every other native voxel (0 or 1);
    the fractions must come from averaging over the coarse voxel's footprint."""
    from monai.data import MetaTensor

    from medmoe.seg.transforms import SoftMultiHotd, footprint_sigmas

    native = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse = np.diag([6.0, 6.0, 6.0, 1.0])
    assert footprint_sigmas(native, coarse) == pytest.approx([2 / np.sqrt(12)] * 3)
    assert footprint_sigmas(coarse, native) == [0.0, 0.0, 0.0]
    ids = np.zeros((1, 40, 40, 40), np.int16)
    ids[0, :21] = 1  # a slab ending in native voxel 20, the centre of coarse voxel 10 (footprint 19.0-21.0)
    table = np.array([[False], [True]])
    d = {"native_ids": MetaTensor(torch.from_numpy(ids), affine=torch.as_tensor(native)), "dataset": "toy",
         "image": MetaTensor(torch.zeros(1, 20, 20, 20), affine=torch.as_tensor(coarse))}
    soft = SoftMultiHotd({"toy": table})(d)["soft_label"][0].float()
    profile = soft[:, 10, 10]
    assert "native_ids" not in SoftMultiHotd({"toy": table})(d)
    assert float(profile[5]) == pytest.approx(1.0, abs=1e-3) and float(profile[15]) == pytest.approx(0.0, abs=1e-3)
    assert 0.6 < float(profile[10]) < 0.9  # 3/4 covered; point sampling would read native voxel 20: 1
    assert float(soft.sum()) == pytest.approx(21 * 40 * 40 / 8, rel=0.02)  # volume is kept


def test_patches_centre_on_every_labelled_class_equally_not_on_the_largest():
    from medmoe.seg.cache import class_locations
    from medmoe.seg.patches import centre_groups, crop, patch_starts

    # id 1: a big organ (4096 voxels), id 2: a small one (8), id 3: labelled in the file but not a class here
    label = np.zeros((48, 48, 48), np.int16)
    label[2:18, 2:18, 2:18] = 1
    label[40:42, 40:42, 40:42] = 2
    label[30:34, 2:6, 2:6] = 3
    image = np.full((48, 48, 48), 0.5, np.float32)
    image[:, :, 46:] = 0.0  # air: never a background centre
    locations = class_locations(label, image, limit=1000, seed=0)
    assert {k: len(v) for k, v in locations.items() if k != "edge"} == {"1": 1000, "2": 8, "3": 64, "body": 1000}
    assert all(v.dtype == np.int32 for v in locations.values())
    flat = label.ravel()
    assert (flat[locations["2"]] == 2).all() and (flat[locations["1"]] == 1).all()
    assert (flat[locations["body"]] == 0).all() and (image.ravel()[locations["body"]] > 0).all()
    # the subset is a function of the seed: the same volume keeps its locations
    assert np.array_equal(class_locations(label, image, 1000, 0)["1"], locations["1"])

    is_class = np.array([False, True, True, False])
    groups = centre_groups(locations, is_class)
    assert len(groups) == 3 and len(groups[0]) == 1000 + 64  # id 3 counts as background
    starts = patch_starts(label.shape, (8, 8, 8), groups, 300, np.random.RandomState(0))
    patches = [crop(label[None], s, (8, 8, 8))[0] for s in starts]
    centred = Counter("small" if (p == 2).any() else "big" if (p == 1).all() else "other" for p in patches)
    assert 70 <= centred["small"] <= 130  # ~1/3 of the patches, although the small organ is 0.2 % of the foreground
    assert all(0 <= s[i] <= 40 for s in starts for i in range(3))  # inside the volume


def test_crop_pads_with_zeros_outside_and_reads_only_the_patch(tmp_path):
    from medmoe.seg.patches import crop, patch_starts

    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    out = crop(mapped, (-2, 3, 4), (4, 4, 4))
    assert out.shape == (1, 4, 4, 4) and isinstance(out, np.ndarray) and not isinstance(out, np.memmap)
    assert np.array_equal(out[0, 2:, :3, :3], array[0, :2, 3:, 4:]) and not out[0, :2].any() and not out[0, :, 3:].any()
    # a volume thinner than the patch: the patch is centred on it (zero padding on both sides)
    (start,) = patch_starts((5, 6, 7), (8, 8, 8), [np.array([0])], 1, np.random.RandomState(0))
    assert start == (-1, -1, 0)


def test_disk_cache_is_reused_and_invalidated_by_settings_and_edits(tmp_path, tmp_path_factory):
    source = load_datalist(phantom_datalist(tmp_path_factory)).entries("training")[0]
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(open(source["image"], "rb").read())
    doc = {"label_maps": json.loads(phantom_datalist(tmp_path_factory).read_text()).get("label_maps", {}),
           "training": [{"image": str(image), "label": source["label"], "dataset": source["dataset"]}]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    cache = tmp_path / "cache"
    kwargs = dict(patch_size=PATCH, progress=False, cache_dir=cache, seed=3)
    first = build_seg_dataset(path, "training", spacing=SPACING, **kwargs)
    assert first.prepare() == {"built": 1, "cached": 0, "bad": 0}
    a = first[0][0]
    again = build_seg_dataset(path, "training", spacing=SPACING, **kwargs)  # a second run: nothing to do
    assert again.prepare() == {"built": 0, "cached": 1, "bad": 0}
    assert torch.equal(again[0][0]["image"], a["image"]) and torch.equal(again[0][0]["label_ids"], a["label_ids"])
    assert isinstance(again.volume(0).image, np.memmap)
    # another spacing is another settings folder; the first stays valid
    other = build_seg_dataset(path, "training", spacing=(5.0, 5.0, 5.0), **kwargs)
    assert other.prepare()["built"] == 1 and other.cache.folder != first.cache.folder
    assert json.loads((other.cache.folder / "settings.json").read_text())["spacing"] == [5.0, 5.0, 5.0]
    # an edited image is preprocessed again
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(1, 1))
    assert build_seg_dataset(path, "training", spacing=SPACING, **kwargs).prepare()["built"] == 1
    assert len([d for d in first.cache.folder.iterdir() if d.is_dir()]) == 2


def test_prepare_splits_the_volumes_across_ranks(tmp_path, tmp_path_factory):
    ds = build_seg_dataset(phantom_datalist(tmp_path_factory), "training", patch_size=PATCH, spacing=SPACING,
                           progress=False, cache_dir=tmp_path / "cache")
    n = len(ds.entries)
    assert ds.prepare(rank=1, world_size=2, workers=2) == {"built": n // 2, "cached": 0, "bad": 0}
    assert [ds.cache.cached(e) for e in ds.entries] == [i % 2 == 1 for i in range(n)]
    assert ds.prepare(rank=0, world_size=2)["built"] == n - n // 2
