"""`medmoe seg benchmark`: one model over several datalists, a table per dataset and class, an overall mean."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
from testkit.seg import BandModel

import medmoe
from medmoe.cli.models import model_from_flag
from medmoe.cli.seg_benchmark import (
    add_benchmark_command,
    add_eval_spacing_argument,
    eval_spacing_lines,
    eval_spacing_of,
)
from medmoe.errors import InvalidInputError
from medmoe.seg.benchmark import benchmark, format_tables, parse_datalist_spec
from medmoe.seg.evaluate import evaluate


def _datalist(folder, dataset: str, cls: str, hu: float, splits=("test",)) -> str:
    """Two 1.5 mm CTs in air with one block of ``hu`` labelled ``cls`` (a voxel wider than the block)."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    entries = []
    for i, width in enumerate((10, 13)):
        ct = np.full((28, 24, 24), -1000.0, np.float32)
        ct[6:6 + width, 6:18, 6:18] = hu
        label = np.zeros(ct.shape, np.uint8)
        label[6:7 + width, 6:18, 6:18] = 1
        nib.save(nib.Nifti1Image(ct, affine), folder / f"ct{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / f"label{i}.nii.gz")
        entries.append({"image": f"ct{i}.nii.gz", "label": f"label{i}.nii.gz", "dataset": dataset})
    doc = {"label_maps": {dataset: {"1": cls}}, **{s: entries for s in splits}}
    (folder / "datalist.json").write_text(json.dumps(doc))
    return str(folder / "datalist.json")


@pytest.fixture
def two_datalists(tmp_path):
    return (_datalist(tmp_path / "a", "bench-liver", "liver", 60.0),
            _datalist(tmp_path / "b", "bench-kidney", "kidney_right", 150.0, splits=("validation", "test")))


def _model():
    return BandModel(roi_size=(16, 16, 16), spacing=(1.5, 1.5, 1.5), smooth=False)


def test_datalist_specs_split_on_a_known_split_name_only():
    assert parse_datalist_spec("d/list.json") == ("d/list.json", "test")
    assert parse_datalist_spec("d/list.json:validation") == ("d/list.json", "validation")
    assert parse_datalist_spec("C:/d/list.json") == ("C:/d/list.json", "test")
    with pytest.raises(InvalidInputError, match="DATALIST"):
        parse_datalist_spec(":test")


def test_benchmark_gathers_each_datalists_evaluate_report(two_datalists, tmp_path):
    liver, kidney = two_datalists
    model = _model()
    result = benchmark(model, [liver, f"{kidney}:validation"], eval_spacing=3.0, progress=False,
                       out=tmp_path / "bench.json")
    rows = {(r["dataset"], r["class"]): r for r in result["rows"]}
    assert set(rows) == {("bench-liver", "liver"), ("bench-kidney", "kidney_right")}
    assert rows[("bench-kidney", "kidney_right")]["split"] == "validation"
    # the rows are evaluate's own numbers, native and at the spacing
    alone = evaluate(model, liver, progress=False, eval_spacing=3.0)
    row = rows[("bench-liver", "liver")]
    assert row["dice"] == alone["per_class"]["liver"]["dice"] and row["cases"] == 2
    assert row["dice_at_spacing"] == alone["at_eval_spacing"]["per_class"]["liver"]["dice"]
    assert row["nsd"] == alone["per_class"]["liver"]["nsd"]
    overall = result["overall"]
    assert overall["dice"] == pytest.approx(np.mean([r["dice"] for r in rows.values()]), abs=1e-6)
    assert overall["cases"] == 4 and result["eval_spacing_mm"] == [3.0, 3.0, 3.0]
    assert json.loads((tmp_path / "bench.json").read_text())["overall"] == overall

    text = format_tables(result)
    assert "bench-liver (" in text and "bench-kidney (" in text and "dice@3mm" in text
    assert text.splitlines()[-1].startswith("overall mean")


def test_without_eval_spacing_the_spacing_columns_are_empty(two_datalists):
    result = benchmark(_model(), [two_datalists[0]], progress=False, max_cases=1)
    assert result["rows"][0]["dice_at_spacing"] is None and result["overall"]["dice_at_spacing"] is None
    assert "n/a" in format_tables(result)
    with pytest.raises(InvalidInputError, match="split"):
        benchmark(_model(), [two_datalists[0]], split="validation")
    with pytest.raises(InvalidInputError, match="no datalist"):
        benchmark(_model(), [])


def _parser():
    parser = argparse.ArgumentParser(prog="medmoe seg")
    add_benchmark_command(parser.add_subparsers(dest="seg_command"))
    return parser


def test_the_cli_command_prints_the_tables_and_writes_json(two_datalists, tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr(medmoe, "create_model", lambda path, **kw: loaded.append((path, kw)) or _model())
    folder = tmp_path / "model"
    folder.mkdir()
    out = tmp_path / "out" / "bench.json"
    args = _parser().parse_args(["benchmark", "--model", str(folder), "--data", two_datalists[0], "--data",
                                 f"{two_datalists[1]}:test", "--eval-spacing", "3", "--out", str(out),
                                 "--no-progress", "--max-cases", "1"])
    assert args.func(args) == 0
    assert loaded == [(str(folder), {"device": None, "family": "mome"})]
    printed = capsys.readouterr().out
    assert "bench-liver" in printed and "bench-kidney" in printed and "overall mean" in printed
    assert json.loads(out.read_text())["eval_spacing_mm"] == [3.0, 3.0, 3.0]


def test_eval_spacing_flag_and_model_loading_errors(monkeypatch):
    parser = argparse.ArgumentParser()
    add_eval_spacing_argument(parser)
    assert eval_spacing_of(parser.parse_args([])) is None
    assert eval_spacing_of(parser.parse_args(["--eval-spacing", "1.5"])) == (1.5, 1.5, 1.5)
    assert eval_spacing_of(parser.parse_args(["--eval-spacing", "0.8", "0.8", "2.5"])) == (0.8, 0.8, 2.5)
    with pytest.raises(InvalidInputError, match="eval spacing"):
        eval_spacing_of(parser.parse_args(["--eval-spacing", "1", "2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-spacing", "-1"])
    with pytest.raises(InvalidInputError, match="--model no-such-model: neither a saved model directory nor a registered"):
        model_from_flag("no-such-model", family="mome")
    with pytest.raises(InvalidInputError, match="needs a MoME"):
        model_from_flag("medmoe-nano", family="mome")


def test_seg_eval_lines_at_the_spacing(two_datalists):
    report = evaluate(_model(), two_datalists[0], progress=False, eval_spacing=3.0, max_cases=1)
    lines = eval_spacing_lines(report)
    assert lines[0].startswith("at 3mm: class") and lines[-1].startswith("at 3mm: mean")
    assert any(line.startswith("at 3mm: liver") for line in lines)
    assert eval_spacing_lines(evaluate(_model(), two_datalists[0], progress=False, max_cases=1)) == []
