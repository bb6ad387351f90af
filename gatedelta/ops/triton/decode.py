"""Decode step: a few tokens per sequence with a carried state, token by token, state in registers.

Layers decode with this in constant memory: the fp32 state is read once, updated in registers for
each of the (few) new tokens, and written once. It applies the recurrence exactly as the reference
does (decay, erase, write, read), so ``g = −inf`` is an exact reset here without any clamping.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import TUNING, empty
from .forward import _pow2

# recurrence() takes this path for sequences no longer than this when a state is given.
MAX_DECODE_TOKENS = 4


@triton.jit
def recurrent_step_kernel(
    q, k, v, g, b, w, h0, o, ht, cu_seqlens, scale, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, USE_H0: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """One program per (value block, sequence·head). State block ``[BK ≥ K, BV]`` fp32.

    q, k ``[Ttot, H, K]``, v ``[Ttot, HV, V]``, gates packed likewise; o ``[Ttot, HV, V]``;
    h0, ht ``[N, HV, K, V]``. Sequences of T tokens each, or (VARLEN) bounded by cu_seqlens.
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    if VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        # no offsets tensor to build on the host side: one launch, not three, per decode step
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + p_kv, mask=m_kv, other=0)
    t = bos
    while t < eos:
        b_q = tl.load(q + (t * H + i_h) * K + o_k, mask=m_k, other=0).to(tl.float32) * scale
        b_k = tl.load(k + (t * H + i_h) * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_z = tl.load(v + (t * HV + i_hv) * V + o_v, mask=m_v, other=0).to(tl.float32)
        if WRITE == 2:
            b_z *= tl.load(w + (t * HV + i_hv) * V + o_v, mask=m_v, other=0).to(tl.float32)
        elif WRITE == 1:
            b_z *= tl.load(w + t * HV + i_hv).to(tl.float32)
        # 1. decay
        if DECAY == 2:
            b_S *= tl.exp(tl.load(g + (t * HV + i_hv) * K + o_k, mask=m_k, other=0))[:, None]
        elif DECAY == 1:
            b_S *= tl.exp(tl.load(g + t * HV + i_hv))
        # 2.-3. erase along e = b ⊙ k, then write z: S += k (z − Sᵀe)ᵀ
        if ERASE == 2:
            b_e = b_k * tl.load(b + (t * HV + i_hv) * K + o_k, mask=m_k, other=0).to(tl.float32)
            b_z -= tl.sum(b_e[:, None] * b_S, 0)
        elif ERASE == 1:
            b_e = b_k * tl.load(b + t * HV + i_hv).to(tl.float32)
            b_z -= tl.sum(b_e[:, None] * b_S, 0)
        b_S += b_k[:, None] * b_z[None, :]
        # 4. read after the update
        b_o = tl.sum(b_q[:, None] * b_S, 0)
        tl.store(o + (t * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        t += 1
    tl.store(ht + p_kv, b_S, mask=m_kv)


def recurrent_step(q, k, v, g, b, w, scale: float, h0, cu_seqlens, B: int, T: int):
    """Token-by-token forward (for decode). Same arguments and returns as
    :func:`gatedelta.ops.triton.forward.chunk_forward`, except that the inputs may also come
    unpacked (``[B, T, ...]``, contiguous): o then comes back as v's shape."""
    H, K = q.shape[-2:]
    HV, V = v.shape[-2:]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    o = empty(v.shape, dtype=v.dtype, device=v.device)
    ht = empty((N, HV, K, V), dtype=torch.float32, device=v.device)
    BK, BV, warps = decode_blocks(K, V)
    recurrent_step_kernel[((V + BV - 1) // BV, N * HV)](
        q, k, v, q if g is None else g, q if b is None else b, q if w is None else w,
        ht if h0 is None else h0, o, ht, cu_seqlens, scale, T,
        H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, DECAY=_form(g, q), ERASE=_form(b, q), WRITE=_form(w, q),
        USE_H0=h0 is not None, VARLEN=cu_seqlens is not None, num_warps=warps,
    )
    return o, ht


def _form(x, q) -> int:
    """:func:`.common.gate_form` for packed (``[Ttot, ...]``) or unpacked (``[B, T, ...]``) inputs: a gate
    per head has one dim fewer than q."""
    if x is None:
        return 0
    return 1 if x.ndim == q.ndim - 1 else 2


def decode_blocks(K: int, V: int) -> tuple[int, int, int]:
    """Key block, value block and warps of the decode kernel: the value block and warps from
    ``TUNING["decode_bv"]`` and ``TUNING["decode_warps"]``, the block narrowed for wide keys so the
    ``[BK, BV]`` fp32 state block stays in registers (at most 4,096 values), and never wider than V."""
    BK = _pow2(K)
    BV = min(int(TUNING["decode_bv"]), max(8, 4096 // BK), _pow2(V, 8))
    return BK, BV, int(TUNING["decode_warps"])
