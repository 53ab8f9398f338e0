"""Run logs written by rank 0: ``metrics.jsonl`` (one JSON object per log step) and TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from medmoe.paths import write_text_atomic

logger = logging.getLogger(__name__)


class RunLogger:
    """Appends to ``RUN_DIR/metrics.jsonl`` and ``RUN_DIR/tb``; does nothing when ``enabled`` is false.

    When a run resumes from step ``start_step``, lines and TensorBoard events written after that step by
    the interrupted run are discarded, so the logs read as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=start_step + 1)

    def log(self, step: int, values: dict[str, float], *, prefix: str = "train", extra: dict[str, Any] | None = None) -> None:
        """One metrics.jsonl line ``{"step", **extra, "<prefix>/<name>": value}`` and one scalar per value."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step, **(extra or {})}
        for name, value in ((f"{prefix}/{k}", float(v)) for k, v in values.items()):
            finite = math.isfinite(value)
            row[name] = value if finite else None  # strict JSON has no NaN/Infinity: a skipped step logs null
            if self._writer is not None and finite:
                self._writer.add_scalar(name, value, step)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
