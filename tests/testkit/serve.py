"""Small models and files for the serve tests: a tiny MedMoE, a small gallery manifest, a MoME that always
finds its classes, phantom CTs as NIfTI and as a zipped DICOM series, and bad uploads."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

import medmoe
from medmoe_samples.ct.phantoms import FOV_MM  # noqa: F401  (the phantoms' field of view, for test sizes)
from testkit.align import TINY
from testkit.seg import write_dicom_series

SEG_CLASSES = ("liver", "spleen", "kidney_right", "liver_tumour")
REPORTS = {
    "xray": ("Chest x-ray: pleural effusion at the right base.", "Chest x-ray: clear lungs, no effusion."),
    "ct": ("CT abdomen: small bright nodule in the liver.", "CT abdomen: normal study, no nodule."),
}


def tiny_align_model() -> torch.nn.Module:
    """A medmoe-nano with the align tests' tiny overrides (tiny-bert text, 64 px images), random weights."""
    torch.manual_seed(0)
    return medmoe.create_model("medmoe-nano", **TINY).eval()


def write_gallery(root: Path, per_kind: int = 4) -> Path:
    """``root/manifest.csv`` over ``2 * per_kind`` PNGs: bright "chest" ellipses and grey "CT" discs, with
    reports; returns the manifest path."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    rows = ["image,report,modality"]
    for i in range(per_kind):
        for kind in ("xray", "ct"):
            if kind == "xray":
                img = 0.25 + 0.6 * (((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1)
                if i % 2 == 0:
                    img[70:, :] *= 0.3
            else:
                img = 0.2 + 0.4 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16)
                if i % 2 == 0:
                    img[30:40, 55:65] = 1.0
            img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
            name = f"{kind}_{i:02d}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
            rows.append(f'{name},"{REPORTS[kind][i % 2]}",{kind}')
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def always_finding_seg_model(spacing: float = 8.0) -> torch.nn.Module:
    """A mome-nano (random weights, ``spacing`` mm, 32^3 windows) whose heads' last bias is raised by 6, so
    that every prompted class comes out with probability ~1 everywhere: the page then has masks to draw
    (random weights alone predict none). What it finds means nothing; the pipeline around it is real."""
    torch.manual_seed(0)
    model = medmoe.create_model("mome-nano", spacing=(spacing,) * 3, pretrained=False, classes=list(SEG_CLASSES))
    with torch.no_grad():
        model.heads.controller.bias[-1] += 6.0
    model.config.trained_classes = SEG_CLASSES
    return model.eval()


def phantom_volume(spacing: float = 8.0):
    """A synthetic abdominal CT phantom (int16 HU, RAS affine) on a ``spacing`` mm grid."""
    from medmoe_samples.ct.phantoms import Grid, render_phantom

    return render_phantom(0, Grid.make(spacing=(spacing,) * 3))


def phantom_nifti(path: Path, spacing: float = 8.0) -> Path:
    from medmoe.data.volumes import write_nifti

    phantom = phantom_volume(spacing)
    return write_nifti(phantom.image, phantom.affine, path)


def phantom_dicom_zip(path: Path, work: Path, spacing: float = 8.0) -> Path:
    """The phantom as a zipped one-file-per-slice DICOM series (inside a sub-folder, with a README)."""
    phantom = phantom_volume(spacing)
    folder = write_dicom_series(work / "series", phantom.image.astype(np.float64), spacing=(spacing,) * 3)
    with zipfile.ZipFile(path, "w") as archive:
        for f in sorted(folder.iterdir()):
            archive.write(f, f"patient/series/{f.name}")
        archive.writestr("README.txt", "exported by a PACS")
    return path


def corrupt_png(path: Path) -> Path:
    """A file named .png whose bytes stop after the PNG signature."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return path
