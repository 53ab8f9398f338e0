"""The unit every generator produces: one image with its report and finding tags."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMAL = "normal"


@dataclass(frozen=True)
class Case:
    """One generated image-report pair.

    Attributes:
        image: uint8 (H, W) grey or (H, W, 3) RGB.
        report: report text (one line).
        labels: finding tags, sorted; ``("normal",)`` when nothing is abnormal.
    """

    image: np.ndarray
    report: str
    labels: tuple[str, ...]


def tags_or_normal(tags: list[str] | set[str]) -> tuple[str, ...]:
    """Sorted unique tags, or ``("normal",)`` when there are none."""
    return tuple(sorted(set(tags))) or (NORMAL,)
