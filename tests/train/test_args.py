"""Training flags generated from TrainConfig, and YAML run configs that set them (the command line wins)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from medmoe.errors import InvalidInputError
from medmoe.settings import SettingsParser, add_dataclass_flags
from medmoe.train import TrainConfig, add_training_arguments
from medmoe.train.args import resolved_config, save_resolved_config


@dataclasses.dataclass
class TaskSettings:
    """A task's settings.

    Attributes:
        data: what to train on.
        model: which model.
    """

    data: Path
    model: str = "medmoe-nano"


def cli_parser(parser_class: type = SettingsParser) -> argparse.ArgumentParser:
    """Shaped like `medmoe align train`: a sub-command with the trainer's flags and its own."""
    parser = argparse.ArgumentParser(prog="medmoe")
    sub = parser.add_subparsers(dest="command", parser_class=parser_class)
    train = sub.add_parser("train")
    add_dataclass_flags(train, TaskSettings, title="task")
    add_training_arguments(train)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_args(argv)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_sets_defaults_of_trainer_and_task_flags(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", {
        "out": str(tmp_path / "run"), "data": "manifest.csv", "model": "medmoe-swin-t",
        "lr": 3e-4, "batch-size": 16, "amp": "bf16", "progress": False,
    })
    args = parse_args(cli_parser(), ["train", "--config", str(cfg)])
    assert args.out == tmp_path / "run" and isinstance(args.out, Path)  # the flag's type applies
    assert args.data == Path("manifest.csv")  # a required flag may come from YAML
    assert (args.model, args.lr, args.batch_size, args.amp, args.progress) == ("medmoe-swin-t", 3e-4, 16, "bf16", False)
    assert args.steps == 1000  # untouched default


def test_command_line_wins_over_yaml_wherever_it_appears(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", {"out": "a", "data": "d", "lr": 3e-4, "steps": 50})
    before = parse_args(cli_parser(), ["train", "--lr", "1e-4", "--config", str(cfg)])
    after = parse_args(cli_parser(), ["train", "--config", str(cfg), "--lr", "1e-4", "--steps", "7"])
    assert before.lr == after.lr == 1e-4  # 1e-4 is also the built-in default: YAML must not override it
    assert (before.steps, after.steps) == (50, 7)


def test_unknown_key_is_an_error_naming_it(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "run.yaml", {"out": "a", "data": "d", "learning_rate": 0.1})
    with pytest.raises(SystemExit) as info:
        parse_args(cli_parser(), ["train", "--config", str(cfg)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err and str(cfg) in err and "lr" in err


@pytest.mark.parametrize(
    ("data", "message"),
    [({"steps": "many"}, "key 'steps'"), ({"amp": "fp8"}, "'fp8' is not one of"), ({"progress": "yes"}, "true or false"),
     ({"steps": 2.5}, "expected an integer"), ([1, 2], "expected a mapping")],
)
def test_bad_yaml_values_are_errors(tmp_path, capsys, data, message):
    cfg = write_yaml(tmp_path / "run.yaml", data)
    with pytest.raises(SystemExit):
        parse_args(cli_parser(), ["train", "--data", "d", "--out", "o", "--config", str(cfg)])
    assert message in capsys.readouterr().err


def test_missing_config_file_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(cli_parser(), ["train", "--data", "d", "--out", "o", "--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in capsys.readouterr().err


def test_resolved_config_loads_back_to_the_same_settings(tmp_path):
    args = parse_args(cli_parser(), ["train", "--data", "d.csv", "--out", str(tmp_path / "r"), "--lr", "2e-3",
                                    "--resume", "latest", "--workers", "0"])
    saved = resolved_config(args)
    assert "resume" not in saved and "config" not in saved and "command" not in saved
    save_resolved_config(args, tmp_path / "config.yaml")
    again = parse_args(cli_parser(), ["train", "--config", str(tmp_path / "config.yaml")])
    for key in saved:
        assert getattr(again, key) == getattr(args, key), key
    assert again.resume is None


def test_train_config_validates_early(tmp_path):
    with pytest.raises(InvalidInputError, match="--steps 0"):
        TrainConfig(out=tmp_path, steps=0)
    with pytest.raises(InvalidInputError, match="--amp"):
        TrainConfig(out=tmp_path, amp="fp8")
    with pytest.raises(InvalidInputError, match="--out"):
        TrainConfig.from_namespace(argparse.Namespace(out=None))
    cfg = TrainConfig.from_namespace(argparse.Namespace(out="x", progress=False, lr=1e-3, model="ignored"))
    assert cfg.progress is False and cfg.lr == 1e-3 and cfg.out == Path("x")


def test_example_config_in_the_repository_is_valid():
    example = Path(__file__).parents[2] / "configs" / "trainer-example.yaml"
    args = parse_args(cli_parser(), ["train", "--data", "d", "--out", "o", "--config", str(example)])
    assert (args.steps, args.batch_size, args.lr, args.amp) == (2000, 32, 2e-4, "auto")
    TrainConfig.from_namespace(args)  # passes validation


def test_config_is_read_only_by_a_settings_parser(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "run.yaml", {"out": "a", "data": "d", "lr": 3e-4})
    with pytest.raises(SystemExit):  # a plain argparse parser would ignore the file: refused, not silent
        cli_parser(argparse.ArgumentParser).parse_args(["train", "--data", "d", "--out", "o", "--config", str(cfg)])
    assert "was not read" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an abbreviation that the parser does not look for
        parse_args(cli_parser(), ["train", "--data", "d", "--out", "o", "--conf", str(cfg)])
    assert "spell the flag out as --config" in capsys.readouterr().err


def test_a_parse_with_a_config_leaves_the_parser_as_it_was(tmp_path):
    parser = cli_parser()
    cfg = write_yaml(tmp_path / "run.yaml", {"out": "a", "data": "d", "lr": 3e-4})
    assert parse_args(parser, ["train", "--config", str(cfg)]).lr == 3e-4
    with pytest.raises(SystemExit):  # --data is required: the YAML of the parse above left no default behind
        parse_args(parser, ["train", "--out", "o"])
    assert parse_args(parser, ["train", "--data", "d", "--out", "o"]).lr == 1e-4
