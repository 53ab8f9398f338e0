"""What the fuzz tests share: lowered size limits, seed files of every format, byte mutations, and a
measure of the peak memory one call takes (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from medmoe.errors import MedMoEError

# Limits low enough that anything a reader is allowed to decode stays far under MEMORY_BOUND.
LIMITS = {"MEDMOE_MAX_PIXELS": "4000000", "MEDMOE_MAX_VOXELS": "8000000", "MEDMOE_MAX_MEMBER_BYTES": "8000000"}
MEMORY_BOUND = 384 * 2**20  # peak bytes one call may add, under LIMITS (a 4 M-value image decodes in ~100 MB)

# Bounded for CI: the whole fuzz folder runs in well under a minute on one core.
FUZZ = settings(
    max_examples=int(os.environ.get("MEDMOE_FUZZ_EXAMPLES", "30")),
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@contextlib.contextmanager
def lowered_limits():
    saved = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_growth(function) -> tuple[BaseException | None, int]:
    """Run ``function()``; (the exception it raised or None, the peak bytes it added to the process).

    Peak RSS where Linux lets it be reset (it sees C allocations: Pillow, zlib, pydicom's decoders),
    else tracemalloc (Python and NumPy allocations only).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, use_rss = _status_kb("VmRSS"), True
    except OSError:
        tracemalloc.start()
        use_rss = False
    error = None
    try:
        function()
    except Exception as err:  # noqa: BLE001 - returned for the test to judge
        error = err
    if use_rss:
        return error, (_status_kb("VmHWM") - before) * 1024
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


def check_outcome(error: BaseException | None, growth: int, what: str) -> None:
    """Only medmoe's own errors, and memory under the bound."""
    if error is not None and not isinstance(error, MedMoEError):
        raise AssertionError(f"{what}: {type(error).__name__} is not a medmoe error: {error}") from error
    assert growth < MEMORY_BOUND, f"{what}: {growth / 2**20:.0f} MiB"


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """(name, bytes): a seed file truncated, with bytes flipped, a large integer written over its header or
    a run of bytes inserted."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "truncate", "big", "insert")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "big":  # header fields (sizes, offsets, counts) set to extremes
            width = draw(st.sampled_from((2, 4, 8)))
            value = draw(st.sampled_from((0, 1, 2**15 - 1, 2**16 - 1, 2**31 - 1, 2**32 - 1, 2**63 - 1)))
            data[at:at + width] = value.to_bytes(8, draw(st.sampled_from(("little", "big"))))[:width]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        if not data:
            break
    return name, bytes(data)


def image_seeds() -> dict[str, bytes]:
    """Small valid files of every format the image readers take."""
    from PIL import Image

    seeds: dict[str, bytes] = {}
    grey = (np.arange(48 * 40).reshape(40, 48) % 251).astype(np.uint8)
    for name, fmt, array in (("a.png", "PNG", grey), ("a.jpg", "JPEG", np.stack([grey] * 3, -1)),
                             ("a.tif", "TIFF", grey.astype(np.uint16) * 200), ("a.bmp", "BMP", grey)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        seeds[name] = buffer.getvalue()
    seeds["a.dcm"] = _dicom(grey.astype(np.uint16), deflated=False)
    seeds["b.dcm"] = _dicom(np.stack([grey.astype(np.uint16)] * 3), deflated=True)
    seeds["a.nii"], seeds["a.nii.gz"] = _nifti((12, 10, 6)), _nifti((12, 10, 6), gz=True)
    return seeds


def _dicom(pixels: np.ndarray, *, deflated: bool) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _nifti(shape, *, gz: bool = False) -> bytes:
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image((np.arange(np.prod(shape)).reshape(shape) % 300 - 150).astype(np.int16),
                            np.diag([1.5, 1.5, 3.0, 1.0]))
    raw = image.to_bytes()
    return gzip.compress(raw) if gz else raw


def shard_seeds() -> dict[str, bytes]:
    """A small shard as medmoe writes it (3 samples), plain and gzipped."""
    import gzip

    from PIL import Image

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(3):
            png = io.BytesIO()
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(png, format="PNG")
            for ext, data in (("png", png.getvalue()), ("txt", f"report {i}".encode()),
                              ("json", json.dumps({"index": i, "split": "train"}).encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"a.tar": buffer.getvalue(), "a.tar.gz": gzip.compress(buffer.getvalue())}
