"""The text tower of an open_clip checkpoint whose text encoder is a Hugging Face model (BiomedCLIP's
PubMedBERT, open_clip's ``HFTextEncoder``).

Layout read: ``text.transformer.<the HF model's own keys>`` (e.g. ``text.transformer.encoder.layer.0.
attention.self.query.weight``), possibly under ``state_dict`` and with ``module.`` prefixes (open_clip's
training checkpoints). The HF architecture comes from a local folder (config + tokenizer, as ``text.model``);
the checkpoint file only supplies weights. open_clip's projection (``text.proj.*``) and pooler are not part of
the HF encoder: they are reported (as unexpected, with a note) and not loaded. The image tower (``visual.*``)
and ``logit_scale`` are reported as unexpected.
"""

from __future__ import annotations

import os

from torch import nn

from medmoe.errors import CorruptFileError
from medmoe.weights.files import load_mapped, read_state_dict, strip_prefix
from medmoe.weights.report import LoadReport

PREFIX = "text.transformer."


def open_clip_text_key(key: str) -> str | None:
    """The HF encoder name of an open_clip key (None outside ``text.transformer.``).

    Example:
        >>> open_clip_text_key("module.text.transformer.embeddings.word_embeddings.weight")
        'embeddings.word_embeddings.weight'
    """
    name = strip_prefix(key)
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


def load_open_clip_text(encoder: nn.Module, source: str | os.PathLike) -> LoadReport:
    """Load the ``text.transformer.*`` weights of an open_clip checkpoint into a HF encoder; logged and returned.

    Raises:
        InvalidInputError: no such file.
        CorruptFileError: unreadable, no ``text.transformer.*`` key (not an open_clip checkpoint with an HF text
            encoder), or none of them fits ``encoder``.
    """
    state = read_state_dict(source, "open_clip text weights")
    if not any(open_clip_text_key(k) for k in state):
        raise CorruptFileError(
            f"{source}: no 'text.transformer.*' key (e.g. {sorted(state)[:3]}); not an open_clip checkpoint with a "
            "Hugging Face text encoder (open_clip's own CLIP text transformer is not read here)")
    report = load_mapped(encoder, source, state, open_clip_text_key,
                         target=f"text encoder ({type(encoder).__name__})")
    heads = [k for k in report.unexpected if strip_prefix(k).startswith(("text.proj", "text.pooler"))]
    if heads:
        report.notes.append(f"open_clip text projection / pooler not loaded: {heads}")
    return report.log()
