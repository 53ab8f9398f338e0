"""Synthetic CT phantoms: deterministic by seed, plausible HU, lesions inside organs, consistent partial labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmoe.seg.classes import ClassTemplate
from medmoe.seg.data import load_datalist
from medmoe_samples.ct.phantom_pack import (
    PHANTOM_DATASETS,
    PHANTOM_TEST_DATASET,
    PHANTOM_TEST_STYLES,
    build_phantom_pack,
)
from medmoe_samples.ct.phantoms import FULL_LABELS, Grid, relabel, render_phantom

pytestmark = pytest.mark.timeout(120)
ID = {name: i for i, name in FULL_LABELS.items()}
SMALL = Grid.make((6.0, 6.0, 6.0))


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """A tiny phantom pack (seed 3; 2 train + 1 validation per dataset, 2 test); its datalist path."""
    return build_phantom_pack(tmp_path_factory.mktemp("phantom_pack"), seed=3, sizes=(2, 1, 2), progress=False)


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b = render_phantom((1, 2, 3), SMALL), render_phantom((1, 2, 3), SMALL)
    c = render_phantom((1, 2, 4), SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.tumours == b.tumours
    assert not np.array_equal(a.label, c.label)


def test_organs_have_their_hounsfield_units_and_lesions_lie_in_their_organ():
    p = render_phantom(7, Grid.make((3.0, 3.0, 3.0)), tumour_prob=1.0)
    assert set(p.tumours) == {"liver_tumour", "kidney_tumour"}
    median = {name: float(np.median(p.image[p.label == i])) for i, name in FULL_LABELS.items()}
    assert 40 < median["liver"] < 80 and 30 < median["spleen"] < 70
    assert median["kidney_right"] > 90 and median["aorta"] > 140
    assert median["liver_tumour"] < median["liver"] - 25  # hypo-dense
    assert median["kidney_tumour"] < median["kidney_right"] - 40
    assert np.median(p.image[p.label == 0]) < -50  # background: fat and air
    for i, name in FULL_LABELS.items():
        assert (p.label == i).sum() > 20, name
    # host: where the lesion was painted, the organ it belongs to
    assert set(np.unique(p.host[p.label == ID["liver_tumour"]])) == {ID["liver"]}
    assert set(np.unique(p.host[p.label == ID["kidney_tumour"]])) <= {ID["kidney_right"], ID["kidney_left"]}
    # anatomy sides in RAS: liver on the patient's right (+x), spleen on the left
    xs = np.indices(p.label.shape)[0]
    world_x = p.affine[0, 0] * xs + p.affine[0, 3]
    assert world_x[p.label == ID["liver"]].mean() > 20 > -20 > world_x[p.label == ID["spleen"]].mean()


def test_relabel_keeps_only_the_dataset_classes_and_folds_lesions_into_organs():
    p = render_phantom(11, SMALL, tumour_prob=1.0)
    c = relabel(p, PHANTOM_DATASETS["phantom-C"]["labels"])  # liver, kidneys, pancreas, aorta, stomach; no lesions
    by_name = {v: k for k, v in PHANTOM_DATASETS["phantom-C"]["labels"].items()}
    assert np.all(c[p.label == ID["liver_tumour"]] == by_name["liver"])
    assert np.all(c[p.label == ID["spleen"]] == 0)
    kidney_lesion = p.label == ID["kidney_tumour"]
    assert set(np.unique(c[kidney_lesion])) <= {by_name["kidney_right"], by_name["kidney_left"]}
    b = relabel(p, PHANTOM_DATASETS["phantom-B"]["labels"])  # kidney tumour labelled, liver not
    assert np.all(b[kidney_lesion] == 3) and np.all(b[p.label == ID["liver"]] == 0)
    np.testing.assert_array_equal(relabel(p, FULL_LABELS), p.label)


def test_pack_datasets_cover_every_class_but_none_labels_all(pack):
    path = pack
    datalist = load_datalist(path)
    template = datalist.template
    train_sets = sorted({e["dataset"] for e in datalist.entries("training")})
    assert train_sets == sorted(PHANTOM_DATASETS)
    labelled = {d: set(template.labelled_classes(d)) for d in train_sets}
    everything = set(FULL_LABELS.values())
    assert everything <= set.union(*labelled.values())
    assert all(not everything <= s for s in labelled.values())
    # test phantoms label everything and take turns in the test grid and each training dataset's grid
    tests = [e["dataset"] for e in datalist.entries("test")]
    assert tests == list(PHANTOM_TEST_STYLES)[: len(tests)] and tests[0] == PHANTOM_TEST_DATASET
    assert all(everything <= set(template.labelled_classes(d)) for d in tests)
    assert nib.aff2axcodes(nib.load(datalist.entries("test")[1]["image"]).affine) == ("R", "A", "S")  # phantom-A's
    doc = json.loads(path.read_text())
    # every label file holds only ids of its dataset's map, on its image's grid
    for entry in datalist.entries("training") + datalist.entries("test"):
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        np.testing.assert_allclose(image.affine, label.affine)
        ids = set(np.unique(np.asarray(label.dataobj)).tolist()) - {0}
        assert ids <= {int(k) for k in doc["label_maps"][entry["dataset"]]}
    # a dataset's multi-hot is empty on every class it does not label (the label mask is truthful)
    entry = datalist.entries("training")[0]
    ids = np.asarray(nib.load(entry["label"]).dataobj)
    hot = template.multi_hot(ids, entry["dataset"])
    mask = template.label_mask(entry["dataset"]).numpy()
    assert not hot[~mask].any() and hot[mask].any(axis=(1, 2, 3)).sum() >= 3


def test_pack_is_reproducible_and_the_test_label_map_matches_the_template(tmp_path, pack):
    session = pack.parent  # seed 3, 2 train cases per dataset
    fresh = build_phantom_pack(tmp_path / "again", seed=3, sizes=(1, 0, 1), progress=False).parent
    for rel in ("phantom-B/images/phantom-B_000.nii.gz", "phantom-A/labels/phantom-A_000.nii.gz",
                f"{PHANTOM_TEST_DATASET}/labels/test_000.nii.gz"):
        a, b = nib.load(session / rel), nib.load(fresh / rel)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    other = render_phantom((4, 1, 0), Grid.make(PHANTOM_DATASETS["phantom-B"]["spacing"], "LPS"))
    assert not np.array_equal(other.image, np.asarray(nib.load(session / "phantom-B/images/phantom-B_000.nii.gz").dataobj))
    # The packaged template ships a synthetic-phantom map; the pack writes the same ids.
    assert ClassTemplate.default().label_map(PHANTOM_TEST_DATASET) == FULL_LABELS
    # Datasets are stored with different orientations and spacings, so loaders must reorient and resample.
    codes = {nib.aff2axcodes(nib.load(fresh / f"{d}/images/{d}_000.nii.gz").affine) for d in PHANTOM_DATASETS}
    assert len(codes) >= 2
