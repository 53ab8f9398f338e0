"""What an importer did: which tensors it loaded, which it left at init and which it could not place."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def _grouped(keys: list[str], shown: int = 4) -> str:
    """``a.*: 12, b.weight`` style digest of many keys (grouped by their first name when long)."""
    if len(keys) <= shown:
        return ", ".join(keys)
    groups = Counter(k.split(".", 1)[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(f"{g}: {n}" if n > 1 else g for g, n in groups.most_common(shown)) + (
        f", ... ({len(groups) - shown} more groups)" if len(groups) > shown else "")


@dataclass
class LoadReport:
    """The outcome of loading one checkpoint into one module.

    Attributes:
        source: the file (or folder) read.
        target: what was loaded into, e.g. ``"MoME encoder (SwinUNETR swinViT)"``.
        matched: target keys that received a tensor from the file.
        missing: target keys the file had nothing for (they keep their initialisation).
        unexpected: file keys with no place in the target (in the file's own names).
        mismatched: ``(target key, file shape, target shape)`` of tensors found under the right name with
            the wrong shape (not loaded; they keep their initialisation).
        notes: anything else worth telling, e.g. projection weights that were deliberately left out.
    """

    source: str
    target: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every target tensor was loaded."""
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        """One line: counts, then a digest of what did not load."""
        line = (f"{self.source} -> {self.target}: {len(self.matched)} matched, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched")
        parts = [f"{label}: {_grouped(keys)}" for label, keys in (("missing", self.missing),
                                                                  ("unexpected", self.unexpected)) if keys]
        if self.mismatched:
            parts.append("mismatched: " + ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:3])
                         + (" ..." if len(self.mismatched) > 3 else ""))
        parts.extend(self.notes)
        return line + ("; " + "; ".join(parts) if parts else "")

    def log(self, logger: logging.Logger | None = None) -> LoadReport:
        """Log :meth:`summary` (a warning when shapes mismatched, info otherwise); returns self."""
        level = logging.WARNING if self.mismatched else logging.INFO
        (logger or log).log(level, "%s", self.summary())
        return self
