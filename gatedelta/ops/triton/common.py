"""Shared pieces of the Triton backend: chunk bookkeeping, gate flags, pairwise-decay helpers.

Everything is laid out packed: ``q, k`` as ``[Ttot, H, K]``, ``v`` as ``[Ttot, HV, V]`` and gates as
``[Ttot, HV(, K or V)]`` with ``Ttot = B·T``; a batch without ``cu_seqlens`` is packed as B
sequences of length T, so every kernel has one varlen code path.

Gate forms are compile-time flags, ``0`` = absent, ``1`` = one value per head, ``2`` = one value
per channel; one kernel source serves every op of DESIGN §1's table.

Pairwise decay (DESIGN §1 numerics). With ``G`` the chunk-local cumulative log-decay, every
pairwise factor is ``exp(G_r − G_s)`` with ``r ≥ s`` (≤ 1); ``1/γ`` alone is never formed. For
per-channel decay the chunk is split into sub-chunks of ``BC`` rows: a pair in different sub-chunks
factors through the last row ``c`` of the earlier one, ``exp(G_r − G_c)·exp(G_c − G_s)`` (both
≤ 1); pairs inside one sub-chunk are summed exactly, one column offset at a time.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# A log-decay below this is a hard reset: exp(G_MIN) is 0 in float32, so clamping g changes no
# product, while keeping every chunk-local cumulative sum finite (−inf − (−inf) would be NaN).
G_MIN = tl.constexpr(-110.0)
# Chunk length (the (I + T)⁻¹ solve is written for 4 blocks of 16) and sub-chunk length of the
# per-channel pairwise split.
CHUNK = 64
SUB_CHUNK = 16
# Debug mode (tests): fill every kernel output with NaN before the kernels write it, so an element
# a kernel forgets to write cannot pass.
POISON = os.environ.get("GATEDELTA_TRITON_POISON") == "1"


def gate_form(x: torch.Tensor | None) -> int:
    """0 = absent, 1 = per head ``[Ttot, HV]``, 2 = per channel ``[Ttot, HV, C]``."""
    if x is None:
        return 0
    return 1 if x.ndim == 2 else 2


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands of ``tl.dot``: exact for fp32 inputs; tf32 when the inputs are bf16/fp16
    (its 10-bit mantissa is 8× finer than the inputs' own bf16 rounding)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or dtype == torch.float32:
        return "ieee"
    return "tf32"


def inverse_precision(dtype: torch.dtype) -> str:
    """The (I + T)⁻¹ products compound errors; three-pass tf32 is as good as fp32 there."""
    if os.environ.get("TRITON_INTERPRET") == "1" or dtype == torch.float32:
        return "ieee"
    return "tf32x3"


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, or NaN-filled in debug mode (see :data:`POISON`)."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def prepare_chunks(
    cu_seqlens: torch.Tensor | None, B: int, T: int, BT: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Chunk bookkeeping shared by all kernels.

    Returns ``cu [N+1] int32`` (sequence bounds in the packed token axis), ``chunk_indices
    [NT, 2] int32`` (sequence, chunk-in-sequence) of every chunk-parallel program,
    ``chunk_offsets [N+1] int32`` (first global chunk of each sequence), and ``NT``.
    """
    if cu_seqlens is None:
        nc = triton.cdiv(T, BT)
        cu = torch.arange(0, B + 1, device=device, dtype=torch.int32) * T
        seq = torch.arange(B, device=device, dtype=torch.int32).repeat_interleave(nc)
        chunk = torch.arange(nc, device=device, dtype=torch.int32).repeat(B)
        offsets = torch.arange(0, B + 1, device=device, dtype=torch.int32) * nc
        return cu, torch.stack([seq, chunk], 1).contiguous(), offsets, B * nc
    bounds = cu_seqlens.tolist()  # one host sync per call; the chunk grid depends on it
    counts = [triton.cdiv(e - s, BT) for s, e in zip(bounds[:-1], bounds[1:])]
    pairs = [(n, c) for n, cnt in enumerate(counts) for c in range(cnt)]
    offsets = [0]
    for cnt in counts:
        offsets.append(offsets[-1] + cnt)
    idx = torch.tensor(pairs if pairs else [(0, 0)], dtype=torch.int32).reshape(-1, 2)[: len(pairs)]
    return (
        cu_seqlens.to(device=device, dtype=torch.int32),
        idx.to(device),
        torch.tensor(offsets, dtype=torch.int32, device=device),
        len(pairs),
    )


