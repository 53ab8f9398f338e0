"""The model card: a ``README.md`` in every saved model folder saying what the model is and where it came from.

Written by :meth:`medmoe.saved_model.PretrainedMixin.save_pretrained` (inside its atomic temporary folder) with what
the model itself knows (family, registered name, architecture, the weight files its config started from and
what loading them matched) and what the caller passes: the trainer gives the training data and steps and the
validation metrics of the exported model. Plain Markdown, built line by line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

CARD_NAME = "README.md"

# (label, dotted config field) of the sizes that describe each family at a glance; absent fields are skipped
KEY_SIZES = (
    ("image size", "backbone.image_size"), ("patch size", "backbone.patch_size"),
    ("backbone width", "backbone.embed_dim"), ("backbone depths", "backbone.depths"),
    ("embedding dim", "embed_dim"), ("local dim", "local_dim"), ("routed by", "route_by"),
    ("backbone", "backbone.kind"), ("feature size", "backbone.feature_size"), ("expert channels", "expert_channels"),
    ("router dim", "router_dim"), ("text projection dim", "text_proj_dim"), ("window (voxels)", "roi_size"),
    ("spacing (mm)", "spacing"), ("text encoder", "text.model"), ("text max length", "text.max_length"),
)
# (label, dotted config field) of the weight files a model starts from
WEIGHT_FIELDS = (
    ("image backbone", "backbone.weights"), ("text encoder", "text.model"), ("text weights", "text.weights"),
    ("whole network", "backbone.init_weights"), ("encoder", "backbone.encoder_weights"),
    ("prompt embeddings", "prompt_embeddings"),
)
# the training facts in the order the card lists them; other keys follow in the order given
TRAINING_ORDER = ("model", "data", "split", "val_data", "steps", "batch_size", "global_batch_size", "accum_steps", "lr",
                  "seed", "bad_samples", "nonfinite_steps", "world_size", "resumed_from", "date")


def _field(config: Any, dotted: str) -> tuple[bool, Any]:
    value = config
    for name in dotted.split("."):
        if value is None or not hasattr(value, name):
            return False, None
        value = getattr(value, name)
    return True, value


def _text(value: Any) -> str:
    """A value on one Markdown line: tuples as ``a x b``, no line breaks, pipes escaped for tables."""
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value) if value else "()"
    elif isinstance(value, float):
        value = f"{value:.6g}"
    return " ".join(str(value).split()).replace("|", "\\|")


def _num_experts(model: nn.Module) -> int | None:
    for name in ("num_experts", "num_scales"):
        value = getattr(model, name, None)
        if isinstance(value, int):
            return value
    value = _field(getattr(model, "config", None), "num_experts")[1]  # None when the config has no such field
    return value if isinstance(value, int) else None


def _load_reports(model: nn.Module) -> list[Any]:
    """``model.weight_reports`` and the ``load_report`` of any submodule (e.g. the align backbone)."""
    reports = list(getattr(model, "weight_reports", None) or [])
    for module in model.modules():
        report = getattr(module, "load_report", None)
        if report is not None and hasattr(report, "summary") and report not in reports:
            reports.append(report)
    return reports


def _architecture(model: nn.Module) -> list[str]:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = ["## Architecture", "", f"- class: `{type(model).__name__}`",
             f"- parameters: {params:,} ({trainable:,} trainable when saved)"]
    experts = _num_experts(model)
    if experts is not None:
        lines.append(f"- experts: {experts}")
    config = getattr(model, "config", None)
    # an absent field reads as None
    lines += [f"- {label}: {_text(value)}" for label, dotted in KEY_SIZES
              if (value := _field(config, dotted)[1]) not in (None, "")]
    for name in ("trained_classes", "classes"):
        found, value = _field(config, name)
        if found and value:
            lines.append(f"- {name.replace('_', ' ')} ({len(value)}): {_text(', '.join(value))}")
            break
    return lines


def _weights(model: nn.Module) -> list[str]:
    config = getattr(model, "config", None)
    lines = ["## Weights it started from", ""]
    for label, dotted in WEIGHT_FIELDS:
        found, value = _field(config, dotted)
        if found:
            lines.append(f"- {label} (`{dotted}`): {_text(value) if value else 'none'}")
    if len(lines) > 2:
        lines += ["", "A part with none starts from random initialisation; empty `text.weights` keeps the text "
                      "encoder's own weights."]
    reports = _load_reports(model)
    if reports:
        lines += ["", "What loading them matched:", ""]
        lines += [f"- {_text(report.summary())}" for report in reports]
    if len(lines) == 2:
        lines.append("- not recorded (the config has no weight fields)")
    return lines


def _training(training: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Training", ""]
    if not training:
        return lines + ["- not recorded (saved outside the trainer)"]
    keys = [k for k in TRAINING_ORDER if k in training] + [k for k in training if k not in TRAINING_ORDER]
    return lines + [f"- {k.replace('_', ' ')}: {_text(training[k]) if training[k] is not None else '-'}"
                    for k in keys]


def _metrics(metrics: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Metrics recorded at export", ""]
    if not metrics:
        return lines + ["- none recorded (no validation ran before this save)"]
    lines += ["| metric | value |", "|---|---|"]
    return lines + [f"| {_text(name)} | {_text(value)} |" for name, value in metrics.items()]


def model_card_text(model: nn.Module, *, training: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Any] | None = None) -> str:
    """The Markdown of the card; see :func:`write_model_card`."""
    from medmoe import __version__
    from medmoe.registry import describe_family

    model_type = getattr(model, "model_type", None) or type(model).__name__
    name = getattr(model, "model_name", None)
    lines = [f"# {name or model_type}", "",
             f"- model type: `{model_type}`, {describe_family(model_type)}",
             f"- registered name: `{name}`" if name else "- registered name: none (built from a config)",
             f"- medmoe version: {__version__}", ""]
    for section in (_architecture(model), _weights(model), _training(training), _metrics(metrics)):
        lines += [*section, ""]
    lines += ["## How to load", "", "```python", "import medmoe", "",
              'model = medmoe.load_model("path/to/this/folder")', "```", ""]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, model: nn.Module, *,
                     training: Mapping[str, Any] | None = None,
                     metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``README.md`` into a model folder: what the model is, what it started from, how it was trained.

    Args:
        directory: the model folder (exists).
        model: the model being saved (its ``config``, ``model_type``, ``model_name`` and weight load reports
            are read).
        training: facts of the run, e.g. ``{"data": ..., "steps": ..., "batch_size": ..., "seed": ...,
            "bad_samples": ..., "date": ...}`` (any keys; known ones are listed first).
        metrics: the validation metrics of the saved weights, ``{name: value}``.

    Returns:
        The card's path.

    Example:
        >>> write_model_card("out/model", model, training={"data": "datalist.json", "steps": 1000})
    """
    path = Path(directory) / CARD_NAME
    path.write_text(model_card_text(model, training=training, metrics=metrics), encoding="utf-8")
    return path
