"""Fused Triton kernels for the whole family (the ``"triton"`` backend of :mod:`gatedelta.ops`).

One kernel family serves every op of DESIGN §1's table through compile-time gate flags:

* ``forward.py``: chunkwise WY forward (intra-chunk matrices and inverse → state pass → output),
* ``backward.py``: the gate-aware backward (reverse state pass → chunk-parallel gradients),
* ``decode.py``: the token-by-token step used for short inputs with a state (decoding),
* ``op.py``: ``torch.library`` custom ops with autograd and fake implementations.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (float32; used by the tests).
"""

from __future__ import annotations

import torch

from ..spec import Recurrence


def recurrence(r: Recurrence) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the general recurrence on validated inputs.

    Returns ``o [B, T, HV, V]`` in ``v``'s dtype and the final state ``[N, HV, K, V]`` fp32 if
    ``r.output_final_state`` else ``None``. Differentiable in q, k, v, g, b, w and the initial
    state; short inputs (≤ 4 tokens per sequence, on average when packed) with a state take the
    decode kernel.
    """
    if r.v.dtype == torch.float64:
        raise TypeError(
            "backend='triton' computes in float32 and takes bf16/fp16/fp32 inputs, got float64; "
            "use backend='torch' or backend='reference' for float64"
        )
    from .op import decode_step, recurrence_fwd, use_decode

    inputs = (r.q, r.k, r.v, r.g, r.b, r.w, r.scale, r.initial_state, r.cu_seqlens)
    if _plain_inference(inputs) and use_decode(r.q.shape[1], r.initial_state, r.cu_seqlens):
        # Decoding outside autograd and torch.compile: the kernel directly. The custom op's
        # dispatch (autograd and fake-tensor plumbing) costs more host time than the step itself.
        o, final = decode_step(*inputs)
    else:
        o, final, _, _ = recurrence_fwd(*inputs)
    return o, (final if r.output_final_state else None)


def _plain_inference(inputs: tuple) -> bool:
    """No gradient will be asked of this call and no graph is being traced."""
    if torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)


__all__ = ["recurrence"]
