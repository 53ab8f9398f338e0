"""docs/cli.md is the command reference that medmoe.cli.reference generates from the parsers."""

from __future__ import annotations

from pathlib import Path

from medmoe.cli.reference import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_reference(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # the reference wraps at its own width, whatever the terminal's
    text = reference()
    assert DOC.read_text() == text, "docs/cli.md is out of date: python -m medmoe.cli.reference > docs/cli.md"
    for command in ("medmoe align train", "medmoe seg predict", "medmoe data import busi", "medmoe serve"):
        assert f"\n## {command}\n" in text
    assert "--distill-loss-weight" in text and "--no-pretrained" in text and "--set KEY=VALUE" in text
