"""Prompt lists of `seg predict`: ``all``, unknown names with suggestions, repeats, file names of classes.

Kept apart from :mod:`medmoe.seg.predict` (no MONAI import) so that the command line checks the prompts
in a second, before anything heavy is imported or loaded.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from typing import Any

from medmoe.errors import InvalidInputError
from medmoe.seg.classes import ClassTemplate, normalize_text

logger = logging.getLogger(__name__)

ALL_CLASSES = "all"


def model_class_names(model: Any, template: ClassTemplate | None = None) -> tuple[list[str], str]:
    """The classes ``--prompt all`` segments, and where the list comes from.

    In order: ``trained_classes`` of the config (the classes the model was trained on, when a trainer
    records them), else ``classes`` (the model's class set: the classes whose prompt embeddings it caches;
    a saved MoME always records it, the whole template unless it was built for a subset), else every class
    of the template.

    Args:
        model: a model, or the config fields of a saved model (:func:`medmoe.saved_model.read_model_config`).
    """
    config = model if isinstance(model, dict) else getattr(model, "config", None)

    def get(name: str) -> Any:
        return config.get(name) if isinstance(config, dict) else getattr(config, name, None)

    trained = get("trained_classes")
    if trained:
        return list(trained), "the classes the model was trained on (config trained_classes)"
    classes = get("classes") or (None if isinstance(model, dict) else getattr(model, "class_names", None))
    if classes:
        return list(classes), ("the model's class set (config classes, whose prompt embeddings it caches; the "
                               "model does not record which of them its training data labelled)")
    template = template or ClassTemplate.default()
    return list(template.names), "every class of the class template (the model records no class list)"


def check_prompts(prompts: Any) -> list[str]:
    """The prompts as a list of non-empty strings, or a clear error (empty list, a bare string, ...)."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InvalidInputError(f"prompts must be a list of class names, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InvalidInputError("the prompt list is empty: give at least one class to segment, e.g. --prompt liver "
                                "(or --prompt all)")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise InvalidInputError(f"prompts must be non-empty strings, got {bad!r}")
    return [str(p) for p in prompts]


def suggest_classes(text: str, template: ClassTemplate, n: int = 4) -> list[str]:
    """Canonical classes whose name, display name or a synonym is close to ``text`` (best first)."""
    keys: dict[str, str] = {}
    for name in template.names:
        info = template.info(name)
        for alias in (name, info.display, *info.synonyms):
            keys.setdefault(normalize_text(alias), name)
    query = normalize_text(text)
    matches = difflib.get_close_matches(query, list(keys), n=4 * n, cutoff=0.6)
    close = list(dict.fromkeys(keys[key] for key in matches))
    # a word of the query starting a word of a class name, or the reverse: "ribs" -> rib_left_1, "heart" ...
    words = [w for w in query.split() if len(w) >= 3 and not w.isdigit()]
    by_word = [name for key, name in keys.items()
               if any(k.startswith(w) or (len(k) >= 3 and w.startswith(k))
                      for w in words for k in key.split())]
    return list(dict.fromkeys([*close[:2], *by_word, *close[2:]]))[:n]


def resolve_prompt_list(prompts: Sequence[str], template: ClassTemplate, *, model_classes: Sequence[str] | None = None,
                        allow_free_text: bool = False) -> tuple[list[str], list[str | None]]:
    """Expand ``all``, resolve each prompt to its template class and drop repeats, before any inference.

    Args:
        prompts: class names, synonyms, prompts (typos resolve) or ``"all"``.
        template: the class template.
        model_classes: what ``all`` means (see :func:`model_class_names`; default every template class).
        allow_free_text: keep a prompt that names no template class (embedded as an unseen class: the heads
            never saw it in training) instead of refusing it.

    Returns:
        ``(prompts, classes)``: the prompts to run and their canonical classes (None for free text).

    Raises:
        InvalidInputError: an unknown prompt (with the closest class names) when free text is not allowed.
    """
    prompts = check_prompts(prompts)
    out_prompts: list[str] = []
    classes: list[str | None] = []
    seen: dict[str, str] = {}
    unknown: list[str] = []
    for prompt in prompts:
        if prompt.strip().lower() == ALL_CLASSES:
            items = [(name, template.resolve(name) if name not in template else name)
                     for name in (model_classes if model_classes is not None else template.names)]
        else:
            name = template.resolve(prompt)
            if name is None:
                if not allow_free_text:
                    unknown.append(prompt)
                    continue
                logger.warning("prompt %r names no class of the template; it is embedded as free text, an unseen "
                               "class the heads were not trained on (expect a poor mask)", prompt)
            items = [(prompt, name)]
        for text, name in items:
            key = name or normalize_text(text)
            if key in seen:
                if prompt.strip().lower() != ALL_CLASSES:
                    logger.warning("prompt %r repeats %r (class %s); segmented once", text, seen[key], key)
                continue
            seen[key] = text
            out_prompts.append(text)
            classes.append(name)
    if unknown:
        parts = [f"{text!r} (did you mean {', '.join(close)}?)" if (close := suggest_classes(text, template))
                 else f"{text!r} (no close class name)" for text in unknown]
        raise InvalidInputError(
            f"unknown class{'es' if len(unknown) > 1 else ''}: {'; '.join(parts)}. List the classes with "
            "`medmoe seg classes`; to segment free text as an unseen class anyway, pass --allow-free-text "
            "(allow_free_text=True)")
    return out_prompts, classes


def class_file_name(name: str) -> str:
    """A file-name-safe class name: canonical names stay as they are (``kidney_right``), free text is
    reduced to letters, digits, ``_``, ``-`` and ``.``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("._")
    return safe[:100] or "class"
