"""Precomputed prompt embeddings: one row per class, with the class names, read instead of a text tower.

Accepted files:

* ``.safetensors`` with a tensor ``embeddings`` (C, T) and the names as a JSON list in the metadata key
  ``classes`` (``save_file({"embeddings": e}, path, metadata={"classes": json.dumps(names)})``);
* ``.pt`` / ``.pth`` holding ``{"embeddings": Tensor (C, T), "classes": [C names]}``, read with
  ``torch.load(weights_only=True)``.

A bare tensor without names is refused: rows cannot be matched to classes by position safely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from medmoe.errors import CorruptFileError, InvalidInputError

_HOW = ("save {'embeddings': Tensor (C, T), 'classes': [C names]} with torch.save, or a safetensors file with an "
        "'embeddings' tensor and metadata {'classes': json.dumps(names)}")


@dataclass(frozen=True)
class PromptTable:
    """C class names and their (C, T) embeddings, read from ``source``."""

    source: str
    classes: tuple[str, ...]
    embeddings: Tensor

    @property
    def width(self) -> int:
        """T, the embedding width."""
        return int(self.embeddings.shape[1])

    def check_width(self, width: int) -> None:
        """Raise unless the rows are ``width`` wide (the text width the model was built for)."""
        if self.width != width:
            raise InvalidInputError(
                f"{self.source}: prompt embeddings are {self.width} wide but the model's text width is {width}; "
                "use the text tower the embeddings came from (text.model) or embeddings of that width")

    def rows(self, names: list[str], resolve: Callable[[str], str | None] | None = None) -> Tensor:
        """(K, T) rows of K class names, in order.

        Args:
            names: the classes wanted.
            resolve: maps a file's class name to the canonical name ``names`` use (e.g. a class template's
                ``resolve``, tolerating synonyms and case); a file name it cannot resolve matches as written.

        Raises:
            InvalidInputError: a name has no row (naming every such class and the file's classes), or two
                rows of the file resolve to the same class.
        """
        index: dict[str, int] = {}
        for row, name in enumerate(self.classes):
            key = (resolve(name) if resolve else None) or name
            if key in index:
                raise InvalidInputError(f"{self.source}: rows {index[key]} ({self.classes[index[key]]!r}) and {row} "
                                        f"({name!r}) are both class {key!r}")
            index[key] = row
        absent = [n for n in names if n not in index]
        if absent:
            raise InvalidInputError(f"{self.source}: no prompt embedding for {absent}; the file has rows for "
                                    f"{list(self.classes)}")
        return self.embeddings[[index[n] for n in names]]


def _from_safetensors(path: Path) -> tuple[object, object]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        names = (f.metadata() or {}).get("classes")
        key = "embeddings" if "embeddings" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise CorruptFileError(f"{path}: no 'embeddings' tensor among {keys}; {_HOW}")
        tensor = f.get_tensor(key)
    try:
        classes = json.loads(names) if names is not None else None
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path}: metadata 'classes' is not a JSON list ({err}); {_HOW}") from err
    return tensor, classes


def read_prompt_embeddings(source: str | os.PathLike) -> PromptTable:
    """Read a prompt-embedding file (see the module docstring).

    Raises:
        InvalidInputError: no such file.
        CorruptFileError: unreadable, or not C names with a (C, T) float tensor.
    """
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"prompt embeddings {str(source)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            tensor, classes = _from_safetensors(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(data, Tensor):
                raise CorruptFileError(f"{path}: a bare tensor without class names; {_HOW}")
            if not isinstance(data, dict):
                raise CorruptFileError(f"{path}: expected a dict, got {type(data).__name__}; {_HOW}")
            tensor, classes = data.get("embeddings"), data.get("classes")
    except CorruptFileError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is not a usable table
        raise CorruptFileError(f"{path}: not a readable prompt-embedding file ({type(err).__name__}: {err})") from err
    if not isinstance(tensor, Tensor) or tensor.ndim != 2 or not tensor.is_floating_point():
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise CorruptFileError(f"{path}: 'embeddings' must be a (C, T) float tensor, got {shape}; {_HOW}")
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise CorruptFileError(f"{path}: 'classes' must be a list of class names, got {classes!r:.80}; {_HOW}")
    if len(classes) != tensor.shape[0]:
        raise CorruptFileError(f"{path}: {len(classes)} class names for {tensor.shape[0]} embedding rows")
    return PromptTable(str(path), tuple(c.strip() for c in classes), tensor.float())
