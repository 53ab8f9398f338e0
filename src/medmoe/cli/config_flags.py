"""Command-line flags generated from a task's config dataclass, and the parsed flags mapped back to it.

Every field of ``AlignTaskConfig`` / ``SegTaskConfig`` becomes ``--kebab-name`` with the field's type and
default; its help text is the field's entry in the class docstring's ``Attributes:`` section (or
``field(metadata={"help": ...})``). A field added to the dataclass gets its flag with no list to update.

* ``bool`` fields get ``--name`` and ``--no-name``.
* ``tuple[int, int, int] | None`` takes three values; ``str | None`` takes ``''`` for None.
* The ``dict`` field (the model overrides) is ``--set KEY=VALUE`` (repeatable); model-config *shortcuts*
  (``--num-experts 4``) are the same as ``--set num_experts=4`` and win over it.
* A field whose flag the trainer already has (``--seed``, ``--no-progress``) is read from that flag.
* A nested dataclass field ``loss`` gives ``--loss-<subfield>`` flags; any other type takes a JSON value.

What a dataclass cannot say (the spellings users have typed for years, choices of an ``Any`` field, a
metavar) is in :data:`STYLES` and :data:`SHORTCUTS`, keyed by the config class's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medmoe.cli.overrides import json_value, parse_overrides

SET_DEST = "set_fields"


def positive_int(text: str) -> int:
    """A positive integer (voxel counts)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return value


@dataclass(frozen=True)
class FlagStyle:
    """How one field's flag is presented beyond what its type and docs give.

    Attributes:
        option: the flag's main spelling when it is not ``--kebab-name`` (which then stays as an alias).
        aliases: more spellings of the flag (for a bool: spellings that set True).
        false_aliases: for a bool, more spellings that set False (``--random-text`` for ``pretrained``).
        choices: the values the flag takes.
        metavar: the value's name in ``--help``.
        type: a converter instead of the field's type (e.g. :func:`positive_int`).
        help: added after the docstring's text.
    """

    option: str | None = None
    aliases: tuple[str, ...] = ()
    false_aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    metavar: str | tuple[str, ...] | None = None
    type: Any = None
    help: str = ""


STYLES: dict[str, dict[str, FlagStyle]] = {
    "AlignTaskConfig": {
        "data": FlagStyle(metavar="MANIFEST|SHARDS"),
        "val_data": FlagStyle(metavar="MANIFEST|SHARDS"),
        "pretrained": FlagStyle(false_aliases=("--random-text",)),
        "text_cache_gb": FlagStyle(metavar="GB"),
        "upcycle_steps": FlagStyle(metavar="N"),
        "augmentation": FlagStyle(choices=("mild", "domain")),
    },
    "SegTaskConfig": {
        "data": FlagStyle(metavar="DATALIST"),
        "patch_size": FlagStyle(type=positive_int, metavar=("X", "Y", "Z")),
        "spacing": FlagStyle(metavar=("SX", "SY", "SZ")),
        "cache_dir": FlagStyle(metavar="DIR"),
        "augmentation": FlagStyle(option="--augment", choices=("light", "strong", "none")),
        "dice_reduction": FlagStyle(choices=("batch", "sample")),
        "pretrained": FlagStyle(false_aliases=("--random-text",)),
    },
}

# Model-config fields with a flag of their own: shortcuts of ``--set FIELD=VALUE``.
SHORTCUTS: dict[str, dict[str, FlagStyle]] = {
    "AlignTaskConfig": {
        "num_experts": FlagStyle(type=int, metavar="K", help="the model's number of experts"),
        "route_by": FlagStyle(choices=("text", "image", "label"), help="what routes in training"),
    },
}


# The ``--set`` example shown in --help and in the error for a malformed pair.
SET_EXAMPLES = {"AlignTaskConfig": "num_experts=4", "SegTaskConfig": "feature_size=24"}


