"""The class template: which structures MoME can be prompted for, and how each dataset's label ids map to them.

The classes are data (``template.json``, ``label_maps.json`` next to this module), not code. The template's
order is the channel order of multi-hot labels: channel k of a label tensor is ``ClassTemplate.names[k]``.

Two relations tie classes together:

- ``parts``: a class that is the union of finer classes (``kidney`` = right + left kidney; ``lung_right`` =
  its three lobes). A dataset that labels every part also labels the union.
- ``parent``: the organ a lesion (tumour or cyst) lies in. An organ's mask includes its lesions, as the
  Universal Model does, because public label maps store them as exclusive ids (KiTS: 1 kidney, 2 tumour).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from medmoe.errors import InvalidInputError

log = logging.getLogger(__name__)

KINDS = ("organ", "vessel", "bone", "muscle", "tumour", "cyst")
LESION_KINDS = ("tumour", "cyst")
DEFAULT_PROMPT = "A computerized tomography of a {display}"

_PROMPT_PREFIX = re.compile(
    r"^(?:an? )?(?:(?:computeri[sz]ed|computed) tomography|ct)(?: scan| image)?(?: of)?(?: (?:an?|the))? "
)
_SIDE_WORDS = ("left", "right")
_FUZZY_CUTOFF = 0.8


@dataclass(frozen=True)
class ClassInfo:
    """One class of the template.

    Attributes:
        name: canonical identifier (snake_case, e.g. ``"kidney_right"``).
        display: words used in the prompt (``"right kidney"``).
        kind: one of ``organ, vessel, bone, muscle, tumour, cyst``.
        parent: for a lesion, the class it lies in; else None.
        parts: classes whose union this class is (empty for a leaf class).
        synonyms: other names that resolve to this class.
    """

    name: str
    display: str
    kind: str
    parent: str | None = None
    parts: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()


def normalize_text(text: str) -> str:
    """Lower-case words separated by single spaces; ``tumor`` spelled ``tumour``; prompt prefix removed.

    >>> normalize_text("A computerized tomography of a Kidney_Tumor.")
    'kidney tumour'
    """
    text = text.lower().replace("_", " ").replace("-", " ").replace("/", " ")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _PROMPT_PREFIX.sub("", text + " ").strip()
    return re.sub(r"\btumors?\b", "tumour", text)


def dataset_key(name: str) -> str:
    """Case- and punctuation-insensitive key of a dataset name (``"MSD-Task03-Liver"`` -> ``"msdtask03liver"``)."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _sides(words: list[str], *, fuzzy: bool) -> set[str]:
    return {side for word in words for side in _SIDE_WORDS
            if word == side
            or (fuzzy and len(word) >= 3 and difflib.SequenceMatcher(None, word, side).ratio() >= 0.75)}


def _words_agree(query: list[str], key: list[str]) -> bool:
    """Every word is a near-copy of its counterpart, so a typo resolves but "heart tumour" is not "liver tumour"."""
    if len(query) == len(key):
        return all(difflib.SequenceMatcher(None, a, b).ratio() >= 0.7 for a, b in zip(query, key))
    return difflib.SequenceMatcher(None, "".join(query), "".join(key)).ratio() >= 0.9


