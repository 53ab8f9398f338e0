"""Class template and dataset label maps."""

import ast
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassInfo, ClassTemplate, normalize_text

REPO = Path(__file__).resolve().parents[2]
UNIVERSAL = [
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "duodenum", "hepatic_vessel", "lung_right", "lung_left", "colon", "intestine", "rectum", "urinary_bladder",
    "prostate", "femur_head_left", "femur_head_right", "celiac_trunk", "kidney_tumour", "liver_tumour",
    "pancreas_tumour", "hepatic_vessel_tumour", "lung_tumour", "colon_tumour", "kidney_cyst",
]
DATASETS = ["BTCV", "AMOS22", "WORD", "AbdomenCT-1K", "KiTS", "LiTS", "CHAOS", "Pancreas-CT", "CT-ORG",
            "MSD-Task03-Liver", "MSD-Task06-Lung", "MSD-Task07-Pancreas", "MSD-Task08-HepaticVessel",
            "MSD-Task09-Spleen", "MSD-Task10-Colon", "TotalSegmentator", "synthetic-phantom"]


@pytest.fixture(scope="module")
def template():
    return ClassTemplate.default()


def test_universal_classes_come_first_in_order(template):
    assert template.class_set("universal") == UNIVERSAL
    assert list(template.names[:32]) == UNIVERSAL
    assert len(set(template.names)) == len(template.names)


def test_every_dataset_has_a_map_onto_template_classes(template):
    for dataset in DATASETS:
        mapping = template.label_map(dataset)
        assert mapping and all(name in template for name in mapping.values()), dataset
        assert template.label_mask(dataset).sum() >= len(set(mapping.values()))


def test_btcv_and_word_maps_are_the_published_ones(template):
    btcv = template.label_map("btcv")
    assert btcv[1] == "spleen" and btcv[2] == "kidney_right" and btcv[9] == "inferior_vena_cava"
    assert btcv[13] == "adrenal_gland_left" and len(btcv) == 13
    word = template.label_map("WORD")
    assert word[3] == "kidney_left" and word[4] == "kidney_right" and word[11] == "intestine" and len(word) == 16
    assert template.label_map("task10") == {1: "colon_tumour"}


@pytest.mark.skipif(not (REPO / ".cache/totalsegmentator-2.18.0.tar.gz").is_file(),
                    reason="TotalSegmentator sdist not fetched (make setup)")
def test_totalsegmentator_map_matches_its_sdist(template):
    with tarfile.open(REPO / ".cache/totalsegmentator-2.18.0.tar.gz") as tar:
        source = tar.extractfile("totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py").read().decode()
    tree = ast.parse(source)
    class_map = next(ast.literal_eval(n.value) for n in tree.body
                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "class_map")["total"]
    ours = template.label_map("TotalSegmentator")
    assert sorted(ours) == sorted(class_map)
    for label_id, ts_name in class_map.items():
        assert template.resolve(ts_name) == ours[label_id], ts_name


@pytest.mark.parametrize("query, expected", [
    ("liver", "liver"), ("Liver", "liver"), ("livr", "liver"), ("spleeen", "spleen"), ("panceras", "pancreas"),
    ("A computerized tomography of a right kidney", "kidney_right"), ("right kidny", "kidney_right"),
    ("lft kidney", "kidney_left"), ("Kidney Tumor", "kidney_tumour"), ("colon cancer", "colon_tumour"),
    ("IVC", "inferior_vena_cava"), ("postcava", "inferior_vena_cava"), ("Celiac Truck", "celiac_trunk"),
    ("small bowel", "intestine"), ("rib lft 1", "rib_left_1"), ("rib_left_11", "rib_left_11"),
    ("vertebrae_L5", "vertebrae_L5"), ("lungs", "lung"),
])
def test_resolve_names_synonyms_and_typos(template, query, expected):
    assert template.resolve(query) == expected


@pytest.mark.parametrize("query", ["heart tumour", "brain tumour", "unicorn", "", "left liver"])
def test_unknown_classes_do_not_resolve_to_look_alikes(template, query):
    assert template.resolve(query) is None


