"""Dispatch inputs to experts and combine their gated outputs.

:func:`sparse_dispatch` runs only the experts that some input was sent to: it groups the rows of the
batch by expert, runs each hit expert once on its rows, scales by the gate and ``index_add_``s the result
back. Which experts run is decided on the host, so the sparse path reads one small tensor back from the
device per call (the rows each expert received) and nothing else: no ``unique``, ``nonzero`` or scalar
reads, each of which would stall a CUDA stream once more. :func:`dense_dispatch` runs every expert on every row and is kept as the reference the tests check
the sparse path against.

A row is whatever the experts consume: a whole sample (MedMoE routes one expert per image over its whole
feature pyramid, so ``inputs`` is a list of pyramid levels sharing the batch dimension) or a token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medmoe.errors import InvalidInputError
from medmoe.moe.stats import expert_counts

Inputs = Tensor | Sequence[Tensor]


def _rows(inputs: Inputs, index: Tensor) -> Inputs:
    return (inputs.index_select(0, index) if isinstance(inputs, Tensor)
            else [x.index_select(0, index) for x in inputs])


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


def _check(expert_index: Tensor, gates: Tensor, n: int) -> None:
    if expert_index.shape != gates.shape or expert_index.dim() != 2 or expert_index.shape[0] != n:
        raise InvalidInputError(
            f"expert_index and gates must both be (N={n}, k); got {tuple(expert_index.shape)} and {tuple(gates.shape)}"
        )


def _out_of_range_error(flat_expert: Tensor, num_experts: int) -> InvalidInputError:
    bad = flat_expert[(flat_expert < 0) | (flat_expert >= num_experts)]
    return InvalidInputError(f"expert_index holds {int(bad[0])}: out of range [0, {num_experts})")


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
    _check(expert_index, gates, n)
    k = expert_index.shape[1]
    flat_expert = expert_index.reshape(-1)
    flat_gate = gates.reshape(-1)
    # Slots routed to each expert, read to the host in the dispatch's only synchronisation. The counts also
    # check the range: an index outside [0, K) matches no expert, so they fall short (and only then is the
    # index read again, for the error message).
    counts = expert_counts(flat_expert, len(experts)).tolist()
    if sum(counts) != flat_expert.numel():
        raise _out_of_range_error(flat_expert, len(experts))
    if k == 1 and n and max(counts) == n:  # the whole batch went to one expert: no gather, no scatter
        return _scale(_call(experts[counts.index(n)], inputs), flat_gate, inputs)
    # Slots sorted by expert: each expert's slots are one contiguous slice, cut with the host-side counts.
    order = torch.argsort(flat_expert, stable=True)
    out: Tensor | None = None
    for e, slots in enumerate(order.split(counts)):
        if not counts[e]:
            continue
        rows = slots // k if k > 1 else slots  # slot n * k + j is row n's j-th choice
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
    _check(expert_index, gates, n)
    # scatter_add would fail on a bad index only by a device-side assert on CUDA; a compiled graph skips the
    # check rather than break at a data-dependent branch.
    if not torch.compiler.is_compiling() and bool(((expert_index < 0) | (expert_index >= len(experts))).any()):
        raise _out_of_range_error(expert_index.reshape(-1), len(experts))
    combine = gates.new_zeros((n, len(experts))).scatter_add(1, expert_index, gates)
    outputs = torch.stack([_call(expert, inputs) for expert in experts], dim=1)  # (N, K, ...)
    combine = combine.to(outputs.dtype).view(n, len(experts), *([1] * (outputs.dim() - 2)))
    return (outputs * combine).sum(dim=1)
