"""The Classify tab: zero-shot classes of one uploaded image, the router's chosen expert and the word-region
attention of a report or prompt over the image.

Class probabilities are the softmax of the model's logit scale times the cosines between the image and each
class's prompt ensemble (:class:`~medmoe.align.zeroshot.ZeroShotClassifier`); a class named like one of the six
modalities uses that modality's prompts, any other class the label templates. The expert and its
probabilities are the image router's (the inference route). The attention maps are GLoRIA's word-region
attention of the words of the text over the image's local features (:func:`medmoe.align.figures.attention_maps`).
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmoe.align.zeroshot import MODALITY_PROMPTS, ZeroShotClassifier, label_prompts
from medmoe.data.modalities import MODALITIES, try_normalize_modality
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.serve.pictures import fit, heat_overlay, to_rgb

DEFAULT_CLASSES = ", ".join(MODALITY_PROMPTS)
MAX_CLASSES = 50
MAX_CLASS_CHARS = 100
MAX_TEXT_CHARS = 2000
WORD_MAPS = 5
DISPLAY = 320


@dataclass
class ClassifyResult:
    """What the tab shows for one image.

    Attributes:
        probabilities: class -> probability (sums to 1).
        expert: the chosen expert's name.
        expert_probabilities: expert name -> router probability.
        attention: ``(picture (H, W, 3) uint8, caption)``: the image, the mean attention over the chosen
            words, then one map per word.
        text: the report or prompt the attention was computed for.
        modality: the modality the file declares (DICOM), or None.
    """

    probabilities: dict[str, float]
    expert: str
    expert_probabilities: dict[str, float]
    attention: list[tuple[np.ndarray, str]]
    text: str
    modality: str | None = None

    def message(self, name: str) -> str:
        top = max(self.probabilities, key=self.probabilities.get)
        return (f"{name}: **{top}** ({self.probabilities[top]:.1%}); routed to **{self.expert}** "
                f"({self.expert_probabilities[self.expert]:.1%}); attention of \u201c{self.text}\u201d")


def parse_classes(text: str) -> list[str]:
    """Class names from a comma- or line-separated text (blanks and repeats dropped, order kept).

    Raises:
        InvalidInputError: fewer than two classes, too many, or a name that is too long.
    """
    names, seen = [], set()
    for part in re.split(r"[,\n;]", str(text or "")):
        name = " ".join(part.split())
        if name and name.lower() not in seen:
            if len(name) > MAX_CLASS_CHARS:
                raise InvalidInputError(f"class name {name[:30]!r}...: at most {MAX_CLASS_CHARS} characters")
            seen.add(name.lower())
            names.append(name)
    if len(names) < 2:
        raise InvalidInputError("give at least two class names, separated by commas (e.g. \u201cnormal, "
                                "pleural effusion\u201d)")
    if len(names) > MAX_CLASSES:
        raise InvalidInputError(f"{len(names)} classes: at most {MAX_CLASSES}")
    return names


def class_prompts(names: Sequence[str]) -> dict[str, list[str]]:
    """The prompt ensemble of each class: a modality's own prompts for a modality's name or synonym (``"MRI"``,
    ``"x-ray"``), else the label templates."""
    modalities = {name: try_normalize_modality(name) for name in names}
    return {name: list(MODALITY_PROMPTS[m]) if m in MODALITY_PROMPTS else label_prompts([name])[name]
            for name, m in modalities.items()}


def expert_names(model: nn.Module) -> list[str]:
    """``expert k``, with the modality it was trained for when the router learned modalities (one expert
    per modality and ``route_by="label"`` or a router cross-entropy)."""
    cfg = model.config
    k = int(cfg.num_experts)
    knows_modality = k == len(MODALITIES) and (cfg.route_by == "label" or cfg.modality_experts)
    return [f"expert {e} ({MODALITIES[e]})" if knows_modality else f"expert {e}" for e in range(k)]


def prepare_image(path: str | Path, image_size: int) -> tuple[torch.Tensor, np.ndarray, str | None]:
    """Read an image file as the model sees it.

    Returns:
        ``(uint8 (1, 3, S, S) model input, (S, S, 3) uint8 picture of it, declared modality or None)``.

    Raises:
        MedMoEError: an unreadable, empty or unsupported file (its message names the reason).
    """
    from medmoe.data.readers import read_image
    from medmoe.data.transforms import ImageTransform

    transform = ImageTransform(image_size=image_size)
    image, meta = read_image(path, target_size=transform.decode_size)
    x = transform(image)
    return x[None], to_rgb(x.permute(1, 2, 0).numpy()), getattr(meta, "modality", None)


def answer_each(requests: Sequence[tuple], check: Callable[..., Any], work: Callable[[list], Sequence]) -> list:
    """The answer to each request, in order: ``work`` answers the checked requests (``check(*request)``) as one
    batch; a request whose check raises a medmoe error has that error as its answer."""
    answers: list = [None] * len(requests)
    checked = []
    for position, request in enumerate(requests):
        try:
            checked.append((position, check(*request)))
        except MedMoEError as err:
            answers[position] = err
    if checked:
        for (position, _), answer in zip(checked, work([item for _, item in checked])):
            answers[position] = answer
    return answers


def content_words(words: Sequence[str], count: int = WORD_MAPS) -> list[int]:
    """Positions of up to ``count`` words worth a map: content words, else any word with a letter."""
    from medmoe.align.figures import pick_words

    return pick_words(words, count) or [i for i, w in enumerate(words)
                                        if any(ch.isalpha() for ch in w)][:count]


class Classifier:
    """Zero-shot classification with one model; class vectors are cached per class list (thread-safe).

    Args:
        model: a MedMoE model in eval mode.
        cache_size: class lists whose vectors are kept.
    """

    def __init__(self, model: nn.Module, cache_size: int = 16) -> None:
        self.model = model
        self.image_size = int(model.config.backbone.image_size)
        self.experts = expert_names(model)
        # the classifier of a tuple of class names, the last ``cache_size`` kept (lru_cache is thread-safe)
        self.classifier = functools.lru_cache(maxsize=cache_size)(self._classifier)
        self.words = WordFeatures(model)

    def _classifier(self, names: tuple[str, ...]) -> ZeroShotClassifier:
        return ZeroShotClassifier.from_prompts(self.model, class_prompts(names))

    @torch.no_grad()
    def classify_many(self, requests: Sequence[tuple[str | Path, str, str]]) -> list[ClassifyResult | MedMoEError]:
        """Classify the image of each ``(path, classes_text, text)`` request against the classes of
        ``classes_text``, with the attention of ``text`` (default: the top class's first prompt); the images go
        through the model as one batch and the texts as another. A request's medmoe error (an unreadable image,
        a bad class list or text) is its entry in the list; the others are answered."""
        return answer_each(requests, self._prepare, self._answer)

    def _prepare(self, path: str | Path, classes_text: str, text: str) -> _Prepared:
        names = parse_classes(classes_text)
        text = " ".join(str(text or "").split())
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInputError(f"the report or prompt has {len(text)} characters; at most {MAX_TEXT_CHARS}")
        image, picture, modality = prepare_image(path, self.image_size)
        return _Prepared(names, text, image, picture, modality)

    def _answer(self, items: Sequence[_Prepared]) -> list[ClassifyResult | MedMoEError]:
        device = next(self.model.parameters()).device
        images = torch.cat([item.image for item in items]).to(device)
        features = self.model.image_features(images)
        scale = float(self.model.logit_scale)
        probabilities = []
        for row, item in enumerate(items):
            logits = self.classifier(tuple(item.names)).logits(features["image_embeds"][row:row + 1])
            probs = (scale * logits).softmax(dim=-1)[0].cpu().tolist()
            probabilities.append({n: float(p) for n, p in zip(item.names, probs)})
        texts = [item.text or class_prompts([max(p, key=p.get)]).popitem()[1][0]
                 for item, p in zip(items, probabilities)]
        words = self.words.get(texts)
        maps = word_maps(self.model, features["local_features"], words, tuple(images.shape[-2:]))
        router = features["router_probs"].float().cpu().tolist()
        chosen = features["expert_index"].cpu().tolist()
        answers: list[ClassifyResult | MedMoEError] = []
        for row, item in enumerate(items):
            try:
                attention = attention_panels(item.picture, maps[row], words[row][1], texts[row])
            except MedMoEError as err:
                answers.append(err)
                continue
            answers.append(ClassifyResult(probabilities[row], self.experts[int(chosen[row])],
                                          dict(zip(self.experts, map(float, router[row]))), attention, texts[row],
                                          item.modality))
        return answers


@dataclass
class _Prepared:
    """One checked request: class names, the text (maybe empty), the model input, its picture, its modality."""

    names: list[str]
    text: str
    image: torch.Tensor
    picture: np.ndarray
    modality: str | None


class WordFeatures:
    """The projected word features of texts, kept for the ``size`` texts used last (class prompts recur: an
    empty text means the top class's first prompt). Thread-safe.

    Args:
        model: a MedMoE model in eval mode.
        size: texts kept.
    """

    def __init__(self, model: nn.Module, size: int = 256) -> None:
        self.model, self.size = model, size
        self._items: OrderedDict[str, tuple[torch.Tensor, list[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, texts: Sequence[str]) -> list[tuple[torch.Tensor, list[str]]]:
        """Per text: its (W, D) word features (float32, its own words only) and its words; the texts not
        kept are encoded as one batch."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._items]
        if missing:
            out = self.model._text(missing)
            projected = self.model.word_proj(out.words).float()
            found = {t: (projected[i, :int(out.word_mask[i].sum())].clone(), list(out.word_text[i]))
                     for i, t in enumerate(missing)}
            with self._lock:
                self._items.update(found)
        with self._lock:
            for t in texts:
                self._items.move_to_end(t)
            answer = [self._items[t] for t in texts]
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return answer


def word_maps(model: nn.Module, local_features: torch.Tensor, words: Sequence[tuple[torch.Tensor, list[str]]],
              size: tuple[int, int]) -> list[torch.Tensor]:
    """GLoRIA's word-region attention of each text's words over its own image, from the image's local
    features (the image is not encoded again), upsampled to ``size``: what
    :func:`medmoe.align.figures.attention_maps` computes from the images, whose inference route gives these
    same features.

    Args:
        local_features: (B, D, h, w) of B images.
        words: per image, the (W, D) word features of its text and the words (:meth:`WordFeatures.get`).

    Returns:
        per image a (W, H, W_img) tensor, one map per word.
    """
    import torch.nn.functional as F

    from medmoe.align.losses import word_region_attention

    regions = local_features.flatten(2).transpose(1, 2).float()
    temp1 = model.config.local_temperatures[0]
    h, w = local_features.shape[-2:]
    maps = []
    for b, (features, _) in enumerate(words):
        mask = torch.ones(1, features.shape[0], dtype=torch.bool, device=features.device)
        attn = word_region_attention(features[None], mask, regions[b:b + 1], temp1)[0, 0]
        maps.append(F.interpolate(attn.view(1, -1, h, w), size=size, mode="bilinear", align_corners=False)[0])
    return maps


def attention_panels(picture: np.ndarray, maps: torch.Tensor, words: Sequence[str],
                     text: str) -> list[tuple[np.ndarray, str]]:
    """The picture, the mean word-region attention over the chosen words, then one map per word.

    Raises:
        InvalidInputError: the text has no word to show attention for.
    """
    chosen = content_words(words)
    if not chosen:
        raise InvalidInputError(f"\u201c{text}\u201d has no word to show attention for; type a report or prompt")
    heat = maps[chosen].float().cpu().numpy()
    side = max(DISPLAY, picture.shape[0])
    panels = [(fit(picture, side), "image"),
              (fit(heat_overlay(picture, heat.mean(0)), side), f"mean of: {', '.join(words[i] for i in chosen)}")]
    panels += [(fit(heat_overlay(picture, h), side), words[i]) for h, i in zip(heat, chosen)]
    return panels
