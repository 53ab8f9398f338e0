"""Command-line flags of every training command, and YAML run configs that set their defaults.

``add_training_arguments(parser)`` adds the common flags to a (sub-)parser and makes ``--config FILE``
work for *every* flag of that parser, including the task's own: the YAML's keys (``batch_size`` or
``batch-size``) become the parser's defaults, so flags given on the command line still win wherever they
appear. A key that the parser has no flag for is an error naming the key.
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
    g.add_argument("--config", type=Path, metavar="YAML",
                   help="YAML whose keys set the defaults of this command's flags (command line wins)")
    g.add_argument("--steps", type=int, default=d.steps, help="optimiser steps of the whole run")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per micro-batch per rank")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up, then cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr as a fraction of --lr")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="micro-batches per optimiser step")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, help="max gradient norm (0: no clipping)")
    g.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="mixed precision: auto = bf16 where the GPU computes it natively (compute "
                        "capability >= 8), else fp16 with loss scaling; off on CPU")
    g.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)} or cuda:N")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes per rank (started once, kept for the whole run)")
    g.add_argument("--seed", type=int, default=d.seed)
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
    g.add_argument("--resume", metavar="latest|PATH",
                   help="continue from the newest complete checkpoint in RUN_DIR (latest) or from PATH")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    _enable_yaml_defaults(parser)
    return parser


def _enable_yaml_defaults(parser: argparse.ArgumentParser) -> None:
    # The YAML must be read before the parser runs (defaults are applied when parsing starts), and the
    # CLI's subparsers call `parse_known_args` on this very parser object, so wrap it there.
    if getattr(parser, "_medmoe_yaml_defaults", False):
        return
    original = parser.parse_known_args

    def parse_known_args(args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        argv = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        pre.add_argument("--config", type=Path)
        try:
            config = pre.parse_known_args(argv)[0].config
        except argparse.ArgumentError:
            config = None  # e.g. --config without a value: the real parser reports it properly
        values: dict[str, Any] = {}
        if config is not None:
            values = yaml_defaults(parser, config)
        namespace = namespace if namespace is not None else argparse.Namespace()
        for key, value in values.items():
            if not hasattr(namespace, key):
                setattr(namespace, key, value)
        # A flag that YAML provides is no longer required on the command line.
        relaxed = [a for a in parser._actions if a.required and a.dest in values]
        for action in relaxed:
            action.required = False
        try:
            ns, extras = original(argv, namespace)
        finally:
            for action in relaxed:
                action.required = True
        setattr(ns, CONFIG_KEYS_ATTR, sorted(_settable_actions(parser)))
        return ns, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    parser._medmoe_yaml_defaults = True  # type: ignore[attr-defined]


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
        if action is None:
            valid = ", ".join(sorted(k for k in actions if k != "config"))
            parser.error(f"--config {path}: unknown key '{raw_key}' (valid keys: {valid})")
        out[key] = _typed(parser, path, raw_key, action, value)
    return out


def _typed(parser: argparse.ArgumentParser, path: Path, key: Any, action: argparse.Action, value: Any) -> Any:
    def convert(v: Any) -> Any:
        if isinstance(v, str) and callable(action.type):
            try:
                return action.type(v)
            except (TypeError, ValueError) as err:
                parser.error(f"--config {path}: key '{key}': invalid value {v!r} ({err})")
        if action.type in (int, float) and isinstance(v, int | float) and not isinstance(v, bool):
            return action.type(v) if action.type is float or float(v).is_integer() else v
        return v

    value = [convert(v) for v in value] if isinstance(value, list) else convert(value)
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction) and not isinstance(value, bool):
        parser.error(f"--config {path}: key '{key}': expected true or false, got {value!r}")
    if action.type is int and not (isinstance(value, int) and not isinstance(value, bool)) and value is not None:
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
