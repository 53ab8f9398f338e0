"""The papers' protocols end to end: zero-shot and probe suites on fake public layouts, the tables, the CLI."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from testkit.align import tiny_model

from medmoe.align.probe import linear_probe
from medmoe.align.suites import (
    EVAL_SETS,
    embed_rows,
    format_probe_table,
    format_zeroshot_table,
    load_set,
    run_probe_suite,
    run_zeroshot_suite,
    write_suite_json,
)
from medmoe.align.zeroshot import ZeroShotClassifier
from medmoe.cli.align_benchmark import add_benchmark_command
from medmoe.errors import InvalidInputError

pytestmark = pytest.mark.timeout(120)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format="PNG")


def _busi_fold(busi, n: int):
    """RadImageNet's breast test fold (github.com/BMEII-AI/RadImageNet, breast/dataframe/), which the
    busi adapter splits BUSI by: ``filename,label`` rows naming ``images/<BUSI file name>``."""
    lines = ["filename,label"] + [f"images/{label} ({i}).png,{label}" for label in ("benign", "malignant")
                                  for i in range(1, n + 1)]
    (busi / "dataframe").mkdir(parents=True, exist_ok=True)
    (busi / "dataframe" / "breast_test_fold1.csv").write_text("\n".join(lines) + "\n")


def _fake_root(root):
    """Tiny copies of three public layouts: BUSI, MedMNIST OrganAMNIST and UniMed-CLIP's thyroid folds."""
    rng = np.random.default_rng(0)
    for label, value in (("benign", 60), ("malignant", 190)):
        for i in range(1, 5):
            _png(root / "busi" / "Dataset_BUSI_with_GT" / label / f"{label} ({i}).png",
                 np.clip(value + 30 * rng.standard_normal((40, 48)), 0, 255))
            _png(root / "busi" / "Dataset_BUSI_with_GT" / label / f"{label} ({i})_mask.png", np.full((40, 48), 255))
    _busi_fold(root / "busi", 4)
    arrays = {}
    for split, n in (("train", 33), ("test", 11)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 11).reshape(-1, 1)
    (root / "medmnist").mkdir(parents=True)
    np.savez(root / "medmnist" / "organamnist.npz", **arrays)
    for split, n in (("train", 12), ("test", 6)):
        lines = ["image,label"]
        for i in range(n):
            label = ("benign", "malignant")[i % 2]
            _png(root / "thyroid_us" / "img" / f"{split}{i}.png", np.full((32, 32), 50 + 150 * (i % 2)))
            lines.append(f"img/{split}{i}.png,{label}")
        (root / "thyroid_us" / f"thyroid_{split}_fold1.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _fake_root(tmp_path_factory.mktemp("suites") / "eval")


@pytest.fixture(scope="module")
def thyroid(model, root):
    """The thyroid set's train and test embeddings, computed once outside the suites."""
    rows = load_set(EVAL_SETS["thyroid-us"], root)
    return {split: embed_rows(model, [r for r in rows if r.split == split], batch_size=64, progress=False)
            for split in ("train", "test")}


def test_zeroshot_suite_matches_a_direct_computation_and_lists_missing_sets(model, root, thyroid):
    result = run_zeroshot_suite(model, root, ["thyroid-us", "ct-axial", "rsna-pneumonia"], batch_size=8,
                                progress=False)
    assert set(result["sets"]) == {"thyroid-us", "ct-axial"}
    assert "rsna-pneumonia" in result["missing"] and "rsna" in result["missing"]["rsna-pneumonia"]
    spec = EVAL_SETS["thyroid-us"]
    with torch.no_grad():
        classifier = ZeroShotClassifier.from_prompts(model, {c: list(p) for c, p in spec.prompts.items()})
        predicted = classifier.logits(thyroid["test"].image_embeds).argmax(dim=1).tolist()
    direct = np.mean([spec.classes[p] == labels[0] for p, labels in zip(predicted, thyroid["test"].labels)])
    assert result["sets"]["thyroid-us"]["accuracy"] == pytest.approx(direct)
    assert thyroid["test"].text_embeds.shape == (len(thyroid["test"].labels), 0)  # empty reports not encoded
    assert result["sets"]["thyroid-us"]["n"] == 6 and result["sets"]["thyroid-us"]["n_unreadable"] == 0
    axial = result["sets"]["ct-axial"]
    assert axial["n"] == 11 and axial["accuracy"] * 11 == pytest.approx(round(axial["accuracy"] * 11))
    assert result["mean_accuracy"] == pytest.approx(np.mean([e["accuracy"] for e in result["sets"].values()]))
    table = format_zeroshot_table(result, label="tiny")
    assert "MedMoE, arXiv 2506.08356, Table 1" in table and "66.03" in table
    tiny_row = next(line for line in table.splitlines() if line.startswith("tiny"))
    assert f"{100 * result['sets']['ct-axial']['accuracy']:.2f}" in tiny_row
    assert "not run: rsna-pneumonia" in table


def test_zeroshot_suite_without_any_set_is_an_error(model, tmp_path):
    with pytest.raises(InvalidInputError, match="none of the evaluation sets"):
        run_zeroshot_suite(model, tmp_path, progress=False)
    with pytest.raises(InvalidInputError, match="'ct-transverse'"):
        run_zeroshot_suite(model, tmp_path, "ct-transverse", progress=False)


def test_ct_axial_reads_unimed_clips_organs_axial_folder(model, tmp_path):
    """UniMed-CLIP's evaluation download keeps the axial organ set as ``organs_axial/annotations.csv`` (image path
    in column 0, label in column 2, a ``split`` column; read by position as its ``clipeval/datasets.py`` does)."""
    folder = tmp_path / "organs_axial"
    rows = ["image,case,label,split"]
    for i, label in enumerate(["liver", "spleen", "liver", "spleen"]):
        _png(folder / "images" / f"{i}.png", np.full((28, 28), 60 * i))
        rows.append(f"images/{i}.png,case{i},{label},test")
    (folder / "annotations.csv").write_text("\n".join(rows) + "\n")
    result = run_zeroshot_suite(model, tmp_path, ["ct-axial"], batch_size=4, progress=False)
    assert list(result["sets"]) == ["ct-axial"] and result["sets"]["ct-axial"]["n"] == 4


def test_a_set_whose_images_all_fail_is_listed_and_the_others_still_run(model, root, tmp_path):
    shutil.copytree(root / "thyroid_us", tmp_path / "thyroid_us")
    for label in ("benign", "malignant"):
        for i in range(1, 7):
            path = tmp_path / "busi" / "Dataset_BUSI_with_GT" / label / f"{label} ({i}).png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG\r\n not an image")
    _busi_fold(tmp_path / "busi", 6)
    result = run_zeroshot_suite(model, tmp_path, ["breast-us", "thyroid-us"], progress=False)
    assert list(result["sets"]) == ["thyroid-us"]
    assert "could be loaded" in result["missing"]["breast-us"]
    with pytest.raises(InvalidInputError, match="no evaluation set could be evaluated.*breast-us"):
        run_zeroshot_suite(model, tmp_path, ["breast-us"], progress=False)


