"""Zero-shot classification with prompt ensembles.

A class is represented by the mean of its prompts' normalised text embeddings (renormalised), as CLIP
and UniMed-CLIP's evaluation do; an image's class scores are cosines with those class vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmoe.errors import InvalidInputError

LABEL_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "findings consistent with {}.",
    "there is {}.",
    "the image shows {}.",
    "{} is seen.",
)

MODALITY_PROMPTS: dict[str, tuple[str, ...]] = {
    "xray": ("a chest x-ray.", "a radiograph.", "an x-ray image.", "frontal chest radiograph."),
    "ct": ("a ct scan.", "a computed tomography image.", "an axial ct slice.", "contrast-enhanced ct."),
    "mri": ("an mri scan.", "a magnetic resonance image.", "a t1-weighted mri.", "brain mri."),
    "ultrasound": ("an ultrasound image.", "a sonogram.", "sonography of the abdomen.", "an echo image."),
    "pathology": ("a histopathology slide.", "a microscopy image of tissue.", "an h&e stained section.",
                  "a pathology image."),
    "fundus": ("a fundus photograph.", "a retinal image.", "a photograph of the retina.", "fundoscopy."),
}


def label_prompts(classes: Sequence[str], templates: Sequence[str] = LABEL_TEMPLATES) -> dict[str, list[str]]:
    """``{class: [template.format(class readable), ...]}``; underscores become spaces."""
    return {c: [t.format(c.replace("_", " ")) for t in templates] for c in classes}


class ZeroShotClassifier:
    """Class vectors from prompt ensembles.

    Args:
        class_names: C names, in the order of the score columns.
        weights: (C, E) L2-normalised class vectors.

    Example:
        >>> clf = ZeroShotClassifier.from_prompts(model, {"effusion": ["pleural effusion."], "normal": ["no finding."]})
        >>> clf.logits(model.encode_image(images)).shape
        torch.Size([B, 2])
    """

    def __init__(self, class_names: Sequence[str], weights: Tensor) -> None:
        if weights.shape[0] != len(class_names):
            raise InvalidInputError(f"{len(class_names)} class names but {weights.shape[0]} class vectors")
        self.class_names = list(class_names)
        self.weights = weights

    @classmethod
    @torch.no_grad()
    def from_prompts(cls, model: nn.Module, prompts: Mapping[str, Sequence[str]], *,
                     batch_size: int = 64) -> ZeroShotClassifier:
        """Embed every class's prompts with ``model.encode_text`` and average them."""
        if not prompts or any(not p for p in prompts.values()):
            raise InvalidInputError("zero-shot needs at least one class and one prompt per class")
        vectors = []
        for texts in prompts.values():
            texts = list(texts)
            emb = torch.cat([model.encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
            vectors.append(F.normalize(F.normalize(emb.float(), dim=-1).mean(0), dim=-1))
        return cls(list(prompts), torch.stack(vectors))

    def logits(self, image_embeds: Tensor) -> Tensor:
        """(N, C) cosine similarities of (N, E) normalised image embeddings to the class vectors."""
        return image_embeds.float() @ self.weights.to(image_embeds.device).t()


def classification_metrics(scores: np.ndarray, targets: Sequence[Sequence[str] | str], class_names: Sequence[str]
                           ) -> dict:
    """Accuracy (on samples with exactly one known class) and one-vs-rest AUROC per class.

    Args:
        scores: (N, C) class scores.
        targets: per sample, its class name or its set of class names (multi-label).
        class_names: the C columns.

    Returns:
        ``{"accuracy", "n_accuracy", "auroc": {class: value}, "mean_auroc"}``; AUROC is NaN for a class
        whose samples are all positive or all negative.
    """
    from sklearn.metrics import roc_auc_score

    names = list(class_names)
    sets = [({t} if isinstance(t, str) else set(t)) & set(names) for t in targets]
    single = [i for i, s in enumerate(sets) if len(s) == 1]
    correct = [names[scores[i].argmax()] in sets[i] for i in single]
    aurocs: dict[str, float] = {}
    for c, name in enumerate(names):
        y = np.array([name in s for s in sets])
        aurocs[name] = float(roc_auc_score(y, scores[:, c])) if 0 < y.sum() < len(y) else float("nan")
    valid = [v for v in aurocs.values() if not np.isnan(v)]
    return {
        "accuracy": float(np.mean(correct)) if correct else float("nan"),
        "n_accuracy": len(single),
        "auroc": aurocs,
        "mean_auroc": float(np.mean(valid)) if valid else float("nan"),
    }
