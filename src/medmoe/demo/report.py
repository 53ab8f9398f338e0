"""A self-contained HTML report: tables, figures embedded as base64 PNG, explanations, commands."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medmoe.paths import write_text_atomic

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#1d2433;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #d8dde6;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 1em} th,td{border:1px solid #d8dde6;padding:.3em .7em;text-align:right}
th{background:#f2f4f8} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #d8dde6}
figcaption{color:#5a6478;font-size:.92em} .note{color:#5a6478;font-size:.92em}
pre{background:#f5f6f8;padding:.8em;overflow-x:auto;border-radius:4px}
.better{font-weight:600;color:#0b6e3a}
"""


@dataclass
class Table:
    """A table: ``rows`` are lists of cells (str or number); ``highlight`` marks cells (row, col) in bold."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""
    highlight: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Figure:
    path: str | os.PathLike
    caption: str


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    code: str = ""


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value.is_integer():
            return f"{value:.0f}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return html.escape(str(value))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = ["<tr>" + "".join(("<td class='better'>" if (r, i) in t.highlight else "<td>") + f"{_cell(c)}</td>"
                             for i, c in enumerate(row)) + "</tr>" for r, row in enumerate(t.rows)]
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><tr>{head}</tr>{''.join(body)}</table>{note}"


def _figure(f: Figure) -> str:
    path = Path(f.path)
    if not path.is_file():
        return f"<p class='note'>(figure missing: {html.escape(str(path))})</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(f.caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")


def render_report(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The HTML text of a report; every figure is embedded so the file stands alone."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{intro}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{s.text}</p>")
        parts.extend(_table(t) for t in s.tables)
        parts.extend(_figure(f) for f in s.figures)
        if s.code:
            parts.append(f"<pre>{html.escape(s.code)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, title: str, intro: str, sections: Sequence[Section]) -> Path:
    """Write the report atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_report(title, intro, sections))
    return path
