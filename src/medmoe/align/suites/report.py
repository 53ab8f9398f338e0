"""Tables that put the user's results next to the paper's rows (cited), and the suite's JSON file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from medmoe.align.suites.paper import (
    CITATION_TABLE1,
    CITATION_TABLE2,
    TABLE1,
    TABLE1_SETS,
    TABLE2,
    TABLE2_FRACTIONS,
)
from medmoe.align.suites.sets import EVAL_SETS
from medmoe.paths import write_text_atomic


def _cell(value: float | None, width: int) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return ("-" if missing else f"{value:.2f}").rjust(width)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def format_zeroshot_table(result: dict[str, Any], label: str = "yours") -> str:
    """The paper's Table 1 rows and the user's row (accuracy in %), with the number of images per set.

    The ``avg`` column is the paper's (all nine sets); ``avg*`` is every row's mean over the sets the user
    ran, the comparable figure when some sets are missing.
    """
    sets = [s for s in TABLE1_SETS if s in result["sets"]] + [s for s in result["sets"] if s not in TABLE1_SETS]
    columns = list(TABLE1_SETS) + [s for s in sets if s not in TABLE1_SETS]
    widths = [max(7, len(EVAL_SETS[c].column) if c in EVAL_SETS else len(c)) for c in columns]
    name_width = max(16, len(label) + 1)
    header = "model".ljust(name_width) + " ".join(
        (EVAL_SETS[c].column if c in EVAL_SETS else c).rjust(w) for c, w in zip(columns, widths))
    header += "     avg    avg*"
    lines = [f"Zero-shot top-1 accuracy (%); paper rows: {CITATION_TABLE1}", header]
    for model, row in TABLE1.items():
        cells = " ".join(_cell(row.get(c), w) for c, w in zip(columns, widths))
        subset = _mean([row[s] for s in sets if s in row]) if all(s in row for s in sets) else None
        lines.append(f"{model.ljust(name_width)}{cells} {_cell(row['avg'], 7)} {_cell(subset, 7)}")
    mine = {s: 100 * r["accuracy"] for s, r in result["sets"].items()}
    cells = " ".join(_cell(mine.get(c), w) for c, w in zip(columns, widths))
    full = _mean(list(mine.values())) if all(s in mine for s in TABLE1_SETS) else None
    lines.append(f"{label.ljust(name_width)}{cells} {_cell(full, 7)} {_cell(_mean(list(mine.values())), 7)}")
    counts = " ".join(str(result["sets"][c]["n"]).rjust(w) if c in result["sets"] else "-".rjust(w)
                      for c, w in zip(columns, widths))
    lines += [f"{'images'.ljust(name_width)}{counts}", f"avg*: mean over the {len(mine)} set(s) run here",
              *_missing_lines(result)]
    return "\n".join(lines)


def format_probe_table(result: dict[str, Any], label: str = "yours") -> str:
    """Per set, the paper's MedMoE linear-probe accuracy (%) at 1 / 10 / 100 % and the user's (mean over
    seeds, with the standard deviation), and the train / test sizes."""
    fractions = list(TABLE2_FRACTIONS)
    for entry in result["sets"].values():
        fractions += [f for f in entry["fractions"] if f not in fractions]
    lines = [f"Linear-probe accuracy (%); paper rows (the MedMoE model): {CITATION_TABLE2}",
             "set".ljust(16) + "row".ljust(10) + "".join(f.rjust(16) for f in fractions) + "   train / test"]
    for name, entry in result["sets"].items():
        column = EVAL_SETS[name].column if name in EVAL_SETS else name
        if name in TABLE2:
            paper = "".join(_cell(TABLE2[name].get(f), 16) for f in fractions)
            lines.append(column.ljust(16) + "paper".ljust(10) + paper)
        cells = [("-" if run is None else f"{100 * run['accuracy']:.2f} ± {100 * run['std']:.2f}").rjust(16)
                 for run in map(entry["fractions"].get, fractions)]
        lines.append(("" if name in TABLE2 else column).ljust(16) + label[:9].ljust(10) + "".join(cells)
                     + f"   {entry['n_train']} / {entry['n_test']}")
    lines += _missing_lines(result)
    return "\n".join(lines)


def _missing_lines(result: dict[str, Any]) -> list[str]:
    return [f"not run: {name}: {reason}" for name, reason in result.get("missing", {}).items()]


def paper_reference(suite: str) -> dict[str, Any]:
    """The paper's values of ``suite`` (``zeroshot`` or ``probe``), cited, for the JSON file."""
    if suite == "zeroshot":
        return {"citation": CITATION_TABLE1, "metric": "top-1 accuracy (%)", "rows": TABLE1}
    return {"citation": CITATION_TABLE2, "metric": "linear-probe accuracy (%) of MedMoE", "rows": TABLE2}


def write_suite_json(result: dict[str, Any], path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``result`` with the paper's values (``"paper"``) and ``extra`` keys as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**result, **extra, "paper": paper_reference(result["suite"])}
    write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path
