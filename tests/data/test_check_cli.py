"""`medmoe data check`: every problem with its row and path, non-zero exit when any row is bad."""

from __future__ import annotations

import pytest
from testkit.data import make_manifest

from medmoe.cli.main import main
from medmoe.data.check import check_manifest
from medmoe.data.manifest import ManifestRow, read_manifest, write_manifest

pytestmark = pytest.mark.timeout(60)


def test_clean_manifest_exits_zero(tmp_path, capsys):
    path, _ = make_manifest(tmp_path, n=4)
    assert main(["data", "check", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 rows, 4 ok, 0 bad" in out


def _broken_manifest(tmp_path):
    path, _ = make_manifest(tmp_path, n=2)
    rows = read_manifest(path)
    unreadable = tmp_path / "images" / "text.png"
    unreadable.write_text("not an image")
    rows += [
        ManifestRow(image=str(tmp_path / "images" / "gone.png"), report="FINDINGS: fine."),  # row 3
        ManifestRow(image=str(unreadable), report="FINDINGS: fine."),  # row 4
        ManifestRow(image=rows[0].image, report="FINDINGS: XXXX"),  # row 5
        ManifestRow(image=rows[0].image, report="ok", modality="PET"),  # row 6
        ManifestRow(image=rows[0].image, report="ok", split="holdout"),  # row 7
        ManifestRow(image=rows[0].image, report="", labels=["Edema"], split="test"),  # row 8: label-only, fine
    ]
    return write_manifest(rows, tmp_path / "broken.jsonl")


def test_every_problem_reported_with_row_and_path(tmp_path, capsys):
    path = _broken_manifest(tmp_path)
    assert main(["data", "check", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert any(line.startswith("row 3: ") and "gone.png" in line and "missing file" in line for line in lines)
    assert any(line.startswith("row 4: ") and "text.png" in line and "unreadable image" in line for line in lines)
    assert any(line.startswith("row 5: ") and "empty report" in line for line in lines)
    assert any(line.startswith("row 6: ") and "unknown modality" in line and "'PET'" in line for line in lines)
    assert any(line.startswith("row 7: ") and "bad split" in line and "'holdout'" in line for line in lines)
    assert not any(line.startswith(("row 1:", "row 2:", "row 8:")) for line in lines)
    assert "8 rows, 3 ok, 5 bad" in lines[-1]
    assert "1 missing file" in lines[-1] and "1 unreadable image" in lines[-1]


def test_no_read_only_checks_existence(tmp_path):
    path = _broken_manifest(tmp_path)
    result = check_manifest(path, read_images=False)
    assert "unreadable image" not in result.counts()
    assert result.counts()["missing file"] == 1
    assert result.bad_rows == 4


def test_max_problems_and_missing_manifest(tmp_path, capsys):
    path = _broken_manifest(tmp_path)
    assert main(["data", "check", str(path), "--no-progress", "--max-problems", "2"]) == 1
    out = capsys.readouterr().out
    assert "... 3 more problem(s)" in out
    assert main(["data", "check", str(tmp_path / "absent.csv")]) == 1
    assert "medmoe: error:" in capsys.readouterr().err
