"""Manifest format: round trips, relative paths, atomic writes, errors naming file and row."""

from __future__ import annotations

import json
import os

import pytest
from testkit.data import make_manifest

from medmoe.data.manifest import ManifestRow, normalize_split, read_manifest, write_manifest
from medmoe.errors import CorruptFileError, InvalidInputError, MissingFileError

pytestmark = pytest.mark.timeout(60)


def _rows(tmp_path):
    return [
        ManifestRow(
            image=str(tmp_path / "img" / "a.png"),
            report='FINDINGS: "Quoted", commas, and\nnewlines.',
            modality="xray",
            labels=["Cardiomegaly", "Pleural Effusion"],
            dataset="mimic-cxr",
            split="train",
            extra={"study_id": "50414267"},
        ),
        ManifestRow(image=str(tmp_path / "b.dcm"), report="", labels=[], split=None),
    ]


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl"])
def test_round_trip(tmp_path, name):
    rows = _rows(tmp_path)
    path = write_manifest(rows, tmp_path / name)
    back = read_manifest(path)
    assert back == rows
    assert [r.row for r in back] == [1, 2]


def test_paths_are_written_relative_to_the_manifest(tmp_path):
    rows = _rows(tmp_path)
    path = write_manifest(rows, tmp_path / "sub" / "m.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["image"] == "../img/a.png"
    assert first["labels"] == ["Cardiomegaly", "Pleural Effusion"]
    # moving the manifest together with its images keeps it valid
    moved = tmp_path / "moved"
    os.rename(tmp_path / "sub", moved)
    assert read_manifest(moved / "m.jsonl")[0].image == os.path.normpath(str(tmp_path / "img" / "a.png"))


def test_csv_labels_are_pipe_separated(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("image,report,labels,split\nx.png,Some text,Edema | Atelectasis,validate\n")
    row = read_manifest(path)[0]
    assert row.labels == ["Edema", "Atelectasis"]
    assert row.split == "val"
    assert row.image == str(tmp_path / "x.png")
    assert row.modality is None and row.dataset is None


def test_write_is_atomic_and_replaces(tmp_path):
    path, rows = make_manifest(tmp_path, n=3)
    write_manifest(rows[:1], path)
    assert len(read_manifest(path)) == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_manifest_errors_name_file_and_row(tmp_path):
    with pytest.raises(MissingFileError, match="missing.csv"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(InvalidInputError, match=r"\.csv, \.jsonl"):
        read_manifest(tmp_path / "m.txt")
    no_report = tmp_path / "noreport.csv"
    no_report.write_text("image\nx.png\n")
    with pytest.raises(CorruptFileError, match=r"noreport\.csv.*report"):
        read_manifest(no_report)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"image": "a.png", "report": "x"}\n\n{"image": "b.png", "report": \n')
    with pytest.raises(CorruptFileError, match=r"bad\.jsonl: line 3"):
        read_manifest(bad_json)
    no_image = tmp_path / "noimage.csv"
    no_image.write_text("image,report\n,text\n")
    with pytest.raises(CorruptFileError, match=r"line 2 \(row 1\) has no 'image'"):
        read_manifest(no_image)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("train", "train"), ("Validate", "val"), ("validation", "val"), ("TEST", "test"), ("", None), ("holdout", "holdout")],
)
def test_normalize_split(raw, expected):
    assert normalize_split(raw) == expected