def test_probe_suite_averages_seeds_and_fits_the_full_set_once(model, root, thyroid, tmp_path):
    result = run_probe_suite(model, root, ["thyroid-us"], fractions=(0.5, 1.0), seeds=(0, 1), batch_size=16,
                             progress=False)
    assert set(result["sets"]) == {"thyroid-us"} and result["seeds"] == [0, 1]
    entry = result["sets"]["thyroid-us"]
    assert (entry["n_train"], entry["n_test"]) == (12, 6)
    assert len(entry["fractions"]["50%"]["runs"]) == 2 and len(entry["fractions"]["100%"]["runs"]) == 1
    train, test = thyroid["train"], thyroid["test"]
    direct = [linear_probe(train.image_embeds.numpy(), [s[0] for s in train.labels], test.image_embeds.numpy(),
                           [s[0] for s in test.labels], fractions=(0.5, 1.0), seed=seed) for seed in (0, 1)]
    assert entry["fractions"]["50%"]["accuracy"] == pytest.approx(np.mean([d["50%"]["accuracy"] for d in direct]))
    assert entry["fractions"]["100%"]["accuracy"] == pytest.approx(direct[0]["100%"]["accuracy"])
    table = format_probe_table(result, label="tiny")
    assert "Table 2" in table and "73.99" in table and "12 / 6" in table
    out = write_suite_json(result, tmp_path / "probe.json", model="tiny")
    saved = json.loads(out.read_text())
    assert saved["paper"]["rows"]["thyroid-us"]["100%"] == 79.83 and saved["model"] == "tiny"


def test_benchmark_command(model, root, tmp_path, capsys):
    folder = model.save_pretrained(tmp_path / "tiny")
    parser = argparse.ArgumentParser(prog="medmoe align")
    add_benchmark_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "zs.json"
    args = parser.parse_args(["benchmark", "--suite", "zeroshot", "--root", str(root), "--model", str(folder),
                              "--sets", "breast-us", "--out", str(out), "--device", "cpu",
                              "--batch-size", "8", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["suite"] == "zeroshot" and set(saved["sets"]) == {"breast-us"}
    assert saved["paper"]["citation"] == "MedMoE, arXiv 2506.08356, Table 1"
    assert "UniMed-CLIP" in printed and f"{100 * saved['sets']['breast-us']['accuracy']:.2f}" in printed
    bad = parser.parse_args(["benchmark", "--suite", "probe", "--root", str(root), "--model", str(folder),
                             "--seeds", "a,b", "--no-progress"])
    with pytest.raises(InvalidInputError, match="--seeds"):
        bad.func(bad)
    unknown = parser.parse_args(["benchmark", "--suite", "zeroshot", "--root", str(root), "--model", str(folder),
                                 "--sets", "mnist", "--no-progress"])
    with pytest.raises(InvalidInputError, match="'mnist'"):
        unknown.func(unknown)
