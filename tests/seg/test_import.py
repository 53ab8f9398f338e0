"""`medmoe seg import` on tiny copies of each public CT dataset's download layout, then `seg check` and a short
`seg train` on the datalist it writes.

Each fake copy follows the dataset's own public description (cited at its builder), not the importer: file
names, folder layout, the label list its ``dataset.json`` ships. Volumes are coarse synthetic phantoms
(medmoe_samples) about 24 x 20 x 16 voxels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmoe.cli.main import main
from medmoe.data.volumes import write_nifti
from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.data import load_datalist
from medmoe.seg.importers import IMPORT_FORMATS, check_label_list, import_dataset
from medmoe_samples.ct.phantoms import Grid, relabel, render_phantom

GRID_MM = (12.0, 12.0, 12.0)
TRAIN_SPACING = ("12", "12", "12")

# totalsegmentator 2.18.0, totalsegmentator/map_to_binary.py, class_map["total"] (the v2 "total" task): the
# names of the per-class mask files of the TotalSegmentator v2 dataset (segmentations/<name>.nii.gz).
TOTALSEG_V2_CLASSES = (
    'spleen', 'kidney_right', 'kidney_left', 'gallbladder', 'liver', 'stomach', 'pancreas',
    'adrenal_gland_right', 'adrenal_gland_left', 'lung_upper_lobe_left', 'lung_lower_lobe_left',
    'lung_upper_lobe_right', 'lung_middle_lobe_right', 'lung_lower_lobe_right', 'esophagus', 'trachea',
    'thyroid_gland', 'small_bowel', 'duodenum', 'colon', 'urinary_bladder', 'prostate', 'kidney_cyst_left',
    'kidney_cyst_right', 'sacrum', 'vertebrae_S1', 'vertebrae_L5', 'vertebrae_L4', 'vertebrae_L3',
    'vertebrae_L2', 'vertebrae_L1', 'vertebrae_T12', 'vertebrae_T11', 'vertebrae_T10', 'vertebrae_T9',
    'vertebrae_T8', 'vertebrae_T7', 'vertebrae_T6', 'vertebrae_T5', 'vertebrae_T4', 'vertebrae_T3',
    'vertebrae_T2', 'vertebrae_T1', 'vertebrae_C7', 'vertebrae_C6', 'vertebrae_C5', 'vertebrae_C4',
    'vertebrae_C3', 'vertebrae_C2', 'vertebrae_C1', 'heart', 'aorta', 'pulmonary_vein',
    'brachiocephalic_trunk', 'subclavian_artery_right', 'subclavian_artery_left',
    'common_carotid_artery_right', 'common_carotid_artery_left', 'brachiocephalic_vein_left',
    'brachiocephalic_vein_right', 'atrial_appendage_left', 'superior_vena_cava', 'inferior_vena_cava',
    'portal_vein_and_splenic_vein', 'iliac_artery_left', 'iliac_artery_right', 'iliac_vena_left',
    'iliac_vena_right', 'humerus_left', 'humerus_right', 'scapula_left', 'scapula_right', 'clavicula_left',
    'clavicula_right', 'femur_left', 'femur_right', 'hip_left', 'hip_right', 'spinal_cord',
    'gluteus_maximus_left', 'gluteus_maximus_right', 'gluteus_medius_left', 'gluteus_medius_right',
    'gluteus_minimus_left', 'gluteus_minimus_right', 'autochthon_left', 'autochthon_right', 'iliopsoas_left',
    'iliopsoas_right', 'brain', 'skull', 'rib_left_1', 'rib_left_2', 'rib_left_3', 'rib_left_4', 'rib_left_5',
    'rib_left_6', 'rib_left_7', 'rib_left_8', 'rib_left_9', 'rib_left_10', 'rib_left_11', 'rib_left_12',
    'rib_right_1', 'rib_right_2', 'rib_right_3', 'rib_right_4', 'rib_right_5', 'rib_right_6', 'rib_right_7',
    'rib_right_8', 'rib_right_9', 'rib_right_10', 'rib_right_11', 'rib_right_12', 'sternum',
    'costal_cartilages',
)


def write_case(image: Path, label: Path | None, seed: int, organs: dict[int, str], *, dtype=np.uint8) -> None:
    """A phantom CT at ``image`` and (when given) its label map at ``label``; ``organs``: label id -> phantom
    organ for the ids of the dataset's list that the phantom renders (the other ids stay absent)."""
    phantom = render_phantom((11, seed), Grid.make(GRID_MM))
    write_nifti(phantom.image, phantom.affine, image)
    if label is not None:
        write_nifti(relabel(phantom, organs), phantom.affine, label, dtype=dtype)


