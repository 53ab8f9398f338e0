"""The model card: every saved model folder has a README.md saying what it is, what it started from and
how it was trained; the folder still loads and can still be replaced."""

from __future__ import annotations

import argparse

from testkit.align import TINY, write_tiny_manifest

import medmoe
from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.model_card import write_model_card
from medmoe.saved_model import check_replaceable
from medmoe.train import add_training_arguments, run_training


def test_a_saved_model_has_a_card_naming_its_architecture_and_weights(tmp_path):
    model = medmoe.create_model("mome-nano", text={"model": "tiny-bert"}, backbone={"init_weights": ""})
    folder = model.save_pretrained(tmp_path / "mome")
    card = (folder / "README.md").read_text()
    assert card.startswith("# mome-nano\n")
    assert "registered name: `mome-nano`" in card and "MoME segmentation (mome)" in card
    params = sum(p.numel() for p in model.parameters())
    assert f"parameters: {params:,}" in card and f"experts: {model.num_scales}" in card
    assert "backbone: swinunetr" in card and "feature size: 12" in card and "window (voxels): 32, 32, 32" in card
    assert "text encoder (`text.model`): tiny-bert" in card
    assert "whole network (`backbone.init_weights`): none" in card and "random initialisation" in card
    assert "not recorded (saved outside the trainer)" in card
    assert 'medmoe.load_model("' in card and f"medmoe version: {medmoe.__version__}" in card

    # a folder with its card loads, and saving over it is allowed (the card is medmoe's own file)
    loaded = medmoe.load_model(folder)
    check_replaceable(folder)
    loaded.save_pretrained(folder, card={"metrics": {"dice/liver": 0.5}})
    assert "| dice/liver | 0.5 |" in (folder / "README.md").read_text()


def test_card_lists_training_facts_and_metrics_in_order(tmp_path):
    model = medmoe.create_model("mome-nano", text={"model": "tiny-bert"})
    path = write_model_card(tmp_path, model, training={"extra": "x|y", "steps": 7, "data": "a.json"},
                            metrics={"dice": 0.25})
    card = path.read_text()
    assert card.index("- data: a.json") < card.index("- steps: 7") < card.index("- extra: x\\|y")
    assert "| dice | 0.25 |" in card


def test_a_trained_models_card_names_its_steps_data_and_validation(tmp_path):
    manifest = write_tiny_manifest(tmp_path, n_per_modality=4, bad=True)
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "run"), "--device", "cpu", "--workers", "0", "--no-progress",
                              "--batch-size", "4", "--steps", "2", "--seed", "5", "--eval-every", "2"])
    config = AlignTaskConfig(data=str(manifest), model="medmoe-nano", overrides=dict(TINY), val_data=str(manifest))
    result = run_training(AlignTask(config), args)

    card = (result.model_dir / "README.md").read_text()
    assert card.startswith("# medmoe-nano\n") and "experts: 6" in card
    assert f"- data: {manifest}" in card and f"- val data: {manifest}" in card and "- model: medmoe-nano" in card
    assert "- steps: 2" in card and "- batch size: 4" in card and "- seed: 5" in card
    assert f"- bad samples: {result.bad_samples}" in card and "- date: 20" in card
    assert result.validation and all(f"| {name} |" in card for name in result.validation)
    assert medmoe.load_model(result.model_dir).config.embed_dim == TINY["embed_dim"]
