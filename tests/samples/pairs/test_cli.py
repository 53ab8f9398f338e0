"""`medmoe data build-samples` and the manifest writer."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from testkit.sample_measures import read_rows

from medmoe.cli.data_samples import add_parser, run_build_samples
from medmoe.cli.main import main
from medmoe.data.manifest import write_manifest
from medmoe.errors import InvalidInputError
from medmoe_samples.pairs.rows import assign_splits, sample_row

pytestmark = pytest.mark.timeout(120)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_handler_prints_counts(tmp_path, capsys):
    args = _parse(["build-samples", "--out", str(tmp_path), "--which", "real", "--no-progress"])
    assert run_build_samples(args) == 0
    out = capsys.readouterr().out
    assert "real-samples" in out and "wrote" in out
    assert (tmp_path / "real-samples" / "manifest.csv").is_file()


def test_main_entry_point_json(tmp_path, capsys):
    code = main(["data", "build-samples", "--out", str(tmp_path), "--which", "modality", "--n-per-modality", "2",
                 "--size", "64", "--seed", "3", "--json", "--no-progress"])
    assert code == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["modality-bench"]["total"] == 12 and counts["modality-bench"]["modalities"]["fundus"] == 2
    rows = read_rows(tmp_path / "modality-bench" / "manifest.csv")
    assert len(rows) == 12


def test_main_entry_point_reports_bad_pack_name(tmp_path, capsys):
    assert main(["data", "build-samples", "--out", str(tmp_path), "--which", "modality,xyz"]) == 1
    assert "xyz" in capsys.readouterr().err


def test_write_manifest_is_atomic_and_quotes_text(tmp_path):
    path = tmp_path / "manifest.csv"
    rows = [sample_row("images/a.png", 'Report, with "quotes".', "ct", ("nodule_left", "liver_lesion"), "d", "train")]
    write_manifest(rows, path)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]
    (row,) = read_rows(path)
    assert row == {"image": "images/a.png", "report": 'Report, with "quotes".', "modality": "ct",
                   "labels": "nodule_left|liver_lesion", "dataset": "d", "split": "train"}
    with pytest.raises(InvalidInputError, match="modality"):
        sample_row("x.png", "r", "pet", (), "d", "train")
    with pytest.raises(InvalidInputError, match="split"):
        sample_row("x.png", "r", "ct", (), "d", "holdout")


def test_assign_splits_fractions():
    splits = assign_splits(300, np.random.default_rng(0))
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (210, 45, 45)
    assert assign_splits(300, np.random.default_rng(0)) == splits != assign_splits(300, np.random.default_rng(1))
    assert sorted(set(assign_splits(3, np.random.default_rng(0)))) == ["test", "train", "val"]
