"""Tiny MedMoE models for the align tests: tiny-bert text, a 16-channel Swin, 64 px images."""

import torch

import medmoe

TINY = {
    "text": {"model": "tiny-bert", "max_length": 24, "freeze": "none"},
    "backbone": {"image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                 "window_size": 2, "drop_path_rate": 0.0},
    "local_dim": 32,
    "embed_dim": 24,
    "scale_hidden": 16,
    "router_hidden": 16,
}

REPORTS = [
    "Chest radiograph: mild cardiomegaly, no effusion.",
    "CT abdomen: 4 mm nodule in the left lobe.",
    "MRI brain: no acute lesion.",
    "Ultrasound: hypoechoic mass, posterior shadowing.",
]


def tiny_model(**overrides):
    """A registered medmoe-nano with the tiny overrides (random text weights, no download)."""
    torch.manual_seed(0)
    return medmoe.create_model("medmoe-nano", **{**TINY, **overrides})
