"""Picking a torch device and its autocast dtype (library code: prediction uses it; the trainer too).

``resolve_device("auto")`` is CUDA when a GPU is visible, else the CPU (under torchrun, each rank's own GPU); :func:`autocast_dtype` is the
reduced precision a device runs inference in (bf16 where the GPU computes it natively, else fp16; none on
CPU, where autocast to bf16 is slower than fp32 for 3-D convolutions).
"""

from __future__ import annotations

import torch

from medmoe.errors import InvalidInputError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the --amp choices that name a dtype


def cuda_autocast_dtype(capability: tuple[int, int], *, hip: bool = False) -> torch.dtype:
    """The ``--amp auto`` dtype of a CUDA device with compute ``capability`` (major, minor).

    bf16 only where the hardware computes it natively: Ampere (8.x) and newer, and ROCm devices. Older
    GPUs (V100 7.0, T4 7.5) get fp16 with loss scaling: ``torch.cuda.is_bf16_supported()`` says yes on
    them too because it counts emulation, which runs bf16 far slower than fp16.
    """
    return torch.bfloat16 if hip or capability[0] >= 8 else torch.float16


def resolve_device(name: str | torch.device | None = "auto", *, local_rank: int | None = None) -> torch.device:
    """``"auto"`` (or None): ``cuda`` when available, else ``cpu``; any other name is checked and returned.

    Args:
        name: ``auto``, None, a device name (``cpu``, ``cuda``, ``cuda:N``...) or a device.
        local_rank: this process's rank on its node (torchrun's ``LOCAL_RANK``): a CUDA device without an
            index (``cuda``, or ``auto`` where CUDA is visible) becomes GPU ``local_rank`` modulo the visible
            count, so that each rank of a node takes its own GPU. None leaves ``cuda`` without an index.

    Raises:
        InvalidInputError: an unknown device string, or CUDA asked for where none is visible.
    """
    if isinstance(name, torch.device):
        device = name
    elif name is None or str(name).strip().lower() == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name).strip())
        except (RuntimeError, ValueError) as err:
            raise InvalidInputError(f"device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r}: CUDA is not available here (use --device auto or cpu)")
    if device.index is None:
        return device if local_rank is None else torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def autocast_dtype(device: torch.device | str, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference on ``device``: None means full fp32.

    Args:
        device: where the model runs.
        amp: ``auto`` (bf16 where native, else fp16 on CUDA; off on CPU), ``bf16``, ``fp16`` or ``off``.
    """
    if amp not in AMP_CHOICES:
        raise InvalidInputError(f"amp {amp!r}: expected one of {AMP_CHOICES}")
    device = torch.device(device)
    if amp in AMP_DTYPES and device.type != "cuda":
        raise InvalidInputError(f"amp {amp!r} needs a CUDA device; {device} runs in fp32 "
                                "(use amp 'auto' or 'off')")
    if amp != "auto" or device.type != "cuda":
        return AMP_DTYPES.get(amp)
    return cuda_autocast_dtype(torch.cuda.get_device_capability(device), hip=bool(torch.version.hip))


def autocast_off(where: torch.Tensor | torch.device | str) -> torch.autocast:
    """A region where autocast does not apply on the device of ``where`` (a tensor, device or device type).

    Casting inputs with ``.float()`` is not enough under autocast: a matmul, einsum or conv still runs in
    the autocast dtype, whatever its inputs. Losses, logits and softmaxes that must be float32 run inside
    this region with float32 inputs::

        with autocast_off(images):
            logits = scale * images.float() @ texts.float().t()
    """
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return torch.autocast(device.type, enabled=False)