def _dataset_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=4))


def fake_msd(root: Path) -> tuple[Path, dict]:
    """MSD Task03_Liver as unpacked from Task03_Liver.tar (medicaldecathlon.com; Antonelli et al., "The Medical
    Segmentation Decathlon", Nat. Commun. 2022): dataset.json with "modality" {"0": "CT"}, "labels"
    {"0": "background", "1": "liver", "2": "cancer"}, "training" [{"image": "./imagesTr/liver_N.nii.gz",
    "label": "./labelsTr/liver_N.nii.gz"}], "test" ["./imagesTs/liver_N.nii.gz"]; the tar also carries a
    macOS "._" file next to each volume."""
    task = root / "Task03_Liver"
    training, test = [], []
    for i in range(3):
        write_case(task / f"imagesTr/liver_{i}.nii.gz", task / f"labelsTr/liver_{i}.nii.gz", i,
                   {1: "liver", 2: "liver_tumour"})
        (task / f"imagesTr/._liver_{i}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    write_case(task / "imagesTs/liver_7.nii.gz", None, 7, {})
    test.append("./imagesTs/liver_7.nii.gz")
    _dataset_json(task / "dataset.json", {
        "name": "Liver", "description": "Liver and liver tumour segmentation", "reference": "...",
        "licence": "CC-BY-SA 4.0", "release": "1.0 04/05/2018", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"}, "numTraining": 3, "numTest": 1,
        "training": training, "test": test})
    return task, {"dataset": "MSD-Task03-Liver", "training": 3, "test": 1}


def fake_nnunet(root: Path) -> tuple[Path, dict]:
    """nnU-Net v2 raw dataset (nnU-Net documentation/dataset_format.md): Dataset007_Pancreas/ with dataset.json
    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "pancreas": 1, "tumor": 2}, "numTraining": N,
    "file_ending": ".nii.gz"}, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, imagesTs/<case>_0000.nii.gz
    (nnUNetv2_convert_MSD_dataset keeps the MSD task number: Task07_Pancreas -> Dataset007_Pancreas)."""
    ds = root / "Dataset007_Pancreas"
    for i in range(3):
        write_case(ds / f"imagesTr/pancreas_{i}_0000.nii.gz", ds / f"labelsTr/pancreas_{i}.nii.gz", 20 + i,
                   {1: "pancreas"})
    write_case(ds / "imagesTs/pancreas_9_0000.nii.gz", None, 29, {})
    _dataset_json(ds / "dataset.json", {"channel_names": {"0": "CT"},
                                        "labels": {"background": 0, "pancreas": 1, "tumor": 2},
                                        "numTraining": 3, "file_ending": ".nii.gz"})
    return ds, {"dataset": "MSD-Task07-Pancreas", "training": 3, "test": 1}


def fake_totalsegmentator(root: Path) -> tuple[Path, dict]:
    """TotalSegmentator v2 dataset (Wasserthal et al., Radiol. AI 2023; zenodo 10047292 README): sXXXX/ct.nii.gz,
    sXXXX/segmentations/<class>.nii.gz, one binary mask per class (all 117, empty when absent), and meta.csv,
    ';'-separated, with columns image_id;age;gender;institute;study_type;split;... and split train/val/test."""
    ts = root / "Totalsegmentator_dataset_v201"
    rows = ["image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp;pathology;"
            "pathology_location"]
    for i, split in enumerate(("train", "train", "val")):
        case = ts / f"s{i:04d}"
        phantom = render_phantom((11, 40 + i), Grid.make(GRID_MM))
        write_nifti(phantom.image, phantom.affine, case / "ct.nii.gz")
        full = relabel(phantom, {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "aorta"})
        for name in TOTALSEG_V2_CLASSES:
            organ = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "aorta": 5}.get(name)
            mask = (full == organ) if organ else np.zeros_like(full, dtype=bool)
            write_nifti(mask.astype(np.uint8), phantom.affine, case / "segmentations" / f"{name}.nii.gz")
        rows.append(f"s{i:04d};60;m;A;ct abdomen;{split};Siemens;X;120;no_pathology;")
    (ts / "meta.csv").write_text("\n".join(rows) + "\n")
    return ts, {"dataset": "TotalSegmentator", "training": 2, "validation": 1}


