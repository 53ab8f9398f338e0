"""``--compile``: ``torch.compile`` the model's tensor-only parts in place, or the whole model.

A model may name what to compile with a ``compile_targets`` attribute (a list of its submodules). MedMoE and
MoME do, because their forward reads report or prompt strings, which Dynamo treats as constants: a
whole-model graph would be recompiled for every new batch of reports. A model without the attribute is
compiled whole.

Compilation happens in place (``nn.Module.compile``): parameter names, ``state_dict`` keys, checkpoints and
the exported model are the same as without ``--compile``, and DDP wraps the same module.
"""

from __future__ import annotations

import logging

from torch import nn

from medmoe.errors import InvalidInputError

logger = logging.getLogger(__name__)

# The attribute a model declares to say which of its submodules --compile compiles.
COMPILE_TARGETS_ATTR = "compile_targets"


def compile_targets(model: nn.Module) -> list[nn.Module]:
    """The modules ``--compile`` compiles: ``model.compile_targets`` if the model declares it, else the model.

    Raises:
        InvalidInputError: the declared targets are empty or hold something that is not a submodule.
    """
    declared = getattr(model, COMPILE_TARGETS_ATTR, None)
    if declared is None:
        return [model]
    targets = list(declared)
    own = {id(m) for m in model.modules()}
    bad = [t for t in targets if not isinstance(t, nn.Module) or id(t) not in own]
    if not targets or bad:
        raise InvalidInputError(
            f"{type(model).__name__}.{COMPILE_TARGETS_ATTR}: expected a non-empty list of the model's own "
            f"submodules, got {[type(t).__name__ for t in targets]}"
        )
    return targets


def compile_in_place(model: nn.Module, backend: str) -> list[nn.Module]:
    """Compile :func:`compile_targets` of ``model`` with ``backend``; returns them (for :func:`uncompile`).

    Nothing is compiled yet when this returns: Dynamo traces and the backend compiles at the first call,
    which is where a missing C compiler or an unsupported operation shows up.

    Raises:
        InvalidInputError: ``backend`` is not a registered torch.compile backend.
    """
    import torch._dynamo

    # the names torch.compile(backend=...) accepts here (debug backends such as eager included)
    backends = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in backends:
        raise InvalidInputError(f"--compile-backend {backend!r}: not a torch.compile backend here; one of {backends}")
    targets = compile_targets(model)
    for target in targets:
        target.compile(backend=backend)
    logger.debug("torch.compile(backend=%s) on %s", backend, [type(t).__name__ for t in targets])
    return targets


def uncompile(targets: list[nn.Module]) -> None:
    """Undo :func:`compile_in_place`: the modules run eagerly again and Dynamo's caches are dropped."""
    import torch._dynamo

    for target in targets:
        # nn.Module.compile stores the compiled call here and has no public inverse.
        target._compiled_call_impl = None
    torch._dynamo.reset()


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (by :func:`compile_in_place` or ``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None