def set_example(config_cls: type) -> str:
    """A ``--set`` pair that makes sense for ``config_cls``'s models."""
    return SET_EXAMPLES.get(config_cls.__name__, "KEY=VALUE")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of ``cls``'s docstring (one line per field).

    An entry ``a, b: text`` documents both ``a`` and ``b``; Sphinx roles and literals are reduced to text.
    """
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    docs: dict[str, list[str]] = {}
    current: list[str] = []
    indent = None
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside, indent = True, None
            continue
        if not inside or not stripped:
            continue
        here = len(line) - len(line.lstrip())
        indent = here if indent is None else indent
        if here < indent:
            break
        entry = re.match(r"(\w+(?:\s*,\s*\w+)*)\s*:\s*(.*)", stripped) if here == indent else None
        if entry:
            current = [entry.group(2)]
            for name in re.split(r"\s*,\s*", entry.group(1)):
                docs[name] = current
        elif current:
            current.append(stripped)
    return {name: _plain_text(" ".join(parts)) for name, parts in docs.items()}


def _plain_text(text: str) -> str:
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text)
    return re.sub(r"\s+", " ", text.replace("``", "")).strip()


class BoolFlag(argparse.Action):
    """``--name`` / ``--no-name`` (and other spellings) storing True / False."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, false_options: Sequence[str] = (),
                 default: Any = None, help: str | None = None) -> None:  # noqa: A002 (argparse's keyword)
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.false_options = tuple(false_options)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.value_of(option_string, True))

    def value_of(self, option_string: str | None, given: bool) -> bool:
        """The field's value when ``option_string`` is given (``given``) or set false in a YAML config."""
        return given != (option_string in self.false_options)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _optional_text(text: str) -> str | None:
    return text or None


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _kebab(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help(text: str, default: Any, extra: str, *, is_bool: bool) -> str:
    text = " ".join(t for t in (text.rstrip("."), extra) if t)
    if is_bool and default is not None:  # None: the field's help says what deciding by itself means
        text = f"{text} (default: {'on' if default else 'off'})"
    elif default is not None and default is not dataclasses.MISSING and default != "":
        shown = " ".join(str(v) for v in default) if isinstance(default, tuple) else default
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, *, title: str | None = None) -> None:
    """Add a flag for every field of ``config_cls`` to ``parser`` (in a group named ``title``).

    Call it after the trainer's flags (``add_training_arguments``): a field whose ``--name`` or
    ``--no-name`` the parser already has is read from that flag by :func:`config_from_args`. A nested
    dataclass field ``loss: LossWeights`` gives ``--loss-<subfield>`` flags (dest ``loss.<subfield>``); a
    type with no flag form takes a JSON value.
    """
    group = parser.add_argument_group(title) if title else parser
    _add_fields(parser, group, config_cls, STYLES.get(config_cls.__name__, {}), prefix="")
    if any(_is_dict(h) for h in typing.get_type_hints(config_cls).values()):
        group.add_argument("--set", action="append", dest=SET_DEST, metavar="KEY=VALUE",
                           help=f"change a field of the model's config, e.g. --set {set_example(config_cls)} "
                                f"(repeatable; a dotted key sets a nested field, text.max_length=32; values are "
                                f"read as JSON). A saved model takes only settings that keep its weights valid")
    for name, s in SHORTCUTS.get(config_cls.__name__, {}).items():
        group.add_argument(_kebab(name), dest=name, type=s.type, choices=s.choices, metavar=s.metavar,
                           default=None, help=f"{s.help}: a shortcut for --set {name}=VALUE (wins over --set)")


def _is_dict(hint: Any) -> bool:
    hint, _ = _unwrap_optional(hint)
    return hint is dict or typing.get_origin(hint) is dict


