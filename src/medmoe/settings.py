"""Settings declared once, as a dataclass: its fields give the command-line flags and the ``--config`` YAML keys.

A field ``batch_size: int = 8`` documented in its class's ``Attributes:`` section becomes ``--batch-size`` with
that type, default and help; the same name (``batch_size`` or ``batch-size``) is the field's key in a YAML run
config. Fields inherited from a base class take their help from the base class's docstring, so a field is
documented in one place. What a type cannot say goes in the field's ``metadata``:

* ``metavar``, ``choices``: as in argparse; ``type``: a converter instead of the field's type;
* ``option``: the flag's spelling when it is not ``--kebab-name`` (``seg train --augment`` for ``augmentation``);
* for the ``dict`` field of model-config changes: ``example`` (a ``KEY=VALUE`` shown in the help) and
  ``shortcuts`` (``{"num_experts": {"type": int, ...}}``: ``--num-experts 4`` means ``--set num_experts=4``
  and wins over it).

``bool`` fields get ``--name`` and ``--no-name``; ``tuple[int, int, int] | None`` takes three values;
``str | None`` takes ``''`` for None; a type with no flag form takes a JSON value.

:class:`SettingsParser` parses in one pass: the YAML of ``--config`` fills the namespace before the command
line is read, so a flag given anywhere on the command line wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Attribute of parsed namespaces: the settings a --config file may set (a saved run config holds those).
SETTINGS_ATTR = "_medmoe_settings"
_CONFIG_FILE_ATTR = "_medmoe_config_file"


def json_value(text: str):
    """``text`` parsed as JSON when it is JSON (numbers, booleans, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None, *, example: str) -> dict:
    """``["feature_size=24", "text.model=tiny-bert"]`` -> nested dict (values parsed as JSON when possible;
    a later pair overrides an earlier one, a nested key included).

    Raises:
        InvalidInputError: a pair without ``=`` or without a key (the message shows ``example``).
    """
    from medmoe.errors import InvalidInputError

    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--set {pair!r}: expected KEY=VALUE, e.g. {example}")
        nested = json_value(value)
        for part in reversed(key.split(".")):
            nested = {part: nested}
        out = _merged(out, nested)  # a later pair wins, as repeated --set flags do
    return out


@dataclass(frozen=True)
class Setting:
    """One flag of a :class:`SettingsParser` as a YAML key sees it.

    Attributes:
        action: the argparse action the flag was added as.
        hint: the field's type (without ``| None``), which a YAML value must have.
        optional: the field takes None.
    """

    action: argparse.Action
    hint: Any
    optional: bool


