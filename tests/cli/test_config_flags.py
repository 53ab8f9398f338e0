"""Task flags generated from the task config dataclasses, the spellings users know, YAML with them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from medmoe.align.task import AlignTaskConfig
from medmoe.cli.config_flags import SET_DEST, add_config_flags, config_from_args, field_docs
from medmoe.cli.main import build_parser
from medmoe.seg.task import SegTaskConfig
from medmoe.train import add_training_arguments
from medmoe.train.args import parse_args, save_resolved_config

TRAINER_FLAGS = {"seed": "seed", "progress": "no_progress"}  # task fields the trainer's flags give


def train_parser(group: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = next(a for a in sub.choices[group]._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    parser.add_deferred_arguments()
    return parser


@pytest.mark.parametrize(("group", "config_cls"), [("align", AlignTaskConfig), ("seg", SegTaskConfig)])
def test_every_task_field_has_a_flag_with_help(group, config_cls):
    parser = train_parser(group)
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(config_cls):
        dest = SET_DEST if f.name == "overrides" else TRAINER_FLAGS.get(f.name, f.name)
        action = by_dest.get(dest)
        assert action is not None, f"{config_cls.__name__}.{f.name} has no flag"
        words = (action.help or "").split("(default")[0].strip()
        assert len(words) > 8, f"--{f.name.replace('_', '-')}: no help text ({action.help!r})"
    assert set(field_docs(config_cls)) >= {f.name for f in dataclasses.fields(config_cls)}


@pytest.mark.parametrize(("group", "config_cls"), [("align", AlignTaskConfig), ("seg", SegTaskConfig)])
def test_defaults_give_the_dataclass_defaults(group, config_cls):
    args = parse_args(build_parser(), [group, "train", "--data", "d", "--out", "o"])
    assert config_from_args(config_cls, args) == config_cls(data="d")


def test_align_spellings_and_shortcuts():
    args = parse_args(build_parser(), [
        "align", "train", "--data", "d", "--out", "o", "--no-augment", "--random-text", "--num-experts", "2",
        "--set", "num_experts=5", "--set", "router_jitter=0.1", "--route-by", "label", "--split", "",
        "--no-text-cache", "--seed", "3", "--no-progress"])
    config = config_from_args(AlignTaskConfig, args)
    assert (config.augment, config.pretrained, config.text_cache, config.split, config.seed) == (False, False, False,
                                                                                                  None, 3)
    assert config.overrides == {"num_experts": 2, "router_jitter": 0.1, "route_by": "label"}  # the shortcut wins
    args = parse_args(build_parser(), ["align", "train", "--data", "d", "--out", "o", "--augment", "--pretrained"])
    assert config_from_args(AlignTaskConfig, args).augment is True


def test_seg_spellings():
    args = parse_args(build_parser(), [
        "seg", "train", "--data", "d", "--out", "o", "--no-cache", "--no-balance", "--augment", "strong",
        "--patch-size", "64", "32", "32", "--spacing", "4.5", "4.5", "3", "--val-split", "", "--soft-labels",
        "--dice-reduction", "sample", "--no-channels-last", "--no-progress"])
    config = config_from_args(SegTaskConfig, args)
    assert (config.cache, config.balance, config.augmentation, config.val_split) == (False, False, "strong", None)
    assert config.patch_size == (64, 32, 32) and config.spacing == (4.5, 4.5, 3.0)
    assert (config.soft_labels, config.dice_reduction, config.channels_last, config.progress) == (True, "sample",
                                                                                                   False, False)


@pytest.mark.parametrize("argv", [["--augment", "heavy"], ["--patch-size", "0", "32", "32"], ["--dice-reduction", "x"]])
def test_bad_seg_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["seg", "train", "--data", "d", "--out", "o", *argv])
    assert argv[0] in capsys.readouterr().err


@dataclass
class FutureLoss:
    """Loss weights.

    Attributes:
        global_weight: weight of the global term.
        local_weight: weight of the local term.
    """

    global_weight: float = 0.5
    local_weight: float = 0.5


@dataclass
class FutureTaskConfig:
    """A task config with a field added later.

    Attributes:
        data: what to train on.
        overrides: model config fields.
        contrast_loss_weight: weight of a loss term added
            after the flags were written.
        mode: how to mix, ``a`` or ``b``.
        crop: crop size, three numbers.
        freeze_text: keep the text tower frozen.
        seed: sampling seed.
        loss: the loss weights.
        schedule: anything JSON can say.
    """

    data: str
    overrides: dict[str, Any] = field(default_factory=dict)
    contrast_loss_weight: float = 0.5
    mode: Literal["a", "b"] = "a"
    crop: tuple[int, int, int] | None = None
    freeze_text: bool = True
    seed: int = 0
    loss: FutureLoss = field(default_factory=FutureLoss)
    schedule: Any = None


def test_a_field_added_to_a_dataclass_gets_a_flag():
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    add_config_flags(parser, FutureTaskConfig, title="future")
    help_text = " ".join(parser.format_help().split())
    assert "--contrast-loss-weight" in help_text and "after the flags were written" in help_text
    assert "--loss-local-weight" in help_text and "weight of the local term" in help_text
    args = parse_args(parser, ["--data", "x", "--out", "o", "--contrast-loss-weight", "0.25", "--mode", "b",
                               "--crop", "1", "2", "3", "--no-freeze-text", "--seed", "4", "--set", "k=1",
                               "--loss-local-weight", "2", "--schedule", '{"warmup": 3}'])
    assert config_from_args(FutureTaskConfig, args) == FutureTaskConfig(
        data="x", overrides={"k": 1}, contrast_loss_weight=0.25, mode="b", crop=(1, 2, 3), freeze_text=False, seed=4,
        loss=FutureLoss(local_weight=2.0), schedule={"warmup": 3})
    assert config_from_args(FutureTaskConfig, parse_args(parser, ["--data", "x", "--out", "o"])) == FutureTaskConfig("x")
    with pytest.raises(SystemExit):
        parse_args(parser, ["--data", "x", "--out", "o", "--mode", "c"])


def test_yaml_takes_the_generated_names_and_the_old_spellings(tmp_path):
    old = tmp_path / "old.yaml"  # keys as run configs saved before the flags were generated
    old.write_text(yaml.safe_dump({"data": "d", "out": "o", "no_augment": True, "random_text": True,
                                   "num_experts": 3, "route_by": None, "set_fields": ["embed_dim=64"]}))
    args = parse_args(build_parser(), ["align", "train", "--config", str(old)])
    config = config_from_args(AlignTaskConfig, args)
    assert (config.augment, config.pretrained, config.overrides) == (False, False, {"embed_dim": 64, "num_experts": 3})
    save_resolved_config(args, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["augment"] is False and saved["pretrained"] is False and "no_augment" not in saved
    again = parse_args(build_parser(), ["align", "train", "--config", str(tmp_path / "saved.yaml")])
    assert config_from_args(AlignTaskConfig, again) == config
    seg = tmp_path / "seg.yaml"
    seg.write_text(yaml.safe_dump({"data": "d", "out": "o", "augment": "strong", "no_cache": True, "balance": False}))
    config = config_from_args(SegTaskConfig, parse_args(build_parser(), ["seg", "train", "--config", str(seg)]))
    assert (config.augmentation, config.cache, config.balance) == ("strong", False, False)


@pytest.mark.parametrize(("data", "message"), [({"patch_size": [64, 32]}, "expected a list of 3 values"),
                                              ({"patch_size": [64, 32, 3.5]}, "invalid value '3.5'"),
                                              ({"augment": "heavy"}, "'heavy' is not one of"),
                                              ({"no_cache": "yes"}, "true or false")])
def test_bad_yaml_values_for_generated_flags(tmp_path, capsys, data, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": "d", "out": "o", **data}))
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["seg", "train", "--config", str(cfg)])
    assert message in capsys.readouterr().err
