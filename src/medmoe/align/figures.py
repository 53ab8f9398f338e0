"""PNG figures of an evaluation: routing confusion matrix and word-region attention maps (paper's Fig. 3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.align.losses import word_region_attention
from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# Words that carry no finding: not worth an attention panel.
_STOPWORDS = frozenset(
    "a an the of in on at to and or with without is are was were be been there this that no not any seen "
    "noted shows show image images scan study within its it as by for from than mild small".split()
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, *, dpi: int) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder created) and close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def save_confusion_matrix(matrix: np.ndarray, row_names: Sequence[str], path: str | os.PathLike, *,
                          title: str = "routing vs modality") -> Path:
    """Counts with rows = true modality, columns = chosen expert; each cell annotated."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * matrix.shape[1], 1.0 + 0.55 * matrix.shape[0]))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(matrix.shape[1]), [f"E{e}" for e in range(matrix.shape[1])])
    ax.set_yticks(range(matrix.shape[0]), list(row_names))
    ax.set(xlabel="expert (image router)", ylabel="modality", title=title)
    peak = matrix.max() if matrix.size else 0
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(int(v)), ha="center", va="center", color="white" if v > peak / 2 else "black", fontsize=8)
    return _save(fig, path, dpi=120)


def pick_words(words: Sequence[str], count: int) -> list[int]:
    """Positions of up to ``count`` content words (first occurrences, stopwords and numbers skipped)."""
    chosen, seen = [], set()
    for i, w in enumerate(words):
        key = w.lower()
        if key in _STOPWORDS or key in seen or not any(ch.isalpha() for ch in key) or len(key) < 3:
            continue
        seen.add(key)
        chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, reports: list[str]) -> tuple[Tensor, list[list[str]]]:
    """Word-region attention of each report over its own image, upsampled to the image size.

    Uses the inference route (image router) and GLoRIA's tau_1 from the model config.

    Returns:
        ((B, W, H, W_img) attention maps, the words of each report).
    """
    out = model(images, reports, route_by="image")
    regions = out["local_features"].flatten(2).transpose(1, 2).float()  # (B, R, D)
    words, mask = out["word_features"].float(), out["word_mask"]
    temp1 = model.config.local_temperatures[0]
    h, w = out["local_features"].shape[-2:]
    # each report over its own image: (1, 1, W, R) -> (W, R) -> (W, H_img, W_img)
    maps = [F.interpolate(word_region_attention(words[b:b + 1], mask[b:b + 1], regions[b:b + 1], temp1)[0, 0]
                          .view(1, -1, h, w), size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
            for b in range(images.shape[0])]
    return torch.stack(maps), out["words"]


def _display(image: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(3, H, W) model input -> (H, W, 3) float in [0, 1] for imshow: uint8 as stored by the datasets,
    float as normalised with ``mean`` / ``std``."""
    x = (image.cpu().float() / 255.0 if image.dtype == torch.uint8
         else image.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1))
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def save_attention_figure(model: nn.Module, images: Tensor, reports: list[str], path: str | os.PathLike, *,
                          words_per_image: int = 4) -> Path:
    """One row per example: the image, then its attention map for a few content words of its report."""
    plt = _pyplot()
    maps, words = attention_maps(model, images, reports)
    cols = 1 + words_per_image
    fig, axes = plt.subplots(len(reports), cols, figsize=(2.1 * cols, 2.3 * len(reports)), squeeze=False)
    for b, report in enumerate(reports):
        picture = _display(images[b])
        axes[b, 0].imshow(picture)
        axes[b, 0].set_title(report[:40] + ("..." if len(report) > 40 else ""), fontsize=6)
        for j, w in enumerate(pick_words(words[b], words_per_image)):
            heat = maps[b, w].cpu().numpy()
            axes[b, 1 + j].imshow(picture)
            axes[b, 1 + j].imshow(heat / max(heat.max(), 1e-12), cmap="jet", alpha=0.45)
            axes[b, 1 + j].set_title(words[b][w], fontsize=8)
        for ax in axes[b]:
            ax.axis("off")
    return _save(fig, path, dpi=110)