def fake_btcv(root: Path) -> tuple[Path, dict]:
    """BTCV ("Multi-Atlas Labeling Beyond the Cranial Vault", Synapse syn3193805, RawData.zip):
    RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz, RawData/Testing/img/img0061.nii.gz;
    labels 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
    9 IVC, 10 portal and splenic vein, 11 pancreas, 12 right adrenal, 13 left adrenal."""
    raw = root / "Abdomen" / "RawData"
    organs = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 6: "liver", 7: "stomach",
              8: "aorta", 11: "pancreas"}
    for n in (1, 2, 3):
        write_case(raw / f"Training/img/img{n:04d}.nii.gz", raw / f"Training/label/label{n:04d}.nii.gz", 50 + n, organs)
    write_case(raw / "Testing/img/img0061.nii.gz", None, 61, {})
    return root / "Abdomen", {"dataset": "BTCV", "training": 3, "test": 1}


def fake_amos(root: Path) -> tuple[Path, dict]:
    """AMOS22 (Ji et al., NeurIPS 2022, arXiv 2206.08023; zenodo 7155725): amos22/dataset.json with the AMOS
    label list (its spellings "arota", "postcava", "prostate/uterus" included), "training" and "validation"
    lists over imagesTr/labelsTr and imagesVa/labelsVa; ids 0001-0500 are CT, ids above 500 MRI."""
    amos = root / "amos22"
    organs = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 6: "liver", 7: "stomach",
              8: "aorta", 10: "pancreas"}
    training, validation = [], []
    for n, folder, out in ((1, "Tr", training), (5, "Tr", training), (507, "Tr", training), (8, "Va", validation)):
        write_case(amos / f"images{folder}/amos_{n:04d}.nii.gz", amos / f"labels{folder}/amos_{n:04d}.nii.gz",
                   30 + n, organs)
        out.append({"image": f"./images{folder}/amos_{n:04d}.nii.gz", "label": f"./labels{folder}/amos_{n:04d}.nii.gz"})
    labels = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
              "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
              "prostate/uterus"]
    _dataset_json(amos / "dataset.json", {
        "name": "AMOS", "description": "MICCAI2022 Multi-Modality Abdominal Multi-Organ Segmentation Challenge",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {str(i): n for i, n in enumerate(labels)},
        "numTraining": 3, "numValidation": 1, "numTest": 0, "training": training, "validation": validation,
        "test": []})
    return amos, {"dataset": "AMOS22", "training": 2, "validation": 1}


