"""MoME's classes as data: the class template (names, prompts, synonyms) and per-dataset label maps.

    >>> from medmoe.seg.classes import ClassTemplate
    >>> t = ClassTemplate.default()
    >>> t.resolve("right kidny"), t.label_mask("KiTS").sum().item() >= 3
    ('kidney_right', True)
"""

from medmoe.seg.classes.template import (
    DEFAULT_PROMPT,
    ClassInfo,
    ClassTemplate,
    dataset_key,
    normalize_text,
)

__all__ = ["DEFAULT_PROMPT", "ClassInfo", "ClassTemplate", "dataset_key", "normalize_text"]