def test_prompt_uses_display_name_and_resolves(template):
    assert template.prompt("kidney_right") == "A computerized tomography of a right kidney"
    assert template.prompt("IVC") == "A computerized tomography of a postcava"
    assert template.prompt("unicorn horn") == "A computerized tomography of a unicorn horn"
    assert normalize_text(template.prompt("liver_tumour")) == "liver tumour"


def test_tumours_and_parents(template):
    assert template.is_tumour("liver_tumour") and not template.is_tumour("liver")
    assert not template.is_tumour("kidney_cyst") and template.is_lesion("kidney_cyst")
    assert template.parent_organ("pancreas_tumour") == "pancreas"
    assert template.parent_organ("kidney_cyst_left") == "kidney_left"
    assert template.parent_organ("liver") is None
    for name in template.names:
        if template.is_lesion(name):
            assert template.parent_organ(name) in template


def test_label_mask_partial_labels_and_unions(template):
    kits = set(template.labelled_classes("KiTS"))
    assert kits == {"kidney", "kidney_tumour", "kidney_cyst"}
    mask = template.label_mask("KiTS", ["kidney", "kidney_left", "liver"])
    assert mask.dtype == torch.bool and mask.tolist() == [True, False, False]
    total = set(template.labelled_classes("TotalSegmentator"))
    assert {"lung_right", "lung_left", "lung", "kidney", "kidney_cyst", "adrenal_gland"} <= total
    assert "liver_tumour" not in total
    assert template.label_mask("BTCV").shape == (len(template),)


def test_multi_hot_puts_lesions_inside_organs(template):
    label = np.array([0, 1, 2, 3]).reshape(1, 1, 1, 4)  # MONAI channel-first (1, D, H, W)
    names = ["kidney", "kidney_tumour", "kidney_cyst", "liver"]
    hot = template.multi_hot(label, "KiTS", names)
    assert hot.shape == (4, 1, 1, 4) and hot.dtype == bool
    assert hot.reshape(4, 4).astype(int).tolist() == [[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    hot_t = template.multi_hot(torch.tensor(label), "KiTS", names)
    assert isinstance(hot_t, torch.Tensor) and torch.equal(hot_t, torch.from_numpy(hot))


def test_multi_hot_lung_from_totalsegmentator_lobes(template):
    ts = {v: k for k, v in template.label_map("TotalSegmentator").items()}
    label = np.array([ts["lung_upper_lobe_left"], ts["lung_middle_lobe_right"], ts["liver"], 0])
    hot = template.multi_hot(label, "TotalSegmentator", ["lung", "lung_left", "lung_right", "liver"])
    assert hot.astype(int).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_multi_hot_unknown_ids_are_background(template, caplog):
    hot = template.multi_hot(np.array([0, 1, 7]), "LiTS", ["liver"])
    assert hot.tolist() == [[False, True, False]]
    assert "not in the LiTS label map" in caplog.text


def test_register_dataset_and_errors(template):
    t = ClassTemplate.default()
    t.register_label_map("my-phantoms", {"1": "Liver", 2: "spleen"}, aliases=["mine"])
    assert t.label_map("MINE") == {1: "liver", 2: "spleen"}
    assert "my-phantoms" not in ClassTemplate.default().datasets  # copies are independent
    with pytest.raises(InvalidInputError, match="unknown class"):
        t.register_label_map("bad", {1: "unicorn"})
    with pytest.raises(InvalidInputError, match="no label map for dataset 'nope'"):
        t.label_map("nope")
    with pytest.raises(InvalidInputError, match="already used"):
        t.register_label_map("other", {1: "liver"}, aliases=["btcv"])


def test_template_validates_its_data(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown class 'ghost'"):
        ClassTemplate([ClassInfo("a", "a", "organ", parts=("ghost",))])
    with pytest.raises(InvalidInputError, match="needs a parent"):
        ClassTemplate([ClassInfo("t", "t", "tumour")])
    with pytest.raises(InvalidInputError, match="names both"):
        ClassTemplate([ClassInfo("a", "x", "organ"), ClassInfo("b", "x", "organ")])
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"classes": [{"display": "no name"}]}))
    with pytest.raises(InvalidInputError, match="malformed"):
        ClassTemplate.from_files(bad)