def fake_kits(root: Path) -> tuple[Path, dict]:
    """KiTS19 (github.com/neheller/kits19 README): data/case_00000/imaging.nii.gz and segmentation.nii.gz
    (0 background, 1 kidney, 2 tumor) for cases 0-209; the test cases 210-299 have imaging.nii.gz only."""
    data = root / "kits19" / "data"
    for n in (0, 1, 2):
        write_case(data / f"case_{n:05d}/imaging.nii.gz", data / f"case_{n:05d}/segmentation.nii.gz", 70 + n,
                   {1: "kidney_right", 2: "kidney_tumour"})
        # one kidney label for both sides: relabel gives the left kidney id 0 above, so add it
        seg = data / f"case_{n:05d}/segmentation.nii.gz"
        phantom = render_phantom((11, 70 + n), Grid.make(GRID_MM))
        both = relabel(phantom, {1: "kidney_right", 3: "kidney_left", 2: "kidney_tumour"})
        write_nifti(np.where(both == 3, 1, both), phantom.affine, seg, dtype=np.uint8)
    write_case(data / "case_00210/imaging.nii.gz", None, 80, {})
    return root / "kits19", {"dataset": "KiTS19", "training": 3, "test": 1, "args": ["--dataset", "KiTS19"]}


def fake_word(root: Path) -> tuple[Path, dict]:
    """WORD (Luo et al., Med. Image Anal. 2022; github.com/HiLab-git/WORD README): WORD-V0.1.0/imagesTr, labelsTr,
    imagesVal, labelsVal, imagesTs, labelsTs with word_0001.nii.gz names; labels 1 liver, 2 spleen,
    3 left kidney, 4 right kidney, 5 stomach, 6 gallbladder, 7 esophagus, 8 pancreas, 9 duodenum, 10 colon,
    11 intestine, 12 adrenal, 13 rectum, 14 bladder, 15 head of femur left, 16 head of femur right."""
    word = root / "WORD-V0.1.0"
    organs = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "stomach", 6: "gallbladder",
              8: "pancreas"}
    for n, tr, lb in ((1, "imagesTr", "labelsTr"), (2, "imagesTr", "labelsTr"), (3, "imagesVal", "labelsVal"),
                      (4, "imagesTs", "labelsTs")):
        write_case(word / f"{tr}/word_{n:04d}.nii.gz", word / f"{lb}/word_{n:04d}.nii.gz", 90 + n, organs)
    return word, {"dataset": "WORD", "training": 2, "validation": 1, "test": 1}


def fake_flare22(root: Path) -> tuple[Path, dict]:
    """FLARE22 (flare22.grand-challenge.org, Dataset page): FLARE22Train/images/FLARE22_Tr_0001_0000.nii.gz with
    FLARE22Train/labels/FLARE22_Tr_0001.nii.gz; labels 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta,
    6 IVC, 7 right adrenal, 8 left adrenal, 9 gallbladder, 10 esophagus, 11 stomach, 12 duodenum, 13 left kidney."""
    base = root / "FLARE22Train"
    organs = {1: "liver", 2: "kidney_right", 3: "spleen", 4: "pancreas", 5: "aorta", 9: "gallbladder",
              11: "stomach", 13: "kidney_left"}
    for n in (1, 2, 3):
        write_case(base / f"images/FLARE22_Tr_{n:04d}_0000.nii.gz", base / f"labels/FLARE22_Tr_{n:04d}.nii.gz",
                   100 + n, organs)
    return root, {"dataset": "FLARE22", "training": 3}


