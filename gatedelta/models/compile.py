"""Regional ``torch.compile`` for training: each decoder block compiled, the rest eager.

The blocks repeat, so one compiled function serves all of them: Dynamo keeps one graph per block
kind (a ``[gdn2, swa]`` hybrid has two) and per input shape, instead of tracing a whole 24-block
model as one graph. Inductor fuses what the layers leave unfused (norms, gates, activations,
residual adds, dtype casts) around the GEMMs, attention and the recurrent custom ops, which it
calls as they are (they are ``torch.library`` ops with fake implementations, so there is no graph
break at them). The embedding, the LM head and the loss stay eager.

Used by ``gatedelta bench models --compile`` and the trainer's ``runtime.compile``.
"""

from __future__ import annotations

import torch
from torch import nn

from .modeling import Block

# torch.compile's modes; "reduce-overhead" adds CUDA graphs, "max-autotune" also tunes the GEMMs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Compiled graphs kept per code object: block kinds x shapes. A benchmark sweep of 4 lengths over a
# hybrid (2 kinds) and a Transformer (1 kind) needs 12; torch's default limit of 8 would silently
# fall back to eager for the rest.
RECOMPILE_LIMIT = 64


def compile_for_training(
    model: nn.Module, *, mode: str = "default", dynamic: bool | None = False, fullgraph: bool = False
) -> nn.Module:
    """Compile the training forward (and so backward) of every decoder block of ``model``, in place.

    Args:
        model: a :class:`~gatedelta.models.GatedDeltaForCausalLM` (or any module holding its
            ``Block``s, e.g. inside DDP). A module without blocks is compiled whole instead.
        mode: one of :data:`COMPILE_MODES`.
        dynamic: ``False`` (default) compiles one static graph per input shape, so a new sequence
            length recompiles cleanly; ``None`` lets Dynamo turn a dimension dynamic after the first
            shape change (packed batches whose ``cu_seqlens`` length varies from step to step).
        fullgraph: raise at a graph break instead of splitting the block's graph there.

    Returns:
        ``model`` itself when it has blocks (call it as before), else ``torch.compile(model)``.

    Only training-mode calls without a cache, attention probabilities or padded keys take the
    compiled path; evaluation and generation stay eager, so they never trigger a recompile.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    options = dict(mode=None if mode == "default" else mode, dynamic=dynamic, fullgraph=fullgraph)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        return torch.compile(model, **options)
    _raise_recompile_limit(RECOMPILE_LIMIT)
    compiled = torch.compile(Block.mix, **options)
    for block in blocks:
        block.compiled_mix = compiled
    return model


def _raise_recompile_limit(limit: int) -> None:
    """At least ``limit`` graphs per code object (``cache_size_limit``, renamed ``recompile_limit``)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
