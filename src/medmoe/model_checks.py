"""Checks a model config and a saved model's weights pass before any tensor of the model is allocated.

A ``config.json`` is data: ``num_experts: 10000000`` or ``depths: [1000000, 2, 2, 2]`` must fail in a line,
not after allocating gigabytes. :func:`check_sizes` bounds the fields that multiply modules or widths;
:func:`expected_shapes` builds the model with every parameter moved to PyTorch's ``meta`` device as it is
created (one parameter allocated at a time, as ``accelerate.init_empty_weights`` does) and
:func:`compare_with_header` compares those shapes with the safetensors header, which
:func:`read_safetensors_header` reads and checks against the file's length without reading a tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from medmoe.errors import InvalidInputError, NotAModelDirectoryError

# field name -> (minimum, maximum) of the value or of each element; generous for every model medmoe builds
# (the largest registered ones use 24 heads, depth 6, 768 wide), small enough that a config cannot make
# the model builder loop for hours or allocate gigabytes in one tensor.
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "num_experts": (1, 64),
    "depths": (0, 48),
    "num_heads": (1, 256),
    "window_size": (1, 64),
    "patch_size": (1, 64),
    "refine_depth": (0, 32),
    "in_channels": (1, 64),
    "fusion_scale": (1, 8),
    "word_layers": (1, 64),
    "image_size": (1, 8192),
    "roi_size": (1, 2048),
    "max_length": (1, 8192),
    "local_dim": (1, 8192),
    "embed_dim": (1, 8192),
    "scale_hidden": (0, 8192),
    "router_hidden": (0, 8192),
    "feature_size": (1, 1024),
    "expert_channels": (1, 1024),
    "router_dim": (1, 8192),
    "head_hidden": (1, 8192),
    "text_proj_dim": (1, 8192),
}
MAX_STAGES = 8  # length of depths / num_heads
MAX_CLASSES = 4096
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_sizes(config: Any, where: str) -> None:
    """Refuse size fields outside :data:`SIZE_RANGES` anywhere in a (nested) dataclass config.

    Raises:
        InvalidInputError: one line naming the field, its value and the allowed range.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = f"{where}.{field.name}"
        if dataclasses.is_dataclass(value):
            check_sizes(value, name)
            continue
        if field.name in ("classes", "trained_classes") and len(value) > MAX_CLASSES:
            raise InvalidInputError(f"{name}: {len(value)} classes, more than the {MAX_CLASSES} allowed")
        if field.name not in SIZE_RANGES:
            continue
        low, high = SIZE_RANGES[field.name]
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) > MAX_STAGES:
            raise InvalidInputError(f"{name}: {len(value)} values, at most {MAX_STAGES} allowed")
        for v in values:
            if isinstance(v, int) and not low <= v <= high:
                raise InvalidInputError(f"{name}: {v} is outside the allowed range [{low}, {high}]")


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While building a module, move each parameter to the ``meta`` device as soon as it is registered.

    The text tower keeps real parameters: a model may run it while it is built (MoME encodes its class
    prompts), and its size is fixed by the encoder's own config (checked by :func:`check_text_config`).
    """
    from medmoe.text.tower import TextTower

    original, original_init = nn.Module.register_parameter, TextTower.__init__
    in_text_tower = [0]

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        # a tied (already moved) parameter stays shared
        if param is not None and param.device.type != "meta" and not in_text_tower[0]:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def text_init(self, *args: Any, **kwargs: Any) -> None:
        in_text_tower[0] += 1
        try:
            original_init(self, *args, **kwargs)
        finally:
            in_text_tower[0] -= 1

    nn.Module.register_parameter, TextTower.__init__ = register, text_init
    try:
        yield
    finally:
        nn.Module.register_parameter, TextTower.__init__ = original, original_init


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


def expected_shapes(cls: type[nn.Module], config: Any) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """``({name: shape}, alias groups)`` of the state dict ``cls(config)`` would have, with no parameter
    allocated beyond the one being created; names sharing one tensor form an alias group."""
    with _parameters_on_meta():
        model = cls(config, load_pretrained=False)
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}, list(groups.values())


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tensor entries (``dtype``, ``shape``, ``data_offsets``) of a safetensors file, checked against
    its length: the header fits, every tensor's bytes lie inside the file and match its shape and dtype.

    Raises:
        NotAModelDirectoryError: a header that is missing, oversized, not JSON, or describes data the file
            does not hold.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {length:,} exceeds the file ({size:,} bytes) or 100 MiB")
            header = json.loads(fh.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
        data_bytes = size - 8 - length
        for name, entry in header.items():
            _check_entry(name, entry, data_bytes)
    except OSError as err:
        raise NotAModelDirectoryError(f"{path}: cannot read weights ({err.strerror or err})") from err
    except (ValueError, RecursionError, struct.error) as err:
        raise NotAModelDirectoryError(f"{path}: not a safetensors file ({err})") from err
    return header


def _check_entry(name: str, entry: Any, data_bytes: int) -> None:
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
        raise ValueError(f"tensor {name!r}: malformed entry")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"tensor {name!r}: malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        raise ValueError(f"tensor {name!r}: malformed data_offsets")
    start, end = offsets
    if not 0 <= start <= end <= data_bytes:
        raise ValueError(f"tensor {name!r}: bytes {start}..{end} lie outside the file's {data_bytes:,} data bytes")
    if math.prod(shape) * _DTYPE_BYTES[entry["dtype"]] != end - start:
        raise ValueError(f"tensor {name!r}: {end - start} bytes do not hold shape {shape} of {entry['dtype']}")


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