def fake_abdomenct1k(root: Path) -> tuple[Path, dict]:
    """AbdomenCT-1K (Ma et al., TPAMI 2022; github.com/JunMa11/AbdomenCT-1K README): CTs Case_00001_0000.nii.gz in
    AbdomenCT-1K-ImagePart1..3/, masks Case_00001.nii.gz in Mask/; labels 1 liver, 2 kidney, 3 spleen, 4 pancreas."""
    base = root / "AbdomenCT-1K"
    for n, part in ((1, 1), (2, 1), (3, 2)):
        phantom = render_phantom((11, 110 + n), Grid.make(GRID_MM))
        write_nifti(phantom.image, phantom.affine, base / f"AbdomenCT-1K-ImagePart{part}/Case_{n:05d}_0000.nii.gz")
        both = relabel(phantom, {1: "liver", 2: "kidney_right", 5: "kidney_left", 3: "spleen", 4: "pancreas"})
        write_nifti(np.where(both == 5, 2, both), phantom.affine, base / f"Mask/Case_{n:05d}.nii.gz", dtype=np.uint8)
    return base, {"dataset": "AbdomenCT-1K", "training": 3}


def fake_ctorg(root: Path) -> tuple[Path, dict]:
    """CT-ORG (Rister et al., Sci. Data 2020; TCIA CT-ORG page): OrganSegmentations/volume-N.nii.gz with
    labels-N.nii.gz; labels 1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain."""
    base = root / "CT-ORG" / "OrganSegmentations"
    for n in (0, 1, 2):
        phantom = render_phantom((11, 120 + n), Grid.make(GRID_MM))
        write_nifti(phantom.image, phantom.affine, base / f"volume-{n}.nii.gz")
        both = relabel(phantom, {1: "liver", 4: "kidney_right", 7: "kidney_left"})
        write_nifti(np.where(both == 7, 4, both), phantom.affine, base / f"labels-{n}.nii.gz", dtype=np.uint8)
    return root / "CT-ORG", {"dataset": "CT-ORG", "training": 3}


def fake_lits(root: Path) -> tuple[Path, dict]:
    """LiTS (Bilic et al., Med. Image Anal. 2023, arXiv 1901.04056; CodaLab competition 17094): uncompressed
    NIfTI "Training Batch 1/volume-0.nii" with "segmentation-0.nii" (0 background, 1 liver, 2 tumour), cases
    0-27 in batch 1 and 28-130 in batch 2; test volumes test-volume-N.nii."""
    base = root / "LITS17"
    for n, batch in ((0, 1), (1, 1), (28, 2)):
        write_case(base / f"Training Batch {batch}/volume-{n}.nii", base / f"Training Batch {batch}/segmentation-{n}.nii",
                   130 + n, {1: "liver", 2: "liver_tumour"})
    write_case(base / "Testing/test-volume-0.nii", None, 139, {})
    return base, {"dataset": "LiTS", "training": 3, "test": 1}


def fake_folders(root: Path) -> tuple[Path, dict]:
    """The generic form (docs/data.md): images/, labels/ and labels.yaml naming the dataset and its labels."""
    base = root / "hospital"
    for n, case in enumerate(("case_a", "case_b", "case_c")):
        write_case(base / f"images/{case}.nii.gz", base / f"labels/{case}.nii.gz", 140 + n,
                   {1: "liver", 2: "liver_tumour", 3: "spleen"})
    (base / "labels.yaml").write_text("dataset: hospital-liver\nlabels:\n  1: liver\n  2: liver tumor\n  3: spleen\n"
                                      "validation: [case_c]\n")
    return base, {"dataset": "hospital-liver", "training": 2, "validation": 1}


FAKES = {"msd": fake_msd, "nnunet": fake_nnunet, "totalsegmentator": fake_totalsegmentator, "btcv": fake_btcv,
         "amos": fake_amos, "kits": fake_kits, "word": fake_word, "flare22": fake_flare22,
         "abdomenct1k": fake_abdomenct1k, "ctorg": fake_ctorg, "lits": fake_lits, "folders": fake_folders}


def test_every_format_has_a_fake_copy_and_a_cli_choice():
    from medmoe.cli.seg_datasets import IMPORT_FORMATS as CLI_FORMATS

    assert set(FAKES) == set(IMPORT_FORMATS) == set(CLI_FORMATS)


