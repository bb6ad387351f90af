"""``torch.library`` registration: the Triton recurrence as two custom ops with autograd and fake
(meta) implementations, so ``torch.compile(fullgraph=True)`` traces through without graph breaks.

* ``gatedelta::recurrence_fwd(q, k, v, g?, b?, w?, scale, initial_state?, cu_seqlens?)
  -> (o, final_state, M, A)``: chunkwise forward, or the decode kernel for short inputs with a
  state. M and A (fp32 ``[B, T, HV, 64]``; A ``[0]`` without an erase gate) are the forward's chunk
  matrices, kept for the backward (non-differentiable outputs).
* ``gatedelta::recurrence_bwd(..., do, dht?, M, A) -> (dq, dk, dv, dg, db, dw, dh0)``: absent
  gradients come back as empty tensors (custom ops cannot return None).

The backward keeps the inputs and M, A (2 × 64 fp32 = 512 B per token and value head, less than
FLA's 768 B) and recomputes the rest (cumulative decay, states, corrected values), so it skips
the intra-chunk stage.
"""

from __future__ import annotations

import torch

from .backward import chunk_backward
from .common import CHUNK, on_device
from .decode import MAX_DECODE_TOKENS, recurrent_step
from .forward import chunk_forward

Tensor = torch.Tensor


def _packed(x: Tensor | None) -> Tensor | None:
    """``[B, T, ...] -> [B·T, ...]`` contiguous (a view when already contiguous)."""
    return None if x is None else x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous()


def _num_sequences(q: Tensor, cu_seqlens: Tensor | None) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def use_decode(T: int, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> bool:
    """Whether the forward takes the decode kernel: a state is given and the sequences have at
    most ``MAX_DECODE_TOKENS`` tokens each (packed: on average). The kernel is exact for any
    lengths; the average needs no read of cu_seqlens, so no device sync (a decode step can be
    captured in a CUDA graph)."""
    if initial_state is None:
        return False
    if cu_seqlens is None:
        return T <= MAX_DECODE_TOKENS
    return T <= MAX_DECODE_TOKENS * (cu_seqlens.shape[0] - 1)


def packed_args(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
                scale: float, initial_state: Tensor | None, cu_seqlens: Tensor | None) -> tuple:
    """The kernels' arguments: inputs packed to ``[B·T, ...]``, then scale, the state, cu_seqlens,
    B and T."""
    B, T = q.shape[:2]
    return (_packed(q), _packed(k), _packed(v), _packed(g), _packed(b), _packed(w), scale,
            None if initial_state is None else initial_state.contiguous(), cu_seqlens, B, T)


def decode_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
                scale: float, initial_state: Tensor, cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor]:
    """The decode kernel on ``[B, T, ...]`` inputs as they are (contiguous: the kernel indexes rows
    of contiguous memory, so they need no packing). Returns ``(o, final_state)``, o shaped like v."""
    x = [None if t is None else t.contiguous() for t in (q, k, v, g, b, w, initial_state)]
    with on_device(q):
        return recurrent_step(*x[:6], scale, x[6], cu_seqlens, *q.shape[:2])


@torch.library.custom_op("gatedelta::recurrence_fwd", mutates_args=())
def recurrence_fwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
    scale: float, initial_state: Tensor | None, cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    M = A = None
    if use_decode(q.shape[1], initial_state, cu_seqlens):
        # no chunk matrices: the backward recomputes them
        o, ht = decode_step(q, k, v, g, b, w, scale, initial_state, cu_seqlens)
    else:
        with on_device(q):
            o, ht, M, A = chunk_forward(*packed_args(q, k, v, g, b, w, scale, initial_state, cu_seqlens))
    M_shape, A_shape = _chunk_matrix_shapes(q, v, b)
    M = q.new_empty(M_shape, dtype=torch.float32) if M is None else M.view(M_shape)
    A = q.new_empty(A_shape, dtype=torch.float32) if A is None else A.view(A_shape)
    return o.view(v.shape), ht, M, A


def _chunk_matrix_shapes(q: Tensor, v: Tensor, b: Tensor | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the forward's M and A outputs: ``[B, T, HV, CHUNK]`` (A ``[0]`` without erase)."""
    M_shape = (*v.shape[:3], CHUNK)
    return M_shape, (M_shape if b is not None else (0,))


@recurrence_fwd.register_fake
def _(q, k, v, g, b, w, scale, initial_state, cu_seqlens):
    N = _num_sequences(q, cu_seqlens)
    M_shape, A_shape = _chunk_matrix_shapes(q, v, b)
    return (v.new_empty(v.shape), v.new_empty((N, v.shape[2], q.shape[3], v.shape[3]), dtype=torch.float32),
            v.new_empty(M_shape, dtype=torch.float32), v.new_empty(A_shape, dtype=torch.float32))


@torch.library.custom_op("gatedelta::recurrence_bwd", mutates_args=())
def recurrence_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
    scale: float, initial_state: Tensor | None, cu_seqlens: Tensor | None,
    do: Tensor, dht: Tensor | None, M: Tensor, A: Tensor,
) -> list[Tensor]:
    # The forward took the decode kernel (same decision, same inputs): it left no chunk matrices.
    keep = not use_decode(q.shape[1], initial_state, cu_seqlens)
    with on_device(q):
        grads = chunk_backward(
            *packed_args(q, k, v, g, b, w, scale, initial_state, cu_seqlens),
            _packed(do), None if dht is None else dht.float().contiguous(),
            M=_packed(M) if keep else None, A=_packed(A) if keep and b is not None else None,
        )
    shapes = (q, k, v, g, b, w, initial_state)
    return [q.new_empty(0) if d is None else d.view(x.shape) for d, x in zip(grads, shapes)]


@recurrence_bwd.register_fake
def _(q, k, v, g, b, w, scale, initial_state, cu_seqlens, do, dht, M, A):
    # contiguous like the real op's gradients (empty_like would keep a permuted input's strides)
    return [q.new_empty(0) if x is None else x.new_empty(x.shape) for x in (q, k, v, g, b, w, initial_state)]


def _setup_context(ctx, inputs, output):
    q, k, v, g, b, w, scale, initial_state, cu_seqlens = inputs
    _, _, M, A = output
    ctx.mark_non_differentiable(M, A)
    ctx.save_for_backward(q, k, v, g, b, w, initial_state, cu_seqlens, M, A)
    ctx.scale = scale


def _backward(ctx, do, dht, _dM, _dA):
    q, k, v, g, b, w, initial_state, cu_seqlens, M, A = ctx.saved_tensors
    dq, dk, dv, dg, db, dw, dh0 = recurrence_bwd(
        q, k, v, g, b, w, ctx.scale, initial_state, cu_seqlens, do.contiguous(), dht, M, A,
    )
    some = lambda d, x: None if x is None else d
    return dq, dk, dv, some(dg, g), some(db, b), some(dw, w), None, some(dh0, initial_state), None


recurrence_fwd.register_autograd(_backward, setup_context=_setup_context)
