"""Checks a model config and a saved model's weights pass before any tensor of the model is allocated.

A ``config.json`` is data: ``num_experts: 10000000`` or ``depths: [1000000, 2, 2, 2]`` must fail in a line,
not after allocating gigabytes. :func:`check_sizes` bounds the fields that multiply modules or widths, with
the limits each config declares (``size_limits`` of the family's config class, dotted for nested sections)
and, for a backbone section, its kind's (``size_limits`` of the backbone class); :func:`expected_shapes`
builds the model on PyTorch's ``meta`` device (shapes, no storage) and :func:`compare_with_header` compares
those shapes with the safetensors header, which :func:`read_safetensors_header` reads with
``safetensors.safe_open`` (which checks the header against the file) without reading a tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from medmoe.errors import InvalidInputError, NotAModelDirectoryError

MAX_STAGES = 8  # length of a tuple size field (depths, num_heads)
MAX_CLASSES = 4096


def size_limits(config: Any) -> dict[str, tuple[int, int]]:
    """``{dotted field: (minimum, maximum)}`` of a config and its nested sections: the config class's
    ``size_limits`` and, for every nested section with a ``kind`` that names a backbone, that backbone
    class's ``size_limits`` under the section's name."""
    from medmoe.backbones import backbone_class

    limits = dict(getattr(type(config), "size_limits", {}))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and isinstance(getattr(value, "kind", None), str):
            kind_limits = backbone_class(value.kind).size_limits
            limits.update({f"{field.name}.{name}": bounds for name, bounds in kind_limits.items()})
    return limits


def check_sizes(config: Any, where: str) -> None:
    """Refuse size fields outside their :func:`size_limits` anywhere in a (nested) dataclass config, and
    class lists longer than :data:`MAX_CLASSES`.

    Raises:
        InvalidInputError: one line naming the field, its value and the allowed range.
    """
    limits = size_limits(config)
    for dotted, value in _fields(config):
        name = f"{where}.{dotted}"
        if dotted.rsplit(".", 1)[-1] in ("classes", "trained_classes") and len(value) > MAX_CLASSES:
            raise InvalidInputError(f"{name}: {len(value)} classes, more than the {MAX_CLASSES} allowed")
        if dotted not in limits:
            continue
        low, high = limits[dotted]
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) > MAX_STAGES:
            raise InvalidInputError(f"{name}: {len(value)} values, at most {MAX_STAGES} allowed")
        for v in values:
            if isinstance(v, int) and not low <= v <= high:
                raise InvalidInputError(f"{name}: {v} is outside the allowed range [{low}, {high}]")


def _fields(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted name, value)`` of every leaf field of a nested dataclass config."""
    values = {f"{prefix}{field.name}": getattr(config, field.name) for field in dataclasses.fields(config)}
    return [item for name, value in values.items()
            for item in (_fields(value, f"{name}.") if dataclasses.is_dataclass(value) else [(name, value)])]


# Hugging Face encoder config keys (text/config.json of a saved model) -> largest value allowed.
TEXT_CONFIG_RANGES = {"hidden_size": 8192, "num_hidden_layers": 64, "num_attention_heads": 256,
                      "intermediate_size": 65536, "vocab_size": 1_000_000, "max_position_embeddings": 65536,
                      "type_vocab_size": 1024}


def check_text_config(path: str | os.PathLike) -> None:
    """Refuse a saved text encoder config (``text/config.json``) whose sizes are not positive integers
    within :data:`TEXT_CONFIG_RANGES`, before the encoder is built from it.

    Raises:
        InvalidInputError: naming the file, the key and the value.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size <= 2**20 else None
    except (OSError, ValueError, RecursionError) as err:
        raise InvalidInputError(f"{path}: unreadable text encoder config ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: not a text encoder config (a JSON object under 1 MiB)")
    for key, high in TEXT_CONFIG_RANGES.items():
        value = data.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high):
            raise InvalidInputError(f"{path}: {key} {value!r} is not an integer in [1, {high}]")


class _OnMeta(TorchFunctionMode):
    """Like ``with torch.device("meta")``: tensors created without a device (parameters, buffers) land on the
    ``meta`` device, which records shapes and allocates nothing; ranges (``arange``, ``linspace``,
    ``logspace``) stay on the CPU because builders read their values (MONAI's Swin reads its drop-path
    schedule with ``.item()``): one value per block or per window position."""

    _ON_META = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand,
                          torch.randn, torch.randint, torch.randperm, torch.eye, torch.tensor, torch.as_tensor,
                          torch.scalar_tensor})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._ON_META and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def expected_shapes(cls: type[nn.Module], config: Any) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """``({name: shape}, alias groups)`` of the state dict ``cls(config)`` would have, built on the ``meta``
    device (no parameter storage is allocated); names sharing one tensor form an alias group."""
    with _OnMeta():
        model = cls(config, load_pretrained=False)
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}, list(groups.values())


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype", "shape"}}`` of the tensors of a safetensors file, read with
    ``safetensors.safe_open``, which refuses a header that is over its 100 MB limit, not JSON, or describes
    data the file does not hold; no tensor is read.

    Raises:
        NotAModelDirectoryError: an unreadable file or a header safetensors refuses.
    """
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}
            header = {name: {"dtype": t.get_dtype(), "shape": list(t.get_shape())}
                      for name, t in slices.items()}
    except OSError as err:
        raise NotAModelDirectoryError(f"{path}: cannot read weights ({err.strerror or err})") from err
    except (SafetensorError, ValueError) as err:
        raise NotAModelDirectoryError(f"{path}: not a safetensors file ({err})") from err
    return header


def compare_with_header(expected: dict[str, tuple[int, ...]], aliases: list[list[str]],
                        header: dict[str, dict[str, Any]], where: str) -> None:
    """Refuse weights whose tensors do not match the config's model: a name the model lacks, a shape that
    differs, or a model tensor (none of whose aliases is saved) missing from the file.

    Raises:
        NotAModelDirectoryError: naming up to five of each kind.
    """
    unexpected = sorted(set(header) - set(expected))
    wrong = sorted(f"{n} {tuple(header[n]['shape'])} vs {expected[n]}" for n in header
                   if n in expected and tuple(header[n]["shape"]) != expected[n])
    missing = sorted(group[0] for group in aliases if not any(name in header for name in group))
    if unexpected or wrong or missing:
        parts = [f"{label} {items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs:", wrong))
                 if items]
        raise NotAModelDirectoryError(f"{where}: weights do not match the config ({'; '.join(parts)})")
