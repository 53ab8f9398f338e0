"""Tiny MedMoE models for the align tests: tiny-bert text, a 16-channel Swin, 64 px images."""

import argparse

import torch

import medmoe
from medmoe.align.task import AlignTask
from medmoe.train import add_training_arguments
from medmoe.train.logs import read_metrics

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


def write_tiny_manifest(root, n_per_modality: int = 8, bad: bool = True):
    """A small real manifest: PNG images of two 'modalities' with findings the reports describe.

    X-rays are bright ellipses (one or two "lungs" with or without a dark "effusion" band), CTs are grey
    discs with or without a bright "nodule". One extra row points to a corrupt PNG (a bad sample).
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    rows = ["image,report,modality,labels,dataset,split"]
    splits = ["train"] * (n_per_modality - 2) + ["val", "test"]
    for i in range(n_per_modality):
        for modality in ("xray", "ct"):
            finding = i % 2 == 0
            if modality == "xray":
                img = 0.3 + 0.6 * (((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1)
                if finding:
                    img[48:, :] *= 0.3
                report, label = ("Chest x-ray: pleural effusion at the base." if finding else
                                 "Chest x-ray: clear lungs, no effusion."), ("effusion" if finding else "normal")
            else:
                img = 0.2 + 0.4 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16)
                if finding:
                    img[20:26, 38:44] = 1.0
                report, label = ("CT abdomen: small bright nodule in the right lobe." if finding else
                                 "CT abdomen: no nodule, normal study."), ("nodule" if finding else "normal")
            img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
            name = f"{modality}_{i:02d}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
            rows.append(f'{name},"{report}",{modality},{label},tiny,{splits[i]}')
    if bad:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n not really")
        rows.append('broken.png,"Chest x-ray: broken file.",xray,normal,tiny,train')
    path = root / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def ddp_model():
    """The model of the DDP test: no BatchNorm (per-sample outputs), eval mode (no dropout / jitter), a
    learnable temperature; identical weights on every rank."""
    model = tiny_model(refine_depth=0, learn_logit_scale=True, logit_scale=5.0)
    return model.eval()


def ddp_batch():
    g = torch.Generator().manual_seed(7)
    images = torch.randn(8, 3, 64, 64, generator=g)
    return images, [REPORTS[i % len(REPORTS)] + f" Item {i}." for i in range(8)]


class CrashingTask(AlignTask):
    """An AlignTask whose training step raises at call ``crash_at_call`` (an interrupted run)."""

    def __init__(self, config, crash_at_call=None):
        super().__init__(config)
        self.crash_at_call, self.calls = crash_at_call, 0

    def training_step(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise RuntimeError("simulated crash")
        return super().training_step(model, batch)


def args_for(out, *extra):
    """Trainer flags of a tiny CPU run writing to ``out`` (plus ``extra`` flags)."""
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    base = ["--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4",
            "--lr", "2e-3", "--warmup-steps", "1", "--log-every", "1"]
    return parser.parse_args(base + list(extra))


def logged_losses(run_dir):
    """{step: {loss name: value}} from a run folder's metrics.jsonl."""
    return {row["step"]: {k: v for k, v in row.items() if k.endswith("loss")}
            for row in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in row}


def crash_and_resume(config, tmp_path, flags, crash_at_call=5):
    """A reference run, the same run crashed at training call ``crash_at_call`` and resumed from its newest
    checkpoint. Returns ``(ref_dir, result of the resumed run, ref losses, resumed losses)``."""
    import pytest

    from medmoe.train import run_training

    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run_training(CrashingTask(config), args_for(ref_dir, *flags))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(CrashingTask(config, crash_at_call=crash_at_call), args_for(run_dir, *flags))
    result = run_training(CrashingTask(config), args_for(run_dir, *flags, "--resume", "latest"))
    return ref_dir, result, logged_losses(ref_dir), logged_losses(run_dir)