@triton.jit
def load_rows(x, b, G, rows, m_r, i_h, i_hv, o_k, m_k, H: tl.constexpr, HV: tl.constexpr,
              K: tl.constexpr, ERASE: tl.constexpr):
    """Rows ``rows`` of an input x ``[Ttot, H, K]`` (times the erase gate b when ERASE, i.e.
    ``e = b ⊙ k``) and of the cumulative log-decay G ``[Ttot, HV, K]``, one K block, fp32.

    The sub-chunk-diagonal loops read their per-row partner rows this way, straight from memory
    (L1/L2-resident), instead of permuting register tiles."""
    m = m_r[:, None] & m_k[None, :]
    b_x = tl.load(x + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m, other=0).to(tl.float32)
    if ERASE == 2:
        b_x *= tl.load(b + (rows[:, None] * HV + i_hv) * K + o_k[None, :], mask=m, other=0).to(tl.float32)
    elif ERASE == 1:
        b_x *= tl.load(b + rows * HV + i_hv, mask=m_r, other=0).to(tl.float32)[:, None]
    b_g = tl.load(G + (rows[:, None] * HV + i_hv) * K + o_k[None, :], mask=m, other=0)
    return b_x, b_g


@triton.jit
def pair_matrix(b_x, b_G, y, G, row0, eos, i_h, i_hv, o_t, o_k, m_k, H: tl.constexpr, HV: tl.constexpr,
                K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, STRICT: tl.constexpr,
                PREC: tl.constexpr):
    """``P[r, s] = Σ_k x[r,k] y[s,k] exp(G[r,k] − G[s,k])`` for ``s < r`` (``s ≤ r`` unless STRICT).

    b_x, b_G: ``[BT, BK]`` fp32 tiles of the chunk (per-channel decay); y ``[Ttot, H, K]`` and G are
    read from memory (rows row0 + 0..BT-1, valid below eos). Returns ``[BT, BT]`` fp32, zero above.
    """
    o_row = row0 + o_t
    b_y, _ = load_rows(y, y, G, o_row, o_row < eos, i_h, i_hv, o_k, m_k, H, HV, K, 0)
    b_P = tl.zeros([BT, BT], dtype=tl.float32)
    # Pairs in different sub-chunks factor through the last row c of the column's sub-chunk.
    for j in tl.static_range(BT // BC - 1):
        c = j * BC + BC - 1
        b_gc = tl.sum(tl.where(o_t[:, None] == c, b_G, 0.0), 0)
        m_r = o_t > c
        m_s = (o_t >= j * BC) & (o_t <= c)
        b_xr = tl.where(m_r[:, None], b_x * tl.exp(tl.minimum(b_G - b_gc[None, :], 0.0)), 0.0)
        b_ys = tl.where(m_s[:, None], b_y * tl.exp(tl.minimum(b_gc[None, :] - b_G, 0.0)), 0.0)
        b_P += tl.dot(b_xr, tl.trans(b_ys), input_precision=PREC)
    # Pairs inside one sub-chunk: exact, one column offset i (s = first row of r's sub-chunk + i).
    o_first = (o_t // BC) * BC
    for i in range(BC):
        o_s = o_first + i
        b_ys, b_gs = load_rows(y, y, G, row0 + o_s, row0 + o_s < eos, i_h, i_hv, o_k, m_k, H, HV, K, 0)
        b_col = tl.sum(b_x * b_ys * tl.exp(tl.minimum(b_G - b_gs, 0.0)), 1)
        m_col = (o_s < o_t) if STRICT else (o_s <= o_t)
        b_P += tl.where((o_t[None, :] == o_s[:, None]) & m_col[:, None], b_col[:, None], 0.0)
    return b_P


@triton.jit
def pair_left(b_D, b_G, y, G, row0, eos, i_h, i_hv, o_t, o_k, m_k, H: tl.constexpr, HV: tl.constexpr,
              K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr):
    """``out[r, k] = Σ_s D[r,s] y[s,k] exp(G[r,k] − G[s,k])``; D lower-triangular ``[BT, BT]``,
    y ``[Ttot, H, K]`` read from memory."""
    o_row = row0 + o_t
    b_y, _ = load_rows(y, y, G, o_row, o_row < eos, i_h, i_hv, o_k, m_k, H, HV, K, 0)
    b_o = tl.zeros(b_G.shape, dtype=tl.float32)
    for j in tl.static_range(BT // BC - 1):
        c = j * BC + BC - 1
        b_gc = tl.sum(tl.where(o_t[:, None] == c, b_G, 0.0), 0)
        m_s = (o_t >= j * BC) & (o_t <= c)
        b_ys = tl.where(m_s[:, None], b_y * tl.exp(tl.minimum(b_gc[None, :] - b_G, 0.0)), 0.0)
        b_part = tl.dot(b_D, b_ys, input_precision=PREC)
        b_o += tl.where((o_t > c)[:, None], b_part * tl.exp(tl.minimum(b_G - b_gc[None, :], 0.0)), 0.0)
    o_first = (o_t // BC) * BC
    for i in range(BC):
        o_s = o_first + i
        b_ys, b_gs = load_rows(y, y, G, row0 + o_s, row0 + o_s < eos, i_h, i_hv, o_k, m_k, H, HV, K, 0)
        b_d = tl.sum(tl.where(o_t[None, :] == o_s[:, None], b_D, 0.0), 1)
        b_o += b_d[:, None] * b_ys * tl.exp(tl.minimum(b_G - b_gs, 0.0))
    return b_o


@triton.jit
def pair_right(b_D, b_G, x, b, G, row0, eos, i_h, i_hv, o_t, o_k, m_k, H: tl.constexpr, HV: tl.constexpr,
               K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, ERASE: tl.constexpr, PREC: tl.constexpr):
    """``out[s, k] = Σ_r D[r,s] x[r,k] exp(G[r,k] − G[s,k])``; D lower-triangular ``[BT, BT]``,
    x ``[Ttot, H, K]`` read from memory (times b when ERASE: x is then e = b ⊙ k)."""
    o_row = row0 + o_t
    b_x, _ = load_rows(x, b, G, o_row, o_row < eos, i_h, i_hv, o_k, m_k, H, HV, K, ERASE)
    b_o = tl.zeros(b_G.shape, dtype=tl.float32)
    for j in tl.static_range(BT // BC - 1):
        c = j * BC + BC - 1
        b_gc = tl.sum(tl.where(o_t[:, None] == c, b_G, 0.0), 0)
        b_xr = tl.where((o_t > c)[:, None], b_x * tl.exp(tl.minimum(b_G - b_gc[None, :], 0.0)), 0.0)
        b_part = tl.dot(tl.trans(b_D), b_xr, input_precision=PREC)
        m_s = (o_t >= j * BC) & (o_t <= c)
        b_o += tl.where(m_s[:, None], b_part * tl.exp(tl.minimum(b_gc[None, :] - b_G, 0.0)), 0.0)
    o_first = (o_t // BC) * BC
    for i in range(BC):
        o_r = o_first + i
        b_xr, b_gr = load_rows(x, b, G, row0 + o_r, row0 + o_r < eos, i_h, i_hv, o_k, m_k, H, HV, K, ERASE)
        b_d = tl.sum(tl.where(o_t[:, None] == o_r[None, :], b_D, 0.0), 0)
        b_o += b_d[:, None] * b_xr * tl.exp(tl.minimum(b_gr - b_G, 0.0))
    return b_o
