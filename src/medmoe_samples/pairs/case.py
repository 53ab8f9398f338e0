"""The unit every generator produces: one image with its report and finding tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

NORMAL = "normal"


@dataclass(frozen=True)
class Pair:
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


class PairMaker(Protocol):
    """One modality's generator (the ``make_<modality>_case`` functions): ``make(rng, size) -> Pair``.

    ``rng`` fixes the findings, the image and the report's wording; ``size`` is the image side in pixels.
    The :class:`Pair` holds a (size, size) uint8 grey image or a (size, size, 3) uint8 RGB one.
    """

    def __call__(self, rng: np.random.Generator, size: int = 224) -> Pair: ...
