"""CLIP text encoders from a local Hugging Face folder: a whole ``CLIPModel`` or a ``CLIPTextModel``.

``AutoModel`` on a whole CLIP folder builds the two-tower ``CLIPModel`` (which needs images); here the text
tower alone is built from the folder's text config and only its weights are read (the vision tower's keys are
reported as unexpected). With ``projection=True`` the model is a ``CLIPTextModelWithProjection``: CLIP's
``text_projection`` is loaded too, so the tower can output CLIP's joint-space text embeddings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from medmoe.errors import CorruptFileError
from medmoe.weights.report import LoadReport

CLIP_TYPES = ("clip", "clip_text_model")


def model_type(directory: str | os.PathLike) -> str | None:
    """``model_type`` of a Hugging Face folder's config.json (None if absent or unreadable)."""
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_clip_folder(directory: str | os.PathLike) -> bool:
    """Whether a folder holds a whole CLIP model or a CLIP text model."""
    return model_type(directory) in CLIP_TYPES


def _report(directory: str, model: nn.Module, info: dict, projection: bool) -> LoadReport:
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [(str(m[0]), tuple(m[1]), tuple(m[2])) if isinstance(m, (tuple, list)) and len(m) == 3
                  else (str(m), (), ()) for m in (info.get("mismatched_keys") or [])]
    bad = set(missing) | {m[0] for m in mismatched}
    target = "CLIP text tower" + (" with text_projection" if projection else "")
    report = LoadReport(directory, target, matched=sorted(k for k in model.state_dict() if k not in bad),
                        missing=missing, unexpected=sorted(info.get("unexpected_keys") or []), mismatched=mismatched)
    if not projection and any(k.startswith("text_projection.") for k in report.unexpected):
        report.notes.append("text_projection is not used (text.projection=true applies it, as CLIP's "
                            "get_text_features does)")
    return report


def load_clip_text(directory: str | os.PathLike, *, projection: bool = False,
                   pretrained: bool = True) -> tuple[nn.Module, LoadReport | None]:
    """The text tower of a CLIP folder, and the report of its weights (None when ``pretrained`` is False).

    Args:
        directory: a local folder with ``config.json`` of ``model_type`` ``clip`` or ``clip_text_model``.
        projection: build ``CLIPTextModelWithProjection`` (loads ``text_projection``) instead of ``CLIPTextModel``.
        pretrained: load the folder's weights; False builds the same architecture with random weights.

    Raises:
        CorruptFileError: the weights cannot be read, or none of them is a CLIP text weight.
    """
    directory = str(directory)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    if not pretrained:
        return cls(CLIPTextConfig.from_pretrained(directory)), None
    try:
        model, info = cls.from_pretrained(directory, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CorruptFileError(f"{directory}: cannot load the CLIP text weights ({err})") from err
    report = _report(directory, model, info, projection)
    if not report.matched:
        raise CorruptFileError(f"{directory}: no weight of this folder is a CLIP text weight")
    return model, report.log()
