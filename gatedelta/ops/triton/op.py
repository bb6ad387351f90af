"""``torch.library`` registration: the Triton recurrence as two custom ops with autograd and fake
(meta) implementations, so ``torch.compile(fullgraph=True)`` traces through without graph breaks.

* ``gatedelta::recurrence_fwd(q, k, v, g?, b?, w?, scale, initial_state?, cu_seqlens?)
  -> (o, final_state)``: chunkwise forward, or the decode kernel for short inputs with a state.
* ``gatedelta::recurrence_bwd(..., do, dht?) -> (dq, dk, dv, dg, db, dw, dh0)``: absent gradients
  come back as empty tensors (custom ops cannot return None).

The backward keeps nothing from the forward but its inputs (it recomputes the chunk stages), so
the memory held for backward is the inputs themselves.
"""

from __future__ import annotations

import torch

from .backward import chunk_backward
from .decode import MAX_DECODE_TOKENS, recurrent_step
from .forward import chunk_forward

Tensor = torch.Tensor


def _packed(x: Tensor | None) -> Tensor | None:
    """``[B, T, ...] -> [B·T, ...]`` contiguous (a view when already contiguous)."""
    return None if x is None else x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous()


def _num_sequences(q: Tensor, cu_seqlens: Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _use_decode(T: int, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> bool:
    if initial_state is None:
        return False
    if cu_seqlens is None:
        return T <= MAX_DECODE_TOKENS
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) <= MAX_DECODE_TOKENS


@torch.library.custom_op("gatedelta::recurrence_fwd", mutates_args=())
def recurrence_fwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
    scale: float, initial_state: Tensor | None, cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor]:
    B, T = q.shape[:2]
    args = (_packed(q), _packed(k), _packed(v), _packed(g), _packed(b), _packed(w), scale,
            None if initial_state is None else initial_state.contiguous(), cu_seqlens, B, T)
    if _use_decode(T, initial_state, cu_seqlens):
        o, ht = recurrent_step(*args)
    else:
        o, ht = chunk_forward(*args)
    return o.view(v.shape), ht


@recurrence_fwd.register_fake
def _(q, k, v, g, b, w, scale, initial_state, cu_seqlens):
    N = _num_sequences(q, cu_seqlens)
    return v.new_empty(v.shape), v.new_empty((N, v.shape[2], q.shape[3], v.shape[3]), dtype=torch.float32)


@torch.library.custom_op("gatedelta::recurrence_bwd", mutates_args=())
def recurrence_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
    scale: float, initial_state: Tensor | None, cu_seqlens: Tensor | None,
    do: Tensor, dht: Tensor | None,
) -> list[Tensor]:
    B, T = q.shape[:2]
    grads = chunk_backward(
        _packed(q), _packed(k), _packed(v), _packed(g), _packed(b), _packed(w), scale,
        None if initial_state is None else initial_state.contiguous(), cu_seqlens, B, T,
        _packed(do), None if dht is None else dht.float().contiguous(),
    )
    shapes = (q, k, v, g, b, w, initial_state)
    return [q.new_empty(0) if d is None else d.view(x.shape) for d, x in zip(grads, shapes)]


@recurrence_bwd.register_fake
def _(q, k, v, g, b, w, scale, initial_state, cu_seqlens, do, dht):
    return [q.new_empty(0) if x is None else torch.empty_like(x) for x in (q, k, v, g, b, w, initial_state)]


def _setup_context(ctx, inputs, output):
    q, k, v, g, b, w, scale, initial_state, cu_seqlens = inputs
    ctx.save_for_backward(q, k, v, g, b, w, initial_state, cu_seqlens)
    ctx.scale = scale


def _backward(ctx, do, dht):
    q, k, v, g, b, w, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dg, db, dw, dh0 = recurrence_bwd(
        q, k, v, g, b, w, ctx.scale, initial_state, cu_seqlens, do.contiguous(), dht,
    )
    some = lambda d, x: None if x is None else d
    return dq, dk, dv, some(dg, g), some(db, b), some(dw, w), None, some(dh0, initial_state), None


recurrence_fwd.register_autograd(_backward, setup_context=_setup_context)