def _add_fields(parser: argparse.ArgumentParser, group: Any, config_cls: type, style: dict[str, FlagStyle], *,
                prefix: str) -> None:
    docs = field_docs(config_cls)
    hints = typing.get_type_hints(config_cls)
    taken = parser._option_string_actions
    for f in dataclasses.fields(config_cls):
        hint, optional = _unwrap_optional(hints[f.name])
        dest = f"{prefix}{f.name}"
        if _is_dict(hint):
            continue  # --set, added once
        if dataclasses.is_dataclass(hint):
            _add_fields(parser, group, hint, style, prefix=f"{dest}.")
            continue
        flag = _kebab(dest.replace(".", "_"))
        if flag in taken or f"--no-{flag[2:]}" in taken:
            continue
        s = style.get(dest, FlagStyle())
        doc = f.metadata.get("help") or docs.get(f.name, "")
        default = _default(f)
        names = [s.option, flag, *s.aliases] if s.option else [flag, *s.aliases]
        if hint is bool:
            negated = [f"--no-{n[2:]}" for n in names]
            group.add_argument(*names, *negated, *s.false_aliases, dest=dest,
                               action=BoolFlag, false_options=(*negated, *s.false_aliases), default=default,
                               help=_help(doc, default, s.help, is_bool=True))
            continue
        kwargs: dict[str, Any] = {"dest": dest, "metavar": s.metavar, "choices": s.choices,
                                  "help": _help(doc, default, s.help, is_bool=False)}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        if typing.get_origin(hint) is list:
            kwargs["nargs"] = "*"
            kwargs["type"] = s.type or typing.get_args(hint)[0]
        elif typing.get_origin(hint) is tuple:
            items = typing.get_args(hint)
            kwargs["nargs"] = "+" if len(items) == 2 and items[1] is Ellipsis else len(items)
            kwargs["type"] = s.type or items[0]
        elif typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = typing.get_args(hint)
            kwargs["type"] = s.type or type(typing.get_args(hint)[0])
        elif hint in (int, float, str):
            kwargs["type"] = s.type or (_optional_text if hint is str and optional else hint)
            if hint is str and optional and default:
                kwargs["help"] = _help(f"{doc.rstrip('.')}; '' for none", default, s.help, is_bool=False)
        else:
            kwargs["type"] = s.type or (None if s.choices is not None else json_value)
            if kwargs["metavar"] is None and s.choices is None:
                kwargs["metavar"] = "JSON"
        group.add_argument(*names, **kwargs)


class DeferredFlagsParser(argparse.ArgumentParser):
    """A sub-command parser whose task flags are added when it is first used (a parse, ``--help``, an error).

    Generating ``align train``'s flags imports ``medmoe.align.task`` (seconds); deferring it keeps every
    other command, and ``medmoe --help``, from paying for it. ``medmoe.train.args.parse_args`` calls
    :meth:`add_deferred_arguments` before it checks a YAML config against the flags.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[typing.Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, add: typing.Callable[[argparse.ArgumentParser], None]) -> None:
        """Run ``add(self)`` when the parser is first used."""
        self._deferred.append(add)

    def add_deferred_arguments(self) -> None:
        """Add the deferred flags now (once)."""
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        self.add_deferred_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.add_deferred_arguments()
        return super().format_help()

    def format_usage(self) -> str:
        self.add_deferred_arguments()
        return super().format_usage()


def add_task_flags(parser: argparse.ArgumentParser, config_path: str, *, title: str) -> None:
    """Task flags of ``config_path`` (``"medmoe.align.task:AlignTaskConfig"``) in group ``title``, listed
    before the trainer's; deferred until the parser is used when it is a :class:`DeferredFlagsParser`."""

    def add(target: argparse.ArgumentParser) -> None:
        import importlib

        module, name = config_path.split(":")
        add_config_flags(target, getattr(importlib.import_module(module), name), title=title)
        groups = target._action_groups
        groups.insert(2, groups.pop())  # after positionals and options, before "training"

    if isinstance(parser, DeferredFlagsParser):
        parser.defer(add)
    else:
        add(parser)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """The ``config_cls`` that the flags of :func:`add_config_flags` (and the trainer's) describe.

    Args:
        config_cls: the task config dataclass.
        args: the parsed namespace.

    Raises:
        InvalidInputError: a malformed ``--set`` pair.
    """
    return _build(config_cls, vars(args), prefix="", top=config_cls)


def _build(config_cls: type, data: dict[str, Any], *, prefix: str, top: type) -> Any:
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        hint, _ = _unwrap_optional(hints[f.name])
        dest = f"{prefix}{f.name}"
        if _is_dict(hint):
            pairs = list(data.get(SET_DEST) or [])
            for name in SHORTCUTS.get(top.__name__, {}):
                if data.get(name) is not None:
                    pairs.append(f"{name}={json.dumps(data[name])}")
            values[f.name] = parse_overrides(pairs, example=set_example(top))
        elif dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, data, prefix=f"{dest}.", top=top)
        elif dest in data:
            value = data[dest]
            values[f.name] = tuple(value) if isinstance(value, list) and typing.get_origin(hint) is tuple else value
        elif f"no_{dest}" in data:
            values[f.name] = not data[f"no_{dest}"]
    return config_cls(**values)
