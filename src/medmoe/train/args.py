"""Command-line flags of every training command, and YAML run configs that set their defaults.

``add_training_arguments(parser)`` adds the common flags to a (sub-)parser, among them ``--config FILE``.
:func:`parse_args` parses a command line in two passes: a pre-parser reads ``--config``, the YAML's keys
(``batch_size`` or ``batch-size``) are checked against the command's flags and become their defaults
(``parser.set_defaults``), then the real parse runs, so flags given on the command line win wherever
they appear. A key that the command has no flag for is an error naming the key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medmoe.train.config import AMP_MODES, DEVICES, TrainConfig

# Attribute set on parsed namespaces: the destinations a --config file may set (used to save the
# resolved config so that it loads back with --config).
CONFIG_KEYS_ATTR = "_medmoe_config_keys"
# Never written to the saved run config: re-using it must not resume or chain configs by surprise.
_NOT_SAVED = {"config", "resume", "func"}


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's flags (see ``medmoe <group> train --help``) and YAML support to ``parser``."""
    d = TrainConfig(out=Path("."))
    g = parser.add_argument_group("training")
    g.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                   help="run directory: checkpoints/, tb/, metrics.jsonl, summary.json, model/")
    g.add_argument("--config", type=Path, metavar="YAML", action=ConfigFileAction,
                   help="YAML whose keys (flag names, e.g. batch_size: 16) set the defaults of this command's "
                        "flags (command line wins)")
    g.add_argument("--steps", type=int, default=d.steps, help="optimiser steps of the whole run")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per micro-batch per rank")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up, then cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr as a fraction of --lr")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="micro-batches per optimiser step")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, help="max gradient norm (0: no clipping)")
    g.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="mixed precision: auto = bf16 where the GPU computes it natively (compute "
                        "capability >= 8), else fp16 with loss scaling; off on CPU")
    g.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)} or cuda:N")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes per rank (started once, kept for the whole run)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the model's initialisation, data order and augmentation")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep-ckpts", type=int, default=d.keep_ckpts, help="keep the newest N checkpoints")
    g.add_argument("--log-every", type=int, default=d.log_every, help="metrics.jsonl / TensorBoard every N steps")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="validate every N steps (0: only at the end, if the task validates)")
    g.add_argument("--max-nonfinite-steps", type=int, default=d.max_nonfinite_steps,
                   help="abort after this many consecutive steps with a non-finite loss")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (its compile_targets); falls back to eager if compiling fails")
    g.add_argument("--compile-backend", default=d.compile_backend, metavar="NAME",
                   help="torch.compile backend: inductor (default), aot_eager, eager (debugging), ...")
    g.add_argument("--dist-timeout", type=float, default=d.dist_timeout, metavar="MINUTES",
                   help="under torchrun: minutes before a collective that some rank never joins stops every rank "
                        "(default %(default)g; NCCL's own default is 10)")
    g.add_argument("--resume", metavar="latest|PATH",
                   help="continue from the newest complete checkpoint in RUN_DIR (latest) or from PATH")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


class ConfigFileAction(argparse.Action):
    """``--config FILE``: read by :func:`parse_args` before the real parse; this action only checks that it was.

    A parser's own ``parse_args`` would otherwise take the path and silently ignore the file (as would an
    abbreviation such as ``--conf`` that the pre-parser does not know).
    """

    loaded: Path | None = None

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.loaded is None or Path(values) != self.loaded:
            parser.error(f"{option_string} {values}: the file was not read; spell the flag out as --config "
                         f"(programs parse with medmoe.train.args.parse_args)")
        setattr(namespace, self.dest, values)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``parser``, the YAML of ``--config`` giving defaults.

    Two passes: the command's parser (``parser`` or the sub-command ``argv`` selects) is found, a pre-parser
    reads its ``--config``, the file's values are checked against that parser's flags and set with
    ``set_defaults`` (a required flag that the YAML gives is no longer required), then ``parser`` parses
    ``argv``. The parser is left as it was. A command without ``--config`` is parsed as usual.

    Returns:
        The namespace; for a training command it also records which keys a config may set
        (:func:`resolved_config` saves those).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_parser(parser, argv)
    if hasattr(command, "add_deferred_arguments"):  # flags added on first use (medmoe.cli.config_flags)
        command.add_deferred_arguments()
    config_action = next((a for a in command._actions if isinstance(a, ConfigFileAction)), None)
    if config_action is None:
        return parser.parse_args(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument(*config_action.option_strings, dest="config", type=Path)
    try:
        path = pre.parse_known_args(argv)[0].config
    except argparse.ArgumentError:
        path = None  # e.g. --config without a value: the real parser reports it properly
    values = yaml_defaults(command, path) if path is not None else {}
    saved_defaults = dict(command._defaults), {a: a.default for a in command._actions}
    relaxed = [a for a in command._actions if a.required and a.dest in values]
    command.set_defaults(**values)
    for action in relaxed:
        action.required = False
    config_action.loaded = path
    try:
        ns = parser.parse_args(argv)
    finally:
        command._defaults.clear()
        command._defaults.update(saved_defaults[0])
        for action, default in saved_defaults[1].items():
            action.default = default
        for action in relaxed:
            action.required = True
        config_action.loaded = None
    setattr(ns, CONFIG_KEYS_ATTR, sorted(_settable_actions(command)))
    return ns


def _command_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub-)parser that ``argv``'s command words select (``align train`` -> the ``train`` parser)."""
    current = parser
    for token in argv:
        subparsers = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            break
        if token in subparsers[0].choices:
            current = subparsers[0].choices[token]
    return current