class ClassTemplate:
    """Ordered class names, prompts, synonym resolution and per-dataset label maps.

    Args:
        classes: the classes, in channel order.
        label_maps: dataset name -> {"labels": {id: class name}, "aliases": [...], ...} as in ``label_maps.json``.
        prompt_template: format string with a ``{display}`` field.
        sets: named class subsets (e.g. ``"universal"``: the Universal Model's 32 classes, ``"btcv"``: 13).

    Example:
        >>> t = ClassTemplate.default()
        >>> t.resolve("A computerized tomography of a livr")
        'liver'
        >>> t.label_map("BTCV")[1], t.prompt("kidney_right")
        ('spleen', 'A computerized tomography of a right kidney')
    """

    def __init__(self, classes: Iterable[ClassInfo], label_maps: Mapping[str, Mapping] | None = None, *,
                 prompt_template: str = DEFAULT_PROMPT, sets: Mapping[str, list[str]] | None = None) -> None:
        self._classes: dict[str, ClassInfo] = {}
        for info in classes:
            if info.name in self._classes:
                raise InvalidInputError(f"class template: duplicate class {info.name!r}")
            if info.kind not in KINDS:
                raise InvalidInputError(f"class template: {info.name!r} has kind {info.kind!r}; expected one of {KINDS}")
            self._classes[info.name] = info
        self.names: tuple[str, ...] = tuple(self._classes)
        self._components: dict[str, frozenset[str]] = {}
        for info in self._classes.values():
            for ref in (*info.parts, *([info.parent] if info.parent else [])):
                if ref not in self._classes:
                    raise InvalidInputError(f"class template: {info.name!r} refers to unknown class {ref!r}")
            if info.kind in LESION_KINDS and not info.parent:
                raise InvalidInputError(f"class template: lesion {info.name!r} needs a parent organ")
        if "{display}" not in prompt_template:
            raise InvalidInputError(f"prompt template {prompt_template!r} lacks a '{{display}}' field")
        self.prompt_template = prompt_template
        self._lookup = self._build_lookup()
        self._sets = {k: list(v) for k, v in (sets or {}).items()}
        for set_name, members in self._sets.items():
            self._check_names(members, where=f"class set {set_name!r}")
        self._datasets: dict[str, dict] = {}
        self._dataset_keys: dict[str, str] = {}
        for name, entry in (label_maps or {}).items():
            self.register_label_map(name, entry["labels"], aliases=entry.get("aliases", ()))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_files(cls, template_path: str | Path, label_maps_path: str | Path | None = None) -> ClassTemplate:
        """Load a template JSON (and optionally a label-map JSON) in the packaged format."""
        doc = _read_json(template_path)
        try:
            classes = [
                ClassInfo(name=c["name"], display=c.get("display", c["name"].replace("_", " ")), kind=c["kind"],
                          parent=c.get("parent"), parts=tuple(c.get("parts", ())), synonyms=tuple(c.get("synonyms", ())))
                for c in doc["classes"]
            ]
        except (KeyError, TypeError) as err:
            raise InvalidInputError(f"{template_path}: malformed class entry ({err!r}); expected name, kind, ...") from err
        maps = _read_json(label_maps_path)["datasets"] if label_maps_path else {}
        return cls(classes, maps, prompt_template=doc.get("prompt", DEFAULT_PROMPT), sets=doc.get("sets"))

    @classmethod
    def default(cls) -> ClassTemplate:
        """The packaged template (Universal Model classes + unions + TotalSegmentator v2 'total' classes).

        A fresh copy each call, so registering a dataset on it never leaks into other users.
        """
        root = Path(str(resources.files("medmoe.seg.classes")))
        return cls.from_files(root / "template.json", root / "label_maps.json")

    def _build_lookup(self) -> dict[str, str]:
        lookup: dict[str, str] = {}
        for info in self._classes.values():
            for text in (info.name, info.display, *info.synonyms):
                key = normalize_text(text)
                if lookup.get(key, info.name) != info.name:
                    raise InvalidInputError(
                        f"class template: {text!r} names both {lookup[key]!r} and {info.name!r}")
                lookup[key] = info.name
        return lookup

    # ----------------------------------------------------------------- classes
    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self):
        return iter(self.names)

    def info(self, name: str) -> ClassInfo:
        """The :class:`ClassInfo` of a canonical class name."""
        if name not in self._classes:
            raise InvalidInputError(f"unknown class {name!r}; see ClassTemplate.names ({len(self)} classes)")
        return self._classes[name]

    def class_set(self, set_name: str) -> list[str]:
        """A named subset of classes (``"universal"``, ``"btcv"``) or ``"all"``."""
        if set_name == "all":
            return list(self.names)
        if set_name not in self._sets:
            raise InvalidInputError(f"unknown class set {set_name!r}; known: {['all', *sorted(self._sets)]}")
        return list(self._sets[set_name])

    def prompt(self, name: str) -> str:
        """The text prompt of a class, e.g. ``"A computerized tomography of a right kidney"``.

        ``name`` may be a synonym or a typo of a class; an unknown name is put in the template as given.
        """
        canonical = self.resolve(name)
        display = self._classes[canonical].display if canonical else name.strip()
        return self.prompt_template.format(display=display)

    def resolve(self, text: str) -> str | None:
        """The canonical class a name, synonym or prompt refers to, tolerating small typos; None if unknown.

        Left/right and numbers must agree, so ``"rib left 1"`` never resolves to ``rib_left_11`` and
        ``"left kidny"`` never to ``kidney_right``; each word must be close to its counterpart, so an unseen
        class (``"heart tumour"``) gives None rather than a look-alike (``liver_tumour``).
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"a class prompt must be a string, got {type(text).__name__}")
        query = normalize_text(text)
        if not query:
            return None
        if query in self._lookup:
            return self._lookup[query]
        words = query.split()
        want_sides = _sides(words, fuzzy=True)
        want_numbers = re.findall(r"\d+", query)
        for key in difflib.get_close_matches(query, list(self._lookup), n=5, cutoff=_FUZZY_CUTOFF):
            if (re.findall(r"\d+", key) == want_numbers and _sides(key.split(), fuzzy=False) == want_sides
                    and _words_agree(words, key.split())):
                log.debug("prompt %r resolved to %r via %r", text, self._lookup[key], key)
                return self._lookup[key]
        return None

    def is_tumour(self, name: str) -> bool:
        """True for tumour classes (not cysts)."""
        return self.info(name).kind == "tumour"

    def is_lesion(self, name: str) -> bool:
        """True for tumours and cysts: classes that lie inside a parent organ."""
        return self.info(name).kind in LESION_KINDS

    def parent_organ(self, name: str) -> str | None:
        """The organ a lesion lies in (``"liver_tumour"`` -> ``"liver"``); None for non-lesions."""
        return self.info(name).parent

    def components(self, name: str) -> frozenset[str]:
        """Classes whose voxels belong to ``name``: itself, its parts (recursively) and the lesions inside."""
        if name not in self._components:
            members = [*self.info(name).parts, *(o.name for o in self._classes.values() if o.parent == name)]
            self._components[name] = frozenset({name}.union(*map(self.components, members)))
        return self._components[name]

    def _check_names(self, names: Iterable[str], *, where: str) -> None:
        unknown = [n for n in names if n not in self._classes]
        if unknown:
            raise InvalidInputError(f"{where}: unknown class(es) {unknown}; expected names of the class template")

    # ----------------------------------------------------------------- datasets
    @property
    def datasets(self) -> list[str]:
        """Names of the datasets with a label map."""
        return list(self._datasets)

    def register_label_map(self, dataset: str, labels: Mapping[int | str, str], *, aliases: Iterable[str] = ()) -> None:
        """Add (or replace) a dataset's label map: voxel id -> class name (names may be synonyms)."""
        mapping: dict[int, str] = {}
        for raw_id, cls_name in labels.items():
            try:
                label_id = int(raw_id)
            except (TypeError, ValueError) as err:
                raise InvalidInputError(f"dataset {dataset!r}: label id {raw_id!r} is not an integer") from err
            if label_id <= 0:
                raise InvalidInputError(f"dataset {dataset!r}: label id {label_id} must be >= 1 (0 is background)")
            canonical = cls_name if cls_name in self._classes else self.resolve(cls_name)
            if canonical is None:
                raise InvalidInputError(f"dataset {dataset!r}: label {label_id} names unknown class {cls_name!r}")
            mapping[label_id] = canonical
        for key in (dataset_key(dataset), *map(dataset_key, aliases)):
            owner = self._dataset_keys.get(key, dataset)
            if owner != dataset:
                raise InvalidInputError(f"dataset name/alias {key!r} is already used by {owner!r}")
            self._dataset_keys[key] = dataset
        self._datasets[dataset] = dict(sorted(mapping.items()))

    def dataset_name(self, dataset: str) -> str:
        """Canonical name of a dataset given by name or alias (``"task09"`` -> ``"MSD-Task09-Spleen"``)."""
        key = dataset_key(dataset)
        if key not in self._dataset_keys:
            raise InvalidInputError(f"no label map for dataset {dataset!r}; known: {self.datasets}")
        return self._dataset_keys[key]

    def label_map(self, dataset: str) -> dict[int, str]:
        """Label id -> canonical class name of a dataset (a copy)."""
        return dict(self._datasets[self.dataset_name(dataset)])

    def labelled_classes(self, dataset: str) -> list[str]:
        """Classes a dataset annotates, in template order: those its ids name, plus unions of labelled parts."""
        direct = set(self.label_map(dataset).values())

        @functools.cache
        def labelled(name: str) -> bool:
            parts = self._classes[name].parts
            return name in direct or (bool(parts) and all(labelled(p) for p in parts))

        return [n for n in self.names if labelled(n)]

    def label_mask(self, dataset: str, names: Iterable[str] | None = None) -> torch.Tensor:
        """(K,) bool: which of ``names`` (default: all template classes) the dataset annotates."""
        names = self.names if names is None else list(names)
        self._check_names(names, where="label_mask")
        labelled = set(self.labelled_classes(dataset))
        return torch.tensor([n in labelled for n in names], dtype=torch.bool)

    def lookup_table(self, dataset: str, names: Iterable[str] | None = None) -> np.ndarray:
        """(max_id + 1, K) bool: row i says which classes a voxel of label id i belongs to (row 0: none)."""
        names = self.names if names is None else list(names)
        self._check_names(names, where="lookup_table")
        mapping = self.label_map(dataset)
        table = np.zeros((max(mapping, default=0) + 1, len(names)), dtype=bool)
        for k, name in enumerate(names):
            members = self.components(name)
            for label_id, cls_name in mapping.items():
                table[label_id, k] = cls_name in members
        return table

    def multi_hot(self, label: np.ndarray | torch.Tensor, dataset: str, names: Iterable[str] | None = None):
        """Integer label volume -> multi-hot class channels.

        Args:
            label: (*S) integer label ids of ``dataset``; a (1, D, H, W) MONAI channel-first volume counts as
                (D, H, W).
            dataset: dataset name or alias.
            names: classes to produce (default: the whole template, in order).

        Returns:
            (K, *S) bool, numpy or torch like ``label``. Channels of classes the dataset does not annotate
            are all False; use :meth:`label_mask` to tell "absent" from "not labelled". Ids missing from the
            label map count as background (logged once per call).
        """
        table = self.lookup_table(dataset, names)
        is_torch = isinstance(label, torch.Tensor)
        array = label.detach().cpu().numpy() if is_torch else np.asarray(label)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise InvalidInputError(f"label volume of {dataset!r} holds non-integer values; expected label ids")
            array = array.astype(np.int64)
        unknown = np.setdiff1d(np.unique(array), np.arange(table.shape[0]))
        if unknown.size:
            log.warning("label ids %s are not in the %s label map; treated as background", unknown.tolist()[:10],
                        self.dataset_name(dataset))
            array = np.where(np.isin(array, unknown), 0, array)
        if array.min(initial=0) < 0:
            raise InvalidInputError(f"label volume of {dataset!r} has negative ids")
        out = np.moveaxis(table[array], -1, 0)
        return torch.from_numpy(np.ascontiguousarray(out)) if is_torch else out


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InvalidInputError(f"{path}: file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from err
