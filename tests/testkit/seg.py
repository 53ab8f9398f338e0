"""Shared helpers of the seg data / prediction / metrics tests: sample packs built once per session and a
small stand-in segmentation model with MoME's inference interface."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from torch import nn

from medmoe.seg.classes import ClassTemplate
from medmoe_samples.ct.phantom_pack import build_phantom_pack
from medmoe_samples.ct.totalseg import TOTALSEG_SDIST_NAME, build_totalseg_pack

_BUILT: dict[str, Path] = {}
# Where `make setup` puts the TotalSegmentator sdist in this checkout (tests may run from any folder).
TOTALSEG_SDIST = Path(__file__).resolve().parents[2] / ".cache" / TOTALSEG_SDIST_NAME
HU_WINDOW = (-175.0, 250.0)


def phantom_datalist(tmp_path_factory) -> Path:
    """A tiny phantom pack (2 train + 1 validation per dataset, 2 test), built once per session."""
    if "phantoms" not in _BUILT:
        root = tmp_path_factory.mktemp("phantom_pack")
        _BUILT["phantoms"] = build_phantom_pack(root, seed=3, sizes=(2, 1, 2), progress=False)
    return _BUILT["phantoms"]


def totalseg_datalist(tmp_path_factory) -> Path | None:
    """The TotalSegmentator example pack extracted once per session; None when the tarball is absent."""
    if "totalseg" not in _BUILT:
        if not TOTALSEG_SDIST.is_file():
            return None
        _BUILT["totalseg"] = build_totalseg_pack(tmp_path_factory.mktemp("totalseg_pack"), sdist=TOTALSEG_SDIST)
    return _BUILT["totalseg"]


TOTALSEG_SKIP = ("totalsegmentator-2.18.0.tar.gz not found (run `make setup`, which downloads it into .cache/); "
                 "the real-CT tests need it")


def windowed(hu: float) -> float:
    return (hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])


class BandModel(nn.Module):
    """Stand-in for MoME at inference: class k is "windowed intensity inside band k".

    ``embed_prompts`` returns (K, 2) band limits; ``forward(volume, text_emb=...)`` returns (B, K, *S)
    logits ``sharpness * min(x - lo, hi - x)`` of the volume after an optional 3x3x3 mean filter (which makes
    the output depend on neighbouring voxels, like a real network).
    """

    BANDS_HU = {"liver": (35.0, 85.0), "kidney_right": (120.0, 175.0), "kidney_left": (120.0, 175.0),
                "aorta": (160.0, 230.0), "spleen": (35.0, 85.0), "liver_tumour": (-5.0, 30.0),
                "bone": (200.0, 4000.0), "fat": (-150.0, -50.0)}

    def __init__(self, roi_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0), smooth: bool = True, sharpness: float = 40.0,
                 bands_hu: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        self.bands_hu = {**self.BANDS_HU, **(bands_hu or {})}
        self.config = SimpleNamespace(roi_size=tuple(roi_size), spacing=tuple(spacing), hu_window=HU_WINDOW)
        self.template = ClassTemplate.default()
        self.sharpness = sharpness
        self.smooth = nn.Conv3d(1, 1, 3, padding=1, bias=False) if smooth else None
        if self.smooth is not None:
            nn.init.constant_(self.smooth.weight, 1.0 / 27.0)
        self.register_buffer("dummy", torch.zeros(1))
        self.windows_seen = 0

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            name = self.template.resolve(p) or p
            lo, hi = self.bands_hu[name]
            rows.append([windowed(lo), windowed(hi)])
        return torch.tensor(rows, dtype=torch.float32)

    def forward(self, volume: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        self.windows_seen += volume.shape[0]
        x = self.smooth(volume) if self.smooth is not None else volume
        lo = text_emb[:, 0].view(1, -1, 1, 1, 1)
        hi = text_emb[:, 1].view(1, -1, 1, 1, 1)
        return self.sharpness * torch.minimum(x - lo, hi - x)


def write_dicom_series(folder: Path, volume_hu: np.ndarray, *, spacing=(0.8, 0.8, 2.5), origin=(-20.0, -30.0, 100.0),
                       modality: str = "CT", slope: float = 1.0, intercept: float = -1024.0,
                       shuffle_names: bool = True) -> Path:
    """Write (X, Y, Z) HU as a classic one-file-per-slice DICOM series (axial, LPS, rows = y, columns = x)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    n = volume_hu.shape[2]
    order = np.random.default_rng(0).permutation(n) if shuffle_names else np.arange(n)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{order[k]:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series_uid, study_uid, frame_uid
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = volume_hu.shape[1], volume_hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.rint((volume_hu[:, :, k].T - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"s{order[k]:03d}.dcm", enforce_file_format=True)
    return folder


def read_dicom_header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
