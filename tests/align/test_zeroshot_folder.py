"""`medmoe align zeroshot`: a folder (or manifest) of images classified against class names, into a CSV."""

import csv
import json
import shutil

import pytest
import torch
from testkit.align import tiny_model, write_tiny_manifest

from medmoe.align.folder import class_prompts, list_images, zero_shot_folder
from medmoe.align.zeroshot import ZeroShotClassifier, label_prompts
from medmoe.cli.main import main as cli
from medmoe.data.readers import read_image
from medmoe.data.transforms import ImageTransform
from medmoe.errors import InvalidInputError


@pytest.fixture
def folder(tmp_path):
    """The tiny manifest's 16 PNGs and its corrupt one, with two images moved into a sub-folder, plus
    files that are not images (a text file, a hidden file)."""
    root = tmp_path / "images"
    root.mkdir()
    write_tiny_manifest(root, n_per_modality=8)
    (root / "manifest.csv").unlink()
    (root / "sub").mkdir()
    shutil.move(root / "ct_00.png", root / "sub" / "ct_00.png")
    shutil.move(root / "xray_01.png", root / "sub" / "xray_01.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model().save_pretrained(path)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_is_walked_recursively_for_image_files_only(folder):
    names = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert len(names) == 17  # 16 images + the corrupt PNG, by suffix
    assert "sub/ct_00.png" in names and "sub/xray_01.png" in names
    assert "notes.txt" not in names and ".hidden.png" not in names
    assert names == sorted(names[:-2]) + ["sub/ct_00.png", "sub/xray_01.png"]


def test_csv_has_probabilities_top_class_and_expert_and_lists_the_corrupt_file(folder, tmp_path):
    model = tiny_model().eval()
    prompts = {"effusion": ["pleural effusion.", "fluid at the lung base."], "nodule": ["a small nodule."],
               "normal": ["no finding."]}
    out = tmp_path / "preds.csv"
    result = zero_shot_folder(model, folder, prompts, out, batch_size=5, progress=False)
    rows = read_csv(out)
    assert result.n == len(rows) == 16
    assert [e[0] for e in result.errors] == [str((folder / "broken.png").resolve())]
    assert "CorruptFileError" in result.errors[0][1]
    assert read_csv(result.errors_out) == [{"path": result.errors[0][0], "reason": result.errors[0][1]}]
    assert list(rows[0]) == ["path", "top_class", "top_prob", "expert", "expert_prob", "effusion", "nodule", "normal"]

    # every row equals the library computation on that one image
    clf = ZeroShotClassifier.from_prompts(model, prompts)
    transform = ImageTransform(image_size=64)
    row = next(r for r in rows if r["path"].endswith("sub/ct_00.png"))
    image = transform(read_image(row["path"], target_size=transform.decode_size)[0])[None]
    with torch.no_grad():
        features = model.image_features(image)
        probs = (model.logit_scale * clf.logits(features["image_embeds"])).softmax(-1)[0]
    assert [float(row[c]) for c in prompts] == pytest.approx(probs.tolist(), abs=2e-6)
    assert row["top_class"] == list(prompts)[int(probs.argmax())]
    assert float(row["top_prob"]) == pytest.approx(float(probs.max()), abs=2e-6)
    assert int(row["expert"]) == int(features["expert_index"][0])
    for r in rows:
        assert sum(float(r[c]) for c in prompts) == pytest.approx(1.0, abs=1e-4)
        assert float(r["top_prob"]) == max(float(r[c]) for c in prompts)
    assert sum(result.counts.values()) == 16


def test_cli_over_a_manifest_with_a_classes_file_prints_the_unreadable_file(folder, model_dir, tmp_path, capsys):
    manifest = write_tiny_manifest(tmp_path, n_per_modality=4)
    classes = tmp_path / "classes.yaml"
    classes.write_text("effusion: [pleural effusion., fluid in the pleural space.]\nnormal: no finding.\n")
    out = tmp_path / "out" / "preds.csv"
    assert cli(["align", "zeroshot", "--model", str(model_dir), "--images", str(manifest), "--classes-file",
                str(classes), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 images classified" in printed and "1 unreadable" in printed and "broken.png" in printed
    rows = read_csv(out)
    assert len(rows) == 8 and set(rows[0]) >= {"effusion", "normal"}
    assert (tmp_path / "out" / "preds.errors.csv").is_file()

    # the folder with --classes: same model, default templates; a clean folder leaves no errors file
    (folder / "broken.png").unlink()
    assert cli(["align", "zeroshot", "--model", str(model_dir), "--images", str(folder), "--classes",
                "effusion, normal", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert len(read_csv(out)) == 16
    assert not (tmp_path / "out" / "preds.errors.csv").exists()


def test_class_prompts_from_names_text_and_json_files(tmp_path):
    assert class_prompts("a_b, c") == label_prompts(["a_b", "c"])
    lines = tmp_path / "classes.txt"
    lines.write_text("# findings\neffusion\n\npneumothorax  # collapsed lung\n")
    assert list(class_prompts(classes_file=lines)) == ["effusion", "pneumothorax"]
    as_json = tmp_path / "classes.json"
    as_json.write_text(json.dumps({"x": ["one.", "two."], "y": "three."}))
    assert class_prompts(classes_file=as_json) == {"x": ["one.", "two."], "y": ["three."]}


@pytest.mark.parametrize("text, message", [
    ("[a, b]", "expected a mapping"),
    ("a: []\nb: [x]", "class 'a' needs a prompt"),
    ("a: [x\n", "not valid YAML"),
    ("a: x\n", "at least two classes"),
    ("path: x\nb: y\n", "clash with the CSV columns"),
])
def test_bad_classes_files_are_one_line_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=message) as err:
        class_prompts(classes_file=path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_name_the_path(tmp_path, model_dir, capsys):
    missing = tmp_path / "nowhere"
    assert cli(["align", "zeroshot", "--model", str(model_dir), "--images", str(missing), "--classes", "a,b",
                "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 1
    assert f"{missing}: no such folder or manifest" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["align", "zeroshot", "--model", str(model_dir), "--images", str(empty), "--classes", "a,b",
                "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 1
    assert f"{empty}: no image file" in capsys.readouterr().err
    assert cli(["align", "zeroshot", "--model", str(model_dir), "--images", str(empty), "--classes", "a,a",
                "--out", str(tmp_path / "p.csv")]) == 1
    assert "['a'] given more than once" in capsys.readouterr().err