def _import(fmt: str, root: Path, out: Path, *extra: str) -> tuple[int, dict]:
    src, expected = FAKES[fmt](root)
    rc = main(["seg", "import", fmt, str(src), "--out", str(out), "--no-progress", *expected.get("args", []), *extra])
    return rc, expected


def _split_counts(datalist: Path) -> dict[str, int]:
    doc = json.loads(datalist.read_text())
    return {s: len(doc[s]) for s in ("training", "validation", "test") if doc.get(s)}


def _train(datalist: Path, tmp_path: Path, *extra: str) -> int:
    return main(["seg", "train", "--data", str(datalist), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch-size", "2", "--spacing", *TRAIN_SPACING, "--patch-size", "32", "32", "32", "--workers", "0",
                 "--set", "text.model=tiny-bert", "--no-pretrained", "--val-max-cases", "1", "--warmup-steps", "1",
                 "--no-progress", "--cache-dir", str(tmp_path / "cache"), *extra])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_imported_dataset_has_its_name_splits_and_passes_check(fmt, tmp_path, capsys):
    out = tmp_path / "lists" / "datalist.json"
    rc, expected = _import(fmt, tmp_path / "download", out)
    assert rc == 0
    assert f"{expected['dataset']}:" in capsys.readouterr().out
    datalist = load_datalist(out)
    assert datalist.datasets == [expected["dataset"]]
    assert _split_counts(out) == {k: v for k, v in expected.items() if k in ("training", "validation", "test")}
    for entries in datalist.splits.values():
        for e in entries:
            assert Path(e["image"]).is_file() and not Path(e["image"]).name.startswith("._")
    assert main(["seg", "check", str(out), "--no-progress"]) == 0
    assert f"{sum(_split_counts(out).values())} case(s): " in (printed := capsys.readouterr().out)
    assert "0 with errors" in printed


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_imported_dataset_trains(fmt, tmp_path, capsys):
    out = tmp_path / "lists" / "datalist.json"
    rc, expected = _import(fmt, tmp_path / "download", out)
    assert rc == 0
    # a dataset without a validation split validates on its training cases
    assert _train(out, tmp_path, *([] if "validation" in expected else ["--val-split", "training"])) == 0
    assert "trained 3 steps" in capsys.readouterr().out


COMBINED = list(IMPORT_FORMATS)


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """One datalist built with `seg import --append` from the fake copy of every format."""
    root = tmp_path_factory.mktemp("combined")
    out = root / "datalist.json"
    for i, fmt in enumerate(COMBINED):
        src, expected = FAKES[fmt](root / fmt)
        argv = ["seg", "import", fmt, str(src), "--out", str(out), "--no-progress", *expected.get("args", [])]
        assert main(argv + (["--append"] if i else [])) == 0
    return out


def test_combined_datalist_classes_are_the_union_with_partial_labels(combined):
    from medmoe.seg.task import SegTask, SegTaskConfig

    datalist = load_datalist(combined)
    template = datalist.template  # the packaged maps and the datalist's own (hospital-liver)
    assert len(datalist.datasets) == len(COMBINED)
    union = set().union(*(template.labelled_classes(d) for d in datalist.datasets))
    task = SegTask(SegTaskConfig(data=str(combined), patch_size=(32, 32, 32), spacing=(12.0, 12.0, 12.0),
                                 progress=False, pretrained=False, cache=False,
                                 overrides={"text": {"model": "tiny-bert"}}))
    ds = task.train_dataset()
    assert set(task.class_names) == union
    labelled = {d: {c for c, m in zip(task.class_names, ds.masks[d].tolist()) if m} for d in datalist.datasets}
    assert "liver_tumour" in labelled["MSD-Task03-Liver"] and "liver_tumour" in labelled["LiTS"]
    assert labelled["MSD-Task07-Pancreas"] == {"pancreas", "pancreas_tumour"}
    assert "liver_tumour" in labelled["hospital-liver"] and "liver_tumour" not in labelled["BTCV"]
    assert "kidney_tumour" in labelled["KiTS19"] and "kidney_cyst" not in labelled["KiTS19"]
    assert "rib_left_1" in labelled["TotalSegmentator"] and "rib_left_1" not in labelled["WORD"]
    assert "duodenum" in labelled["AMOS22"] and "duodenum" in labelled["FLARE22"] and "duodenum" not in labelled["BTCV"]
    assert labelled["AbdomenCT-1K"] == {"liver", "kidney", "spleen", "pancreas"}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_combined_datalist_of_every_format_passes_check_and_trains(combined, tmp_path, capsys):
    """Every format's cases are read by `seg check` and preprocessed by `seg train`, which takes 3 steps."""
    assert main(["seg", "check", str(combined), "--no-progress", "--workers", "2"]) == 0
    assert "0 with errors" in capsys.readouterr().out
    assert _train(combined, tmp_path) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    built = list((tmp_path / "cache").rglob("meta.json"))  # one per preprocessed volume
    assert len(built) >= len(load_datalist(combined).entries("training"))


