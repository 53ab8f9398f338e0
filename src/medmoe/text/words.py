"""Merge word pieces into words."""

from __future__ import annotations

import string

import torch
from torch import Tensor

_PUNCT = set(string.punctuation)


def word_assignment(encoding, texts: list[str], max_words: int, drop_punctuation: bool = True
                    ) -> tuple[Tensor, Tensor, list[list[str]]]:
    """Matrix that averages word-piece states into word states.

    Args:
        encoding: a fast-tokenizer ``BatchEncoding`` of ``texts`` (word_ids / word_to_chars available).
        texts: the B texts that were tokenised.
        max_words: W, the padded number of words.

    Returns:
        assign: (B, W, T) float, row w averages the pieces of word w.
        mask: (B, W) bool, True for a real word.
        words: the words of each text (punctuation removed when ``drop_punctuation``).
    """
    batch, tokens = encoding["input_ids"].shape
    assign = torch.zeros(batch, max_words, tokens)
    words: list[list[str]] = []
    for b, text in enumerate(texts):
        slot_of_word: dict[int, int] = {}
        kept: list[str] = []
        for t, word_id in enumerate(encoding.word_ids(b)):
            if word_id is None:
                continue
            if word_id not in slot_of_word:
                span = encoding.word_to_chars(b, word_id)
                word = text[span.start:span.end]
                if (drop_punctuation and all(c in _PUNCT for c in word)) or len(kept) >= max_words:
                    slot_of_word[word_id] = -1
                    continue
                slot_of_word[word_id] = len(kept)
                kept.append(word)
            slot = slot_of_word[word_id]
            if slot >= 0:
                assign[b, slot, t] = 1.0
        words.append(kept)
    assign = assign / assign.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mask = torch.arange(max_words) < torch.tensor([len(w) for w in words], dtype=torch.long)[:, None]
    return assign, mask, words
