"""Dispatch inputs to experts and combine their gated outputs.

:func:`sparse_dispatch` runs only the experts that some input was sent to: it groups the rows of the
batch by expert, runs each hit expert once on its rows, scales by the gate and ``index_add_``s the result
back. :func:`dense_dispatch` runs every expert on every row and is kept as the reference the tests check
the sparse path against.

A row is whatever the experts consume: a whole sample (MedMoE routes one expert per image over its whole
feature pyramid, so ``inputs`` is a list of pyramid levels sharing the batch dimension) or a token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError

Inputs = Tensor | Sequence[Tensor]


def _rows(inputs: Inputs, index: Tensor) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.index_select(0, index)
    return [x.index_select(0, index) for x in inputs]


def _num_rows(inputs: Inputs) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    sizes = {x.shape[0] for x in inputs}
    if len(sizes) != 1:
        raise InvalidInputError(f"all inputs must share the batch dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def _call(expert: nn.Module, inputs: Inputs) -> Tensor:
    return expert(inputs) if isinstance(inputs, Tensor) else expert(list(inputs))


def _scale(y: Tensor, gate: Tensor, inputs: Inputs) -> Tensor:
    gate = gate.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    if (torch.is_grad_enabled() and y.requires_grad) or _shares_memory(y, inputs):
        return y * gate
    return y.mul_(gate)  # no graph to keep and a fresh buffer: scale the expert's output in place


def _shares_memory(y: Tensor, inputs: Inputs) -> bool:
    """Whether ``y`` aliases an input (an identity-like expert), which an in-place scale would overwrite."""
    storage = y.untyped_storage().data_ptr()
    tensors = [inputs] if isinstance(inputs, Tensor) else inputs
    return any(x.untyped_storage().data_ptr() == storage for x in tensors)


def _check(experts: Sequence[nn.Module], expert_index: Tensor, gates: Tensor, n: int) -> None:
    if expert_index.shape != gates.shape or expert_index.dim() != 2 or expert_index.shape[0] != n:
        raise InvalidInputError(
            f"expert_index and gates must both be (N={n}, k); got {tuple(expert_index.shape)} and {tuple(gates.shape)}"
        )
    if expert_index.numel() and (int(expert_index.min()) < 0 or int(expert_index.max()) >= len(experts)):
        raise InvalidInputError(f"expert_index out of range [0, {len(experts)})")


def sparse_dispatch(experts: Sequence[nn.Module], inputs: Inputs, expert_index: Tensor, gates: Tensor) -> Tensor:
    """Combine ``sum_j gates[n, j] * experts[expert_index[n, j]](inputs[n])`` running only hit experts.

    Args:
        experts: K modules mapping (M, ...) rows to (M, ...) outputs of one common shape.
        inputs: (N, ...) tensor, or a list of tensors with a shared first dimension N.
        expert_index: (N, k) long.
        gates: (N, k) weights.

    Returns:
        (N, ...) combined outputs.
    """
    n = _num_rows(inputs)
    _check(experts, expert_index, gates, n)
    k = expert_index.shape[1]
    flat_expert = expert_index.reshape(-1)
    flat_gate = gates.reshape(-1)
    flat_row = torch.arange(n, device=expert_index.device).repeat_interleave(k)
    hit = torch.unique(flat_expert).tolist()
    if k == 1 and len(hit) == 1:  # the whole batch went to one expert: no gather, no scatter
        return _scale(_call(experts[hit[0]], inputs), flat_gate, inputs)
    out: Tensor | None = None
    for e in hit:
        slots = (flat_expert == e).nonzero(as_tuple=True)[0]
        rows = flat_row.index_select(0, slots)
        picked = _rows(inputs, rows)
        y = _scale(_call(experts[e], picked), flat_gate.index_select(0, slots), picked)
        if out is None:
            # top-1 writes every row exactly once, so the buffer needs no zero fill
            out = y.new_empty((n, *y.shape[1:])) if k == 1 else y.new_zeros((n, *y.shape[1:]))
        if k == 1:
            out.index_copy_(0, rows, y)
        else:
            out.index_add_(0, rows, y)
    if out is None:  # empty batch: let expert 0 define the output shape
        out = _call(experts[0], inputs)
    return out


def dense_dispatch(experts: Sequence[nn.Module], inputs: Inputs, expert_index: Tensor, gates: Tensor) -> Tensor:
    """Reference: run every expert on every row, weight by a (N, K) combine matrix built from the routing."""
    n = _num_rows(inputs)
    _check(experts, expert_index, gates, n)
    combine = gates.new_zeros((n, len(experts))).scatter_add(1, expert_index, gates)
    outputs = torch.stack([_call(expert, inputs) for expert in experts], dim=1)  # (N, K, ...)
    combine = combine.to(outputs.dtype).view(n, len(experts), *([1] * (outputs.dim() - 2)))
    return (outputs * combine).sum(dim=1)