def test_a_dataset_json_label_that_differs_from_the_map_stops_the_import(tmp_path):
    task, _ = fake_msd(tmp_path)
    doc = json.loads((task / "dataset.json").read_text())
    doc["labels"] = {"0": "background", "1": "cancer", "2": "liver"}  # ids swapped
    (task / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match=r"label 1 is 'cancer', but the MSD-Task03-Liver label map has 1 = 'liver'"):
        import_dataset("msd", task)
    doc["labels"] = {"0": "background", "1": "liver"}
    (task / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match=r"lists no label 2 \('liver_tumour'\)"):
        import_dataset("msd", task)


def test_an_mri_decathlon_task_is_refused(tmp_path):
    task, _ = fake_msd(tmp_path)
    doc = json.loads((task / "dataset.json").read_text())
    doc["modality"] = {"0": "FLAIR", "1": "T1w"}
    (task / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="single-channel CT"):
        import_dataset("msd", task)


def test_an_nnunet_dataset_the_template_lacks_gets_its_own_label_map(tmp_path):
    ds, _ = fake_nnunet(tmp_path)
    own = ds.rename(tmp_path / "Dataset501_Hospital")  # a dataset number no MSD task has
    doc = json.loads((own / "dataset.json").read_text())
    doc["labels"] = {"background": 0, "liver": 1, "spleen": 2}
    (own / "dataset.json").write_text(json.dumps(doc))
    imported = import_dataset("nnunet", own)
    assert imported.dataset == "Dataset501_Hospital"
    assert imported.label_maps == {"Dataset501_Hospital": {"1": "liver", "2": "spleen"}}
    doc["numTraining"] = 5
    (own / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="numTraining is 5 but .* holds 3 cases"):
        import_dataset("nnunet", own)


def test_kits19_and_kits23_layouts_need_the_dataset_named(tmp_path):
    root, _ = fake_kits(tmp_path)
    with pytest.raises(InvalidInputError, match="--dataset KiTS19 or --dataset KiTS"):
        import_dataset("kits", root)
    assert import_dataset("kits", root, dataset="kits19").dataset == "KiTS19"


