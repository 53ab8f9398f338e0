"""``--amp auto`` on CUDA devices of every generation, decided without a GPU from the compute capability."""

from __future__ import annotations

import logging

import pytest
import torch

from medmoe.train.optim import cuda_autocast_dtype, resolve_precision


@pytest.mark.parametrize(
    "capability,hip,expected",
    [
        ((6, 0), False, torch.float16),  # P100
        ((7, 0), False, torch.float16),  # V100: bf16 only emulated
        ((7, 5), False, torch.float16),  # T4
        ((8, 0), False, torch.bfloat16),  # A100
        ((8, 9), False, torch.bfloat16),  # L4
        ((9, 0), False, torch.bfloat16),  # H100
        ((9, 4), True, torch.bfloat16),  # MI300 (ROCm reports a gfx-derived capability)
    ],
)
def test_auto_dtype_is_bf16_only_where_native(capability, hip, expected):
    assert cuda_autocast_dtype(capability, hip=hip) is expected


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a chosen capability as far as resolve_precision can tell (no GPU needed)."""

    def use(capability: tuple[int, int], *, bf16_emulated: bool = True) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        # What torch itself answers on such a device: True where bf16 is only emulated.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: (
            capability[0] >= 8 or (including_emulation and bf16_emulated)))
        monkeypatch.setattr(torch.version, "hip", None)
        return torch.device("cuda", 0)

    return use


def test_auto_on_a_v100_uses_fp16_with_a_scaler_and_says_why(fake_cuda, caplog):
    device = fake_cuda((7, 0))
    with caplog.at_level(logging.INFO, logger="medmoe.train.optim"):
        precision = resolve_precision("auto", device)
    assert precision.dtype is torch.float16 and precision.needs_scaler
    assert precision.device_type == "cuda"
    assert "fp16" in caplog.text and "7.0" in caplog.text and "no native bf16" in caplog.text


def test_auto_on_an_a100_uses_bf16_without_a_scaler(fake_cuda, caplog):
    device = fake_cuda((8, 0))
    with caplog.at_level(logging.INFO, logger="medmoe.train.optim"):
        precision = resolve_precision("auto", device)
    assert precision.dtype is torch.bfloat16 and not precision.needs_scaler
    assert "bf16" in caplog.text and "8.0" in caplog.text


def test_explicit_modes_on_cuda_are_kept_whatever_the_generation(fake_cuda):
    device = fake_cuda((7, 5))
    assert resolve_precision("bf16", device).dtype is torch.bfloat16  # the user asked for emulated bf16
    assert resolve_precision("fp16", device).dtype is torch.float16
    assert resolve_precision("off", device).dtype is None


def test_auto_on_cpu_is_off():
    assert resolve_precision("auto", torch.device("cpu")).dtype is None
