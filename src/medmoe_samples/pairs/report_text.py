"""Helpers that turn findings into varied report text.

Reports are built from sentences. Each positive sentence names exactly one finding (with its side, zone
and size words); negative sentences deny findings that are absent, alone or as a list ("No effusion or
nodule."). Keeping one finding per positive sentence and never putting a negation cue into a positive
sentence is what makes the text parseable back into the labels (tests do exactly that).
"""

from __future__ import annotations

import numpy as np

_NEGATION_FRAMES = (
    "No {x}.",
    "There {be} no {x}.",
    "No evidence of {x}.",
    "Negative for {x}.",
    "Without {x}.",
    "No {x} {be} seen.",
    "{X} {be} not seen.",
    "{X}: absent.",
)


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One element of ``options`` chosen by ``rng``."""
    return options[int(rng.integers(len(options)))]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def negate(rng: np.random.Generator, phrases: list[str]) -> list[str]:
    """Sentences denying each phrase in ``phrases``; two or three may share one sentence ("No x or y.").

    Args:
        rng: random generator.
        phrases: noun phrases of absent findings, e.g. ``["pleural effusion", "focal consolidation"]``;
            an item ending in "." is already a sentence ("The lungs are clear.") and is kept as it is.

    Returns:
        The kept sentences, in their order, then the denying sentences, in random order.
    """
    sentences = [p for p in phrases if p.endswith(".")]
    phrases = [p for p in phrases if not p.endswith(".")]
    phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    while phrases:
        take = 1 if len(phrases) == 1 or rng.random() < 0.6 else int(rng.integers(2, min(3, len(phrases)) + 1))
        group, phrases = phrases[:take], phrases[take:]
        joined = group[0] if take == 1 else ", ".join(group[:-1]) + " or " + group[-1]
        frame = pick(rng, _NEGATION_FRAMES if take == 1 else _NEGATION_FRAMES[:4])
        be = "are" if group[-1].endswith("s") and not group[-1].endswith(("sis", "ss")) else "is"
        sentences.append(frame.replace("{X}", capitalise(joined)).replace("{x}", joined).replace("{be}", be))
    return sentences


def compose(
    rng: np.random.Generator,
    positives: list[str],
    negatives: list[str],
    header: str | None = None,
    fillers: list[str] | None = None,
    impression: str | None = None,
) -> str:
    """Assemble a report: optional header, findings in random order, optional impression.

    Args:
        rng: random generator.
        positives: sentences stating present findings.
        negatives: sentences denying absent findings.
        header: technique line ("PA chest radiograph."), or None to leave the modality unstated.
        fillers: neutral sentences that name no finding (anatomy that is fine).
        impression: closing sentence, or None.

    Returns:
        One line of text.
    """
    body = positives + negatives + list(fillers or [])
    body = [body[i] for i in rng.permutation(len(body))]
    # Radiologists tend to lead with what is abnormal.
    if positives and rng.random() < 0.6:
        body = [s for s in body if s in positives] + [s for s in body if s not in positives]
    parts = ([header] if header else []) + body + ([impression] if impression else [])
    return " ".join(capitalise(p.strip()) for p in parts)
