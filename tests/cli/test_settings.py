"""Flags and YAML keys generated from the settings dataclasses, with the spellings the docs show."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from medmoe.align.losses import AlignLossWeights
from medmoe.align.task import AlignTaskConfig
from medmoe.cli.main import build_parser
from medmoe.seg.task import SegTaskConfig
from medmoe.settings import SettingsParser, add_dataclass_flags, config_from_args, field_docs, parse_overrides
from medmoe.train import TrainConfig, add_training_arguments
from medmoe.train.args import save_resolved_config

TRAINER_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
TASKS = [("align", AlignTaskConfig), ("seg", SegTaskConfig)]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def settings_of(config_cls: type) -> SettingsParser:
    """A parser with the flags of ``medmoe align|seg train`` for ``config_cls``."""
    parser = SettingsParser(prog="train")
    add_dataclass_flags(parser, config_cls, title="task", skip=TRAINER_FIELDS)
    add_training_arguments(parser)
    return parser


@pytest.mark.parametrize(("group", "config_cls"), TASKS)
def test_every_task_and_trainer_field_has_a_flag_with_help(group, config_cls):
    settings = settings_of(config_cls).settings
    for f in [*dataclasses.fields(config_cls), *dataclasses.fields(TrainConfig)]:
        setting = settings.get(f.name)
        assert setting is not None, f"{f.name} has no flag"
        words = (setting.action.help or "").split("(default")[0].strip()
        assert len(words) > 8, f"--{f.name.replace('_', '-')}: no help text ({setting.action.help!r})"


def test_loss_weights_are_documented_once_where_they_are_declared():
    own_doc = AlignTaskConfig.__doc__
    for f in dataclasses.fields(AlignLossWeights):
        assert f"{f.name}:" not in own_doc and f"{f.name}:" in AlignLossWeights.__doc__
        assert field_docs(AlignTaskConfig)[f.name] == field_docs(AlignLossWeights)[f.name]
    help_text = " ".join(settings_of(AlignTaskConfig).format_help().split())
    assert "--distill-loss-weight DISTILL_LOSS_WEIGHT weight of the image router's distillation" in help_text


@pytest.mark.parametrize(("group", "config_cls"), TASKS)
def test_defaults_give_the_dataclass_defaults(group, config_cls):
    args = parse([group, "train", "--data", "d", "--out", "o"])
    assert config_from_args(config_cls, args) == config_cls(data="d")
    assert TrainConfig.from_namespace(args) == TrainConfig(out="o")


def test_align_spellings_and_shortcuts():
    args = parse([
        "align", "train", "--data", "d", "--out", "o", "--no-augment", "--no-pretrained", "--num-experts", "2",
        "--set", "num_experts=5", "--set", "router_jitter=0.1", "--route-by", "label", "--split", "",
        "--no-text-cache", "--seed", "3", "--no-progress", "--set", "text.max_length=32", "--set", "text.freeze=all"])
    config = config_from_args(AlignTaskConfig, args)
    assert (config.augment, config.pretrained, config.text_cache, config.split, config.seed) == (False, False, False,
                                                                                                  None, 3)
    assert config.overrides == {"num_experts": 2, "router_jitter": 0.1, "route_by": "label",  # the shortcut wins
                                "text": {"max_length": 32, "freeze": "all"}}
    assert TrainConfig.from_namespace(args).progress is False
    args = parse(["align", "train", "--data", "d", "--out", "o", "--augment", "--pretrained"])
    assert config_from_args(AlignTaskConfig, args).augment is True


def test_a_malformed_set_pair_is_a_usage_error_with_an_example(capsys):
    with pytest.raises(SystemExit):
        parse(["align", "train", "--data", "d", "--out", "o", "--set", "num_experts"])
    assert "expected KEY=VALUE, e.g. num_experts=4" in capsys.readouterr().err


def test_later_set_pairs_override_earlier_ones_nested_keys_included():
    pairs = ["text=1", "text.model=tiny-bert", "backbone.depths=[1, 1]", "backbone.kind=swin", "text.model=x"]
    assert parse_overrides(pairs, example="K=V") == {"text": {"model": "x"},
                                                     "backbone": {"depths": [1, 1], "kind": "swin"}}


def test_seg_spellings():
    args = parse([
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
        parse(["seg", "train", "--data", "d", "--out", "o", *argv])
    assert argv[0] in capsys.readouterr().err


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
        schedule: anything JSON can say.
    """

    data: str
    overrides: dict[str, Any] = field(default_factory=dict)
    contrast_loss_weight: float = 0.5
    mode: Literal["a", "b"] = "a"
    crop: tuple[int, int, int] | None = None
    freeze_text: bool = True
    schedule: Any = None


