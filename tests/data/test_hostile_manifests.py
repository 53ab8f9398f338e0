"""Careless manifests: a CSV row with unquoted commas is an error naming its row, a non-UTF-8 byte names its
row while the rest still reads, the check reports every bad JSONL line and goes on, and a FIFO is refused."""

from __future__ import annotations

import os

import pytest
from testkit.data import make_manifest

from medmoe.cli.main import main
from medmoe.data.check import check_manifest
from medmoe.data.manifest import read_manifest, scan_manifest
from medmoe.errors import CorruptFileError

pytestmark = pytest.mark.timeout(60)


def test_csv_row_with_unquoted_commas_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,report,modality\na.png,No effusion,xray\nb.png,Heart normal, lungs clear, no edema,xray\n"
                    "c.png,short\n")
    with pytest.raises(CorruptFileError, match=r"m\.csv: line 3 \(row 2\) has 5 field\(s\) where the header has 3"
                                               r".*and 1 more malformed row"):
        read_manifest(path)
    rows, problems = scan_manifest(path)
    assert [r.image.rsplit(os.sep, 1)[-1] for r in rows] == ["a.png"]
    assert [(p.row, p.line) for p in problems] == [(2, 3), (3, 4)]
    assert "has 2 field(s)" in problems[1].detail


def test_non_utf8_bytes_name_their_row_and_the_rest_still_reads(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"image,report\na.png,fine\nb.png,caf\xe9 au lait\nc.png,also fine\n")
    with pytest.raises(CorruptFileError, match=r"line 3 \(row 2\) is not UTF-8 text \(byte 0xe9"):
        read_manifest(path)
    rows, problems = scan_manifest(path)
    assert len(rows) == 2 and [p.row for p in problems] == [2]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(b'{"image": "a.png", "report": "x"}\n{"image": "b.png", "report": "\xff"}\n')
    with pytest.raises(CorruptFileError, match=r"line 2 \(row 2\) is not UTF-8 text \(byte 0xff"):
        read_manifest(jsonl)


def test_jsonl_check_reports_every_bad_line_and_goes_on(tmp_path, capsys):
    path, rows = make_manifest(tmp_path, n=3, name="m.jsonl")
    lines = path.read_text().splitlines()
    lines[1:1] = ['{"image": "x.png", "report": ', "[1, 2]", '{"image": "y.png"}']
    lines.append('{"image": "", "report": "no image"}')
    path.write_text("\n".join(lines) + "\n")
    result = check_manifest(path)
    malformed = [p for p in result.problems if p.kind == "malformed row"]
    assert [p.row for p in malformed] == [2, 3, 4, 7]
    assert "line 2 is not valid JSON" in malformed[0].detail and "not a JSON object" in malformed[1].detail
    assert "lacks the 'report' key" in malformed[2].detail and "has no 'image' value" in malformed[3].detail
    assert result.n_rows == 7 and result.bad_rows == 4
    assert main(["data", "check", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "row 3: " in out and "7 rows, 3 ok, 4 bad (4 malformed row)" in out


def test_manifest_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.csv"
    os.mkfifo(fifo)
    with pytest.raises(CorruptFileError, match="is a FIFO"):
        read_manifest(fifo)