def _settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return {
        a.dest: a
        for a in parser._actions
        if a.option_strings and not isinstance(a, skip) and a.dest != argparse.SUPPRESS
    }


def yaml_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """Read ``path`` and return ``{dest: value}`` for ``parser``; bad files or keys call ``parser.error``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        parser.error(f"--config {path}: cannot read ({err.strerror or err})")
    except yaml.YAMLError as err:
        parser.error(f"--config {path}: not valid YAML ({err})")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values, got {type(data).__name__}")
    actions = _settable_actions(parser)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == "config":
            parser.error(f"--config {path}: key 'config' is not allowed inside a config file")
        action = actions.get(key)
        spelling = f"--{key.replace('_', '-')}"
        if action is None:
            # a flag's other spelling (``no_augment: true`` for ``--no-augment``, as older run configs saved it)
            action = next((a for a in actions.values() if spelling in a.option_strings), None)
        if action is None:
            valid = ", ".join(sorted(k for k in actions if k != "config"))
            parser.error(f"--config {path}: unknown key '{raw_key}' (valid keys: {valid})")
        value = _typed(parser, path, raw_key, action, value)
        if action.dest != key and hasattr(action, "value_of"):
            value = action.value_of(spelling, value)
        out[action.dest] = value
    return out


def _typed(parser: argparse.ArgumentParser, path: Path, key: Any, action: argparse.Action, value: Any) -> Any:
    def convert(v: Any) -> Any:
        if callable(action.type) and action.type not in (int, float) and isinstance(v, int | float) \
                and not isinstance(v, bool):
            v = str(v)  # a checking type such as a positive count reads the number's text
        if isinstance(v, str) and callable(action.type):
            try:
                return action.type(v)
            except (TypeError, ValueError) as err:
                parser.error(f"--config {path}: key '{key}': invalid value {v!r} ({err})")
        if action.type in (int, float) and isinstance(v, int | float) and not isinstance(v, bool):
            return action.type(v) if action.type is float or float(v).is_integer() else v
        return v

    value = [convert(v) for v in value] if isinstance(value, list) else convert(value)
    if action.nargs == 0 and not isinstance(action, argparse._CountAction) and not isinstance(value, bool):
        parser.error(f"--config {path}: key '{key}': expected true or false, got {value!r}")
    if isinstance(action, argparse._AppendAction) and value is not None and not isinstance(value, list):
        value = [value]
    if isinstance(action.nargs, int) and action.nargs > 0 and value is not None:
        if not isinstance(value, list) or len(value) != action.nargs:
            parser.error(f"--config {path}: key '{key}': expected a list of {action.nargs} values, got {value!r}")
    items = value if isinstance(value, list) else [value]
    if action.type is int and any(not isinstance(v, int) or isinstance(v, bool) for v in items if v is not None):
        parser.error(f"--config {path}: key '{key}': expected an integer, got {value!r}")
    if action.choices is not None and value is not None:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in action.choices]
        if bad:
            parser.error(f"--config {path}: key '{key}': {bad[0]!r} is not one of {list(action.choices)}")
    return value


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as plain YAML-ready values, loadable again with ``--config``."""
    data = vars(args)
    keys = data.get(CONFIG_KEYS_ATTR) or [k for k in data if not k.startswith("_")]
    out: dict[str, Any] = {}
    for key in keys:
        if key in _NOT_SAVED or key not in data:
            continue
        value = _plain(data[key])
        if value is not _UNSET:
            out[key] = value
    return out


_UNSET = object()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return _UNSET if any(v is _UNSET for v in items) else items
    if isinstance(value, dict):
        items = {str(k): _plain(v) for k, v in value.items()}
        return _UNSET if any(v is _UNSET for v in items.values()) else items
    return _UNSET


def save_resolved_config(args: argparse.Namespace, path: Path) -> None:
    """Write :func:`resolved_config` as YAML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(resolved_config(args), sort_keys=True))
    tmp.replace(path)