def test_a_field_added_to_a_dataclass_gets_a_flag_and_a_yaml_key(tmp_path):
    parser = SettingsParser()
    add_dataclass_flags(parser, FutureTaskConfig, title="future")
    add_training_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "--contrast-loss-weight" in help_text and "after the flags were written" in help_text
    args = parser.parse_args(["--data", "x", "--out", "o", "--contrast-loss-weight", "0.25", "--mode", "b",
                              "--crop", "1", "2", "3", "--no-freeze-text", "--set", "k=1", "--schedule", '{"warmup": 3}'])
    expected = FutureTaskConfig(data="x", overrides={"k": 1}, contrast_loss_weight=0.25, mode="b", crop=(1, 2, 3),
                                freeze_text=False, schedule={"warmup": 3})
    assert config_from_args(FutureTaskConfig, args) == expected
    assert config_from_args(FutureTaskConfig, parser.parse_args(["--data", "x", "--out", "o"])) == FutureTaskConfig("x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "x", "--out", "o", "--mode", "c"])
    cfg = tmp_path / "future.yaml"
    cfg.write_text(yaml.safe_dump({"data": "x", "out": "o", "contrast_loss_weight": 0.25, "mode": "b", "crop": [1, 2, 3],
                                   "freeze_text": False, "overrides": {"k": 1}, "schedule": {"warmup": 3}}))
    assert config_from_args(FutureTaskConfig, parser.parse_args(["--config", str(cfg)])) == expected


def test_yaml_keys_are_the_field_names_and_a_saved_config_loads_back(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"data": "d", "out": "o", "augment": False, "pretrained": False, "num_experts": 3,
                                   "overrides": {"embed_dim": 64}, "distill_loss_weight": 0.25}))
    args = parse(["align", "train", "--config", str(run), "--set", "text.max_length=32"])
    config = config_from_args(AlignTaskConfig, args)
    assert (config.augment, config.pretrained, config.distill_loss_weight) == (False, False, 0.25)
    assert config.overrides == {"embed_dim": 64, "text": {"max_length": 32}, "num_experts": 3}
    save_resolved_config(args, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["augment"] is False and saved["overrides"] == {"embed_dim": 64, "text": {"max_length": 32}}
    again = parse(["align", "train", "--config", str(tmp_path / "saved.yaml")])
    assert config_from_args(AlignTaskConfig, again) == config
    seg = tmp_path / "seg.yaml"
    seg.write_text(yaml.safe_dump({"data": "d", "out": "o", "augmentation": "strong", "cache": False, "balance": False}))
    config = config_from_args(SegTaskConfig, parse(["seg", "train", "--config", str(seg)]))
    assert (config.augmentation, config.cache, config.balance) == ("strong", False, False)


@pytest.mark.parametrize(("data", "message"), [({"patch_size": [64, 32]}, "expected a list of 3 values"),
                                              ({"patch_size": [64, 32, 3.5]}, "invalid value '3.5'"),
                                              ({"augmentation": "heavy"}, "'heavy' is not one of"),
                                              ({"cache": "yes"}, "true or false"),
                                              ({"no_cache": True}, "unknown key 'no_cache'"),
                                              ({"overrides": ["feature_size=24"]}, "key 'overrides'")])
def test_bad_yaml_values_name_the_file_and_the_key(tmp_path, capsys, data, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": "d", "out": "o", **data}))
    with pytest.raises(SystemExit):
        parse(["seg", "train", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err


def test_transformers_hf_argument_parser_cannot_read_a_three_value_field():
    """transformers' HfArgumentParser gives ``patch_size: tuple[int, int, int] | None`` one value, so
    ``--patch-size 64 32 32`` leaves two unread; the settings parser reads the three."""
    from transformers import HfArgumentParser

    @dataclass
    class Patch:
        patch_size: tuple[int, int, int] | None = None

    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['32', '32'\]"):
        HfArgumentParser(Patch).parse_args_into_dataclasses(["--patch-size", "64", "32", "32"])
    parser = SettingsParser()
    add_dataclass_flags(parser, Patch, title="patch")
    assert config_from_args(Patch, parser.parse_args(["--patch-size", "64", "32", "32"])) == Patch((64, 32, 32))