def test_totalsegmentator_masks_are_combined_once_resumed_and_rebuilt_when_changed(tmp_path):
    ts, _ = fake_totalsegmentator(tmp_path)
    cache = tmp_path / "labels"
    first = import_dataset("totalsegmentator", ts, cache=cache, progress=False, workers=2)
    assert first.notes == [f"label maps in {cache}: 3 built, 0 already there"]
    ids = {cls: i for i, cls in ClassTemplate.default().label_map("TotalSegmentator").items()}
    label = np.asarray(nib.load(str(cache / "s0000.nii.gz")).dataobj)
    liver = np.asarray(nib.load(str(ts / "s0000/segmentations/liver.nii.gz")).dataobj) > 0
    spleen = np.asarray(nib.load(str(ts / "s0000/segmentations/spleen.nii.gz")).dataobj) > 0
    assert liver.any() and (label[liver] == ids["liver"]).all() and (label[spleen] == ids["spleen"]).all()
    assert set(np.unique(label)) == {0, ids["liver"], ids["spleen"], ids["kidney_right"], ids["kidney_left"],
                                     ids["aorta"]}
    assert not list(cache.glob("*.tmp*"))
    again = import_dataset("totalsegmentator", ts, cache=cache, progress=False)
    assert again.notes == [f"label maps in {cache}: 0 built, 3 already there"]
    mask = ts / "s0001/segmentations/colon.nii.gz"
    image = nib.load(str(mask))
    data = np.asarray(image.dataobj).copy()
    data[:2, :2, :2] = 1
    write_nifti(data, image.affine, mask, dtype=np.uint8)
    rebuilt = import_dataset("totalsegmentator", ts, cache=cache, progress=False)
    assert rebuilt.notes == [f"label maps in {cache}: 1 built, 2 already there"]
    assert (np.asarray(nib.load(str(cache / "s0001.nii.gz")).dataobj)[:2, :2, :2] > 0).all()
    (ts / "s0002/segmentations/rib_left_7.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match=r"s0002/segmentations: no mask of 'rib_left_7'"):
        import_dataset("totalsegmentator", ts, cache=cache, progress=False)


def test_append_adds_a_dataset_once(tmp_path):
    out = tmp_path / "datalist.json"
    btcv, _ = fake_btcv(tmp_path / "a")
    word, _ = fake_word(tmp_path / "b")
    assert main(["seg", "import", "btcv", str(btcv), "--out", str(out), "--no-progress"]) == 0
    assert main(["seg", "import", "btcv", str(btcv), "--out", str(out), "--no-progress"]) == 1  # exists, no --append
    assert main(["seg", "import", "word", str(word), "--out", str(out), "--append", "--no-progress"]) == 0
    assert load_datalist(out).datasets == ["BTCV", "WORD"]
    assert main(["seg", "import", "word", str(word), "--out", str(out), "--append", "--no-progress"]) == 1
    assert load_datalist(out).datasets == ["BTCV", "WORD"]


# The label lists the downloads ship (each task's dataset.json in the MSD tars; KiTS23's kits23 repository
# README), as written there: each must agree with the dataset's map, so importing them does not stop.
PUBLISHED_LABELS = {
    "MSD-Task06-Lung": {0: "background", 1: "cancer"},
    "MSD-Task07-Pancreas": {0: "background", 1: "pancreas", 2: "cancer"},
    "MSD-Task08-HepaticVessel": {0: "background", 1: "Vessel", 2: "Tumour"},
    "MSD-Task09-Spleen": {0: "background", 1: "spleen"},
    "MSD-Task10-Colon": {0: "background", 1: "colon cancer primaries"},
    "KiTS": {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"},
}


@pytest.mark.parametrize("dataset", PUBLISHED_LABELS)
def test_published_label_lists_agree_with_their_maps(dataset):
    check_label_list(ClassTemplate.default(), dataset, PUBLISHED_LABELS[dataset], "dataset.json")


@pytest.mark.parametrize(("dataset", "labels", "message"), [
    ("BTCV", {1: "spleen", 2: "left kidney", 3: "right kidney"}, "label 2 is 'left kidney'"),
    ("MSD-Task07-Pancreas", {1: "cancer", 2: "pancreas"}, "label 1 is 'cancer'"),
    ("MSD-Task09-Spleen", {1: "spleen", 2: "cancer"}, "label 2 ('cancer') is not in the MSD-Task09-Spleen label map"),
])
def test_a_label_list_that_differs_names_the_label(dataset, labels, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        check_label_list(ClassTemplate.default(), dataset, labels, "dataset.json")
