"""One segmentation model over several datalists: one table per dataset and class, and an overall mean.

Each datalist is scored by :func:`~medmoe.seg.evaluate.evaluate` (native grid, and at ``eval_spacing`` when
given, as the Universal Model reports Dice at 1.5 mm); this module only gathers the reports.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medmoe.errors import InvalidInputError
from medmoe.seg.data import SPLITS
from medmoe.seg.evaluate import evaluate, json_safe, parse_eval_spacing, spacing_label
from medmoe.seg.metrics import nanmean

ROW_METRICS = ("dice", "dice_at_spacing", "nsd", "nsd_at_spacing")


def parse_datalist_spec(spec: str, default_split: str = "test") -> tuple[str, str]:
    """``"DATALIST[:SPLIT]"`` -> ``(path, split)``; a suffix that is not a split name stays in the path.

    Raises:
        InvalidInputError: an empty path.
    """
    path, split = spec, default_split
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS:
        path, split = head, tail
    if not path:
        raise InvalidInputError(f"datalist {spec!r}: expected DATALIST[:SPLIT] with SPLIT one of {SPLITS}")
    return path, split


def _rows(report: dict[str, Any], datalist: str, split: str) -> list[dict[str, Any]]:
    at = (report.get("at_eval_spacing") or {}).get("per_dataset", {})
    return [{"datalist": datalist, "split": split, "dataset": dataset, "class": name,
             "dice": values["dice"], "dice_at_spacing": coarse.get("dice"), "nsd": values["nsd"],
             "nsd_at_spacing": coarse.get("nsd"), "cases": values["n"]}
            for dataset, classes in report["per_dataset"].items() for name, values in classes.items()
            for coarse in [at.get(dataset, {}).get(name, {})]]


def _mean(values: Sequence[float | None]) -> float | None:
    value = nanmean(v for v in values if v is not None)
    return None if math.isnan(value) else value


def benchmark(model: nn.Module, datalists: Sequence[str], *, eval_spacing: float | Sequence[float] | None = None,
              out: str | os.PathLike | None = None, **evaluate_kwargs: Any) -> dict[str, Any]:
    """Evaluate ``model`` on each ``DATALIST[:SPLIT]`` (split default ``test``) and tabulate the results.

    Args:
        model: a MoME model (see :func:`~medmoe.seg.evaluate.evaluate`).
        datalists: ``"path/datalist.json"`` or ``"path/datalist.json:validation"`` each.
        eval_spacing: also score at this spacing (one or three mm values), e.g. 1.5.
        out: write the JSON here.
        **evaluate_kwargs: passed to :func:`~medmoe.seg.evaluate.evaluate` (``classes``, ``threshold``,
            ``overlap``, ``device``, ``max_cases``, ``progress``...).

    Returns:
        {"rows": [{"datalist", "split", "dataset", "class", "dice", "dice_at_spacing", "nsd", "nsd_at_spacing",
        "cases"}], "overall": {metric: mean over rows, "cases": cases scored}, "eval_spacing_mm",
        "reports": [each datalist's evaluate report]}. Metrics at the spacing are None without ``eval_spacing``.

    Raises:
        InvalidInputError: no datalist, a bad spec or spacing, or a datalist with no case that could be scored.
    """
    if not datalists:
        raise InvalidInputError("no datalist given; expected one or more DATALIST[:SPLIT]")
    for forbidden in ("split", "out", "eval_spacing"):
        if forbidden in evaluate_kwargs:
            raise InvalidInputError(f"benchmark sets {forbidden!r} itself; give the split as DATALIST:SPLIT")
    spacing = parse_eval_spacing(eval_spacing)
    specs = [parse_datalist_spec(spec) for spec in datalists]
    rows: list[dict[str, Any]] = []
    reports = []
    for path, split in specs:
        report = evaluate(model, path, split=split, eval_spacing=spacing, **evaluate_kwargs)
        reports.append({"datalist": path, "split": split, **report})
        rows.extend(_rows(report, path, split))
    overall: dict[str, Any] = {m: _mean([r[m] for r in rows]) for m in ROW_METRICS}
    overall["cases"] = sum(len(r["cases"]) for r in reports)
    result = json_safe({"eval_spacing_mm": list(spacing) if spacing else None, "rows": rows, "overall": overall,
                         "reports": reports})
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_tables(result: dict[str, Any]) -> str:
    """The benchmark as text: one table per dataset (rows: classes), then the overall mean."""
    spacing = result.get("eval_spacing_mm")
    at = f"dice@{spacing_label(spacing)}" if spacing else "dice@-"

    def num(value: float | None) -> str:
        return f"{'n/a':>{width}s}" if value is None else f"{value:{width}.3f}"

    width = max(len(at), 6)
    header = f"{'class':28s} {'dice':>{width}s} {at:>{width}s} {'nsd':>{width}s} {'cases':>5s}"
    lines: list[str] = []
    tables: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in result["rows"]:
        tables.setdefault((row["dataset"], row["datalist"], row["split"]), []).append(row)
    for (dataset, datalist, split), rows in tables.items():
        lines += [f"{dataset} ({datalist}:{split})", header]
        lines += [f"{r['class']:28s} {num(r['dice'])} {num(r['dice_at_spacing'])} {num(r['nsd'])} {r['cases']:5d}"
                  for r in rows]
        lines.append("")
    o = result["overall"]
    lines.append(f"{'overall mean':28s} {num(o['dice'])} {num(o['dice_at_spacing'])} {num(o['nsd'])} "
                 f"{o['cases']:5d}")
    return "\n".join(lines)