def field_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` sections of ``cls``'s docstring and its base classes'.

    An entry ``a, b: text`` documents both ``a`` and ``b``; Sphinx roles and literals are reduced to text; a
    class's own entry wins over a base class's.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_attribute_docs(klass.__dict__.get("__doc__") or ""))
    return docs


def _attribute_docs(doc: str) -> dict[str, str]:
    docs: dict[str, list[str]] = {}
    current: list[str] = []
    indent, inside = None, False
    for line in doc.expandtabs().splitlines():
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
    """``--name`` / ``--no-name`` storing True / False."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, false_options: Sequence[str] = (),
                 default: Any = None, help: str | None = None) -> None:  # noqa: A002 (argparse's keyword)
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.false_options = tuple(false_options)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.false_options)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class SetPairs(argparse.Action):
    """``--set KEY=VALUE`` (repeatable): a dotted key sets a nested field; values are read as JSON."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, example: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.example = example

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from medmoe.errors import InvalidInputError

        try:
            pair = parse_overrides([values], example=self.example)
        except InvalidInputError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, _merged(getattr(namespace, self.dest, None) or {}, pair))


def _merged(base: dict, update: dict) -> dict:
    nested = {key: _merged(base[key], value) for key, value in update.items()
              if isinstance(value, dict) and isinstance(base.get(key), dict)}
    return {**base, **update, **nested}


class ConfigFile(argparse.Action):
    """``--config YAML``: read by :class:`SettingsParser` before the command line; this action checks that it was.

    Another parser's ``parse_args`` would take the path and ignore the file, as would an abbreviation
    (``--conf``) that the parser does not look for: both are refused.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, _CONFIG_FILE_ATTR, None) != Path(values):
            parser.error(f"{option_string} {values}: the file was not read; spell the flag out as --config "
                         f"(a medmoe.settings.SettingsParser reads it)")
        setattr(namespace, self.dest, Path(values))


class SettingsParser(argparse.ArgumentParser):
    """An argument parser whose dataclass flags may come from a YAML ``--config``, and may be added on first use.

    Every parser of the ``medmoe`` command is one (sub-parsers take their parent's class).

    Generating ``align train``'s flags imports ``medmoe.align.task`` (seconds); :meth:`defer` postpones it to
    the first parse, ``--help`` or error, so that every other command, and ``medmoe --help``, skip it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: dict[str, Setting] = {}
        self.commands: Any = None  # the sub-commands' action, once add_subparsers is called
        self._deferred: list[Callable[[argparse.ArgumentParser], None]] = []

    def add_subparsers(self, **kwargs: Any):
        """argparse's ``add_subparsers``; the action is kept as :attr:`commands` (the command reference reads it)."""
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Run ``add(self)`` when the parser is first used."""
        self._deferred.append(add)

    def add_deferred_arguments(self) -> None:
        """Add the deferred flags now (once)."""
        while self._deferred:
            self._deferred.pop(0)(self)

    def format_help(self) -> str:
        self.add_deferred_arguments()
        return super().format_help()

    def format_usage(self) -> str:
        self.add_deferred_arguments()
        return super().format_usage()

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        """Parse ``args``; the settings of a ``--config`` file among them are set first (the command line wins)."""
        self.add_deferred_arguments()
        args = list(sys.argv[1:] if args is None else args)
        path = _config_path(args) if any(isinstance(s.action, ConfigFile) for s in self.settings.values()) else None
        namespace = argparse.Namespace() if namespace is None else namespace
        values = self.read_config(path) if path is not None else {}
        vars(namespace).update(values)
        setattr(namespace, _CONFIG_FILE_ATTR, path)
        relaxed = [s.action for dest, s in self.settings.items() if s.action.required and dest in values]
        for action in relaxed:
            action.required = False  # given by the file
        try:
            namespace, extra = super().parse_known_args(args, namespace)
        finally:
            for action in relaxed:
                action.required = True
        delattr(namespace, _CONFIG_FILE_ATTR)
        if self.settings:
            setattr(namespace, SETTINGS_ATTR, sorted(self.settings))
        return namespace, extra

    def read_config(self, path: Path) -> dict[str, Any]:
        """``{dest: value}`` of YAML file ``path``; an unreadable file, unknown key or bad value calls :meth:`error`."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            self.error(f"--config {path}: cannot read ({err.strerror or err})")
        except yaml.YAMLError as err:
            self.error(f"--config {path}: not valid YAML ({err})")
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(f"--config {path}: expected a mapping of setting names to values, got {type(data).__name__}")
        keys = sorted(k for k, s in self.settings.items() if not isinstance(s.action, ConfigFile))
        out = {}
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in keys:
                self.error(f"--config {path}: unknown key '{raw_key}' (valid keys: {', '.join(keys)})")
            try:
                out[key] = yaml_value(self.settings[key], value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                self.error(f"--config {path}: key '{raw_key}': {err}")
        return out


def _config_path(args: Sequence[str]) -> Path | None:
    """The value of the last ``--config PATH`` / ``--config=PATH`` among ``args`` (None without one)."""
    path = None
    for i, token in enumerate(args):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(args):
            path = Path(args[i + 1])
        elif token.startswith("--config="):
            path = Path(token.partition("=")[2])
    return path


def yaml_value(setting: Setting, value: Any) -> Any:
    """``value`` from a YAML file as the flag of ``setting`` would give it.

    Raises:
        ValueError: a value of the wrong type, the wrong number of values, or not one of the choices.
    """
    from medmoe.config import checked_value
    from medmoe.errors import InvalidInputError

    action = setting.action
    if value is None and (setting.optional or action.default is None):
        return None
    if isinstance(action, BoolFlag) and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    convert = action.type if callable(action.type) and action.type not in (int, float, str, json_value) else None
    if isinstance(action.nargs, int) and action.nargs > 0 and (not isinstance(value, list)
                                                               or len(value) != action.nargs):
        raise ValueError(f"expected a list of {action.nargs} values, got {value!r}")
    if convert is not None:
        value = [_converted(convert, v) for v in value] if isinstance(value, list) else _converted(convert, value)
    elif setting.hint is Path and isinstance(value, str):
        value = Path(value)
    elif setting.hint is not Any:
        try:
            value = checked_value(value, setting.hint, action.dest)
        except InvalidInputError as err:
            raise ValueError(str(err).partition(": ")[2]) from None
    for item in value if isinstance(value, list | tuple) else [value]:
        if action.choices is not None and item not in action.choices:
            raise ValueError(f"{item!r} is not one of {list(action.choices)}")
    return list(value) if isinstance(value, tuple) else value


def _converted(convert: Callable[[str], Any], value: Any) -> Any:
    try:
        return convert(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ValueError(f"invalid value {str(value)!r} ({err})") from None


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _is_dict(hint: Any) -> bool:
    return hint is dict or typing.get_origin(hint) is dict


def _kebab(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _default(f: dataclasses.Field) -> Any:
    # f.default is MISSING when the field has a default_factory, or no default at all
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _help(text: str, default: Any, *, is_bool: bool) -> str:
    text = text.rstrip(".")
    if is_bool and default is not None:  # None: the field's help says what deciding by itself means
        text = f"{text} (default: {'on' if default else 'off'})"
    elif default not in (None, dataclasses.MISSING, "", {}):
        shown = " ".join(str(v) for v in default) if isinstance(default, tuple) else default
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def add_dataclass_flags(parser: argparse.ArgumentParser, config_cls: type, *, title: str,
                        skip: Sequence[str] = ()) -> Any:
    """Add a flag for every field of ``config_cls`` (but those named in ``skip``) in a group named ``title``.

    On a :class:`SettingsParser` the flags are also the keys a ``--config`` YAML may set.

    Returns:
        The argument group.
    """
    group = parser.add_argument_group(title)
    docs = field_docs(config_cls)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        hint, optional = _unwrap_optional(hints[f.name])
        doc = docs.get(f.name, "")
        if _is_dict(hint):
            _add_set_flags(parser, group, f, doc)
            continue
        action = group.add_argument(*_spellings(f, hint), **_flag_kwargs(f, hint, optional, doc))
        _record(parser, action, hint, optional)
    return group


def add_config_file_flag(parser: argparse.ArgumentParser, group: Any) -> None:
    """``--config YAML`` in ``group``: a file of settings that the command line overrides."""
    action = group.add_argument("--config", type=Path, metavar="YAML", action=ConfigFile,
                                help="YAML whose keys (setting names, e.g. batch_size: 16) set this command's "
                                     "settings (the command line wins)")
    _record(parser, action, Path, True)


def _record(parser: argparse.ArgumentParser, action: argparse.Action, hint: Any, optional: bool) -> None:
    if isinstance(parser, SettingsParser):
        parser.settings[action.dest] = Setting(action, hint, optional)


def _spellings(f: dataclasses.Field, hint: Any) -> list[str]:
    name = f.metadata.get("option") or _kebab(f.name)
    return [name, f"--no-{name[2:]}"] if hint is bool else [name]


def _flag_kwargs(f: dataclasses.Field, hint: Any, optional: bool, doc: str) -> dict[str, Any]:
    """argparse's keywords for field ``f`` of type ``hint``."""
    meta, default = f.metadata, _default(f)
    if hint is bool:
        return {"dest": f.name, "action": BoolFlag, "default": default, "false_options": _spellings(f, hint)[1:],
                "help": _help(doc, default, is_bool=True)}
    kwargs: dict[str, Any] = {"dest": f.name, "metavar": meta.get("metavar"), "choices": meta.get("choices"),
                              "help": _help(doc, default, is_bool=False)}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
    origin, items = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        kwargs["nargs"] = "+" if len(items) == 2 and items[1] is Ellipsis else len(items)
        kwargs["type"] = meta.get("type") or items[0]
    elif origin is typing.Literal:
        kwargs["choices"], kwargs["type"] = items, meta.get("type") or type(items[0])
    elif hint in (int, float, str, Path):
        # an optional text field takes '' for None
        kwargs["type"] = meta.get("type") or ((lambda t: t or None) if hint is str and optional else hint)
        if hint is str and optional and default:
            kwargs["help"] = _help(f"{doc.rstrip('.')}; '' for none", default, is_bool=False)
    else:
        kwargs["type"] = meta.get("type") or (None if kwargs["choices"] is not None else json_value)
        if kwargs["metavar"] is None and kwargs["choices"] is None:
            kwargs["metavar"] = "JSON"
    return kwargs


def _add_set_flags(parser: argparse.ArgumentParser, group: Any, f: dataclasses.Field, doc: str) -> None:
    """``--set KEY=VALUE`` for the dict field ``f`` of model-config changes, and its shortcut flags."""
    example = f.metadata.get("example", "KEY=VALUE")
    action = group.add_argument(
        "--set", action=SetPairs, dest=f.name, default={}, metavar="KEY=VALUE", example=example,
        help=f"{doc.rstrip('.')}; e.g. --set {example} (repeatable; a dotted key sets a nested field, "
             f"text.max_length=32; values are read as JSON)")
    _record(parser, action, dict, False)
    for name, spec in f.metadata.get("shortcuts", {}).items():
        action = group.add_argument(_kebab(name), dest=name, type=spec.get("type"), choices=spec.get("choices"),
                                    metavar=spec.get("metavar"), default=None,
                                    help=f"{spec['help']}: a shortcut for --set {name}=VALUE (wins over --set)")
        _record(parser, action, spec.get("type") or Any, True)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """The ``config_cls`` that the flags of :func:`add_dataclass_flags` (and any skipped ones) parsed into ``args``.

    A dict field takes ``--set``'s pairs with the shortcut flags' values over them.
    """
    data = vars(args)
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint, _ = _unwrap_optional(hints[f.name])
        if _is_dict(hint):
            shortcuts = {k: data[k] for k in f.metadata.get("shortcuts", {}) if data.get(k) is not None}
            value = {**(value or {}), **shortcuts}
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[f.name] = value
    return config_cls(**values)
