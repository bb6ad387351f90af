"""Chunkwise forward: three kernels that serve every op of DESIGN §1 through compile-time flags.

Stages (DESIGN §1, chunk of BT tokens, incoming state S₀):

0. ``chunk_cumsum_kernel`` (chunk-parallel): the chunk-local cumulative log-decay ``G``.
1. ``chunk_intra_kernel`` (chunk-parallel): the readout matrix ``M = scale·tril(Q_γ K̄ᵀ)`` and the
   erase matrix ``T = strict_tril(Ē K̄ᵀ)``, both in the overflow-safe pairwise form, and
   ``A = (I + T)⁻¹``.
2. ``chunk_state_kernel`` (sequential over chunks, parallel over heads and value blocks): the
   incoming state of every chunk ``h``, the corrected values ``R = A (Z − Ē S₀)`` and the final
   state ``S_C = Diag(γ_C) S₀ + K̃ᵀ R``. (``R = U − W S₀`` with ``W = A Ē``, ``U = A Z``, without
   ever writing W and U: the state kernel applies A to ``Z − Ē S₀`` directly.)
3. The output ``O = Q_γ S₀ + M R``: by default (``TUNING["fuse_output"]``) the state kernel forms it
   from the state in its registers, so the forward writes neither h nor R; with the switch off,
   ``chunk_output_kernel`` (chunk-parallel) reads them back. Both share ``output_slot`` /
   ``output_finish``. The backward's recomputation still writes h and R for its gradient kernel.

Without an erase gate ``T = 0``, so ``A = I`` and ``R = Z``: stage 1 skips the inverse.
M and A are returned for the backward, which then skips stage 1.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .common import (
    CHUNK,
    G_MIN,
    INTERPRET,
    TUNING,
    chunk_midpoint,
    chunk_rows,
    defer_program,
    defers,
    dot_precision,
    empty,
    gate_form,
    inverse_precision,
    launch_configs,
    launch_pair_kernel,
    mixed_dot,
    pair_low,
    pair_matrices,
    prepare_chunks,
    scratch_dtype,
    state_low,
    stored_range,
    wide_state_prune,
)


@triton.jit
def invert_diagonal_blocks(A, row0, eos, i_hv, HV: tl.constexpr, BT: tl.constexpr):
    """``(I + T_bb)⁻¹`` of the four strictly lower ``[16, 16]`` diagonal blocks of the T stored at A,
    by forward substitution on one ``[4, 16, 16]`` tile: 15 serial steps for the four blocks
    together (one loop per block was 60 steps in a row). Written back in place; rows past the
    sequence end are zero in T and the identity's in the inverse, and are not stored. Only the
    diagonal blocks are overwritten: the caller's off-diagonal T blocks stay in place."""
    o_b = tl.arange(0, 4)
    o_i = tl.arange(0, 16)
    rows = row0 + (o_b * 16)[:, None, None] + o_i[None, :, None]  # [4, 16, 1]
    p = A + (rows * HV + i_hv) * BT + (o_b * 16)[:, None, None] + o_i[None, None, :]
    m = rows < eos
    b_T = tl.load(p, mask=m, other=0).to(tl.float32)
    tl.debug_barrier()  # every thread has read its T before any writes an inverse over it
    tl.store(p, unit_lower_inverse_16(b_T), mask=m)


@triton.jit
def unit_lower_inverse_16(b_T):
    """``(I + T_b)⁻¹`` of a ``[4, 16, 16]`` tile of strictly lower blocks, by forward substitution
    in registers: 15 serial steps for the four blocks together."""
    o_i = tl.arange(0, 16)
    is_row = o_i[None, :, None]
    b_A = tl.where(is_row == o_i[None, None, :], 1.0, 0.0) + tl.zeros([4, 16, 16], dtype=tl.float32)
    for i in range(1, 16):
        # row i of each block: e_i − Σ_{j<i} T[i, j] A[j, :]   (T[i, j] = 0 for j ≥ i)
        b_t = tl.sum(tl.where(is_row == i, b_T, 0.0), 1)  # [4, 16]: T[i, :] of each block
        b_a = tl.where(o_i[None, :] == i, 1.0, 0.0) - tl.sum(b_t[:, :, None] * b_A, 1)
        b_A = tl.where(is_row == i, b_a[:, None, :], b_A)
    return b_A


@triton.jit
def unit_lower_inverse_4x16(T0, T1, T2, T3):
    """``(I + T_b)⁻¹`` of four strictly lower ``[16, 16]`` tiles held apart, by forward
    substitution in registers: 15 serial steps, the four tiles' chains side by side in each."""
    o_i = tl.arange(0, 16)
    row = o_i[:, None]
    eye = tl.where(row == o_i[None, :], 1.0, 0.0)
    A0, A1, A2, A3 = eye, eye, eye, eye
    for i in range(1, 16):
        e_i = tl.where(o_i == i, 1.0, 0.0)
        # row i of each tile: e_i − Σ_{j<i} T[i, j] A[j, :]   (T[i, j] = 0 for j ≥ i)
        t0 = tl.sum(tl.where(row == i, T0, 0.0), 0)
        t1 = tl.sum(tl.where(row == i, T1, 0.0), 0)
        t2 = tl.sum(tl.where(row == i, T2, 0.0), 0)
        t3 = tl.sum(tl.where(row == i, T3, 0.0), 0)
        A0 = tl.where(row == i, (e_i - tl.sum(t0[:, None] * A0, 0))[None, :], A0)
        A1 = tl.where(row == i, (e_i - tl.sum(t1[:, None] * A1, 0))[None, :], A1)
        A2 = tl.where(row == i, (e_i - tl.sum(t2[:, None] * A2, 0))[None, :], A2)
        A3 = tl.where(row == i, (e_i - tl.sum(t3[:, None] * A3, 0))[None, :], A3)
    return A0, A1, A2, A3


@triton.jit
def merge_blocks(A00, A11, A22, A33, T10, T20, T21, T30, T31, T32, PREC: tl.constexpr):
    """The blocks below the diagonal of ``(I + T)⁻¹`` from the diagonal blocks' inverses and T's
    blocks below the diagonal: ``A_ij = −A_ii Σ_{j≤k<i} T_ik A_kj``. Returns A10, A20, A21, A30,
    A31, A32."""
    A10 = -tl.dot(A11, tl.dot(T10, A00, input_precision=PREC), input_precision=PREC)
    A21 = -tl.dot(A22, tl.dot(T21, A11, input_precision=PREC), input_precision=PREC)
    A20 = -tl.dot(A22, tl.dot(T20, A00, input_precision=PREC) + tl.dot(T21, A10, input_precision=PREC),
                  input_precision=PREC)
    A32 = -tl.dot(A33, tl.dot(T32, A22, input_precision=PREC), input_precision=PREC)
    A31 = -tl.dot(A33, tl.dot(T31, A11, input_precision=PREC) + tl.dot(T32, A21, input_precision=PREC),
                  input_precision=PREC)
    A30 = -tl.dot(A33, tl.dot(T30, A00, input_precision=PREC) + tl.dot(T31, A10, input_precision=PREC)
                  + tl.dot(T32, A20, input_precision=PREC), input_precision=PREC)
    return A10, A20, A21, A30, A31, A32


@triton.jit
def solve_unit_lower(A, row0, eos, i_hv, HV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
                     REG_DIAG: tl.constexpr = False):
    """Overwrite the strictly lower ``T [BT=64, BT]`` stored at A (rows row0 + 0..63, zeros above
    the diagonal) with ``(I + T)⁻¹``, by 16×16 blocks: the diagonal blocks by substitution, then
    ``A_ij = −A_ii Σ_{j≤k<i} T_ik A_kj``. Registers hold 16×16 tiles only (a 64×64 substitution
    spills). The diagonal blocks are inverted on one ``[4, 16, 16]`` tile through memory
    (:func:`invert_diagonal_blocks`; the barriers order the round trip within the program) or, with
    REG_DIAG, as four ``[16, 16]`` register tiles (:func:`unit_lower_inverse_4x16`), no round trip."""
    o_i = tl.arange(0, 16)
    r0, r1, r2, r3 = row0 + o_i, row0 + 16 + o_i, row0 + 32 + o_i, row0 + 48 + o_i
    m0, m1, m2, m3 = (r0 < eos)[:, None], (r1 < eos)[:, None], (r2 < eos)[:, None], (r3 < eos)[:, None]
    p0 = A + (r0[:, None] * HV + i_hv) * BT + o_i[None, :]
    p1 = A + (r1[:, None] * HV + i_hv) * BT + o_i[None, :]
    p2 = A + (r2[:, None] * HV + i_hv) * BT + o_i[None, :]
    p3 = A + (r3[:, None] * HV + i_hv) * BT + o_i[None, :]
    T10 = tl.load(p1, mask=m1, other=0).to(tl.float32)
    T20 = tl.load(p2, mask=m2, other=0).to(tl.float32)
    T21 = tl.load(p2 + 16, mask=m2, other=0).to(tl.float32)
    T30 = tl.load(p3, mask=m3, other=0).to(tl.float32)
    T31 = tl.load(p3 + 16, mask=m3, other=0).to(tl.float32)
    T32 = tl.load(p3 + 32, mask=m3, other=0).to(tl.float32)
    if REG_DIAG:
        T00 = tl.load(p0, mask=m0, other=0).to(tl.float32)
        T11 = tl.load(p1 + 16, mask=m1, other=0).to(tl.float32)
        T22 = tl.load(p2 + 32, mask=m2, other=0).to(tl.float32)
        T33 = tl.load(p3 + 48, mask=m3, other=0).to(tl.float32)
        A00, A11, A22, A33 = unit_lower_inverse_4x16(T00, T11, T22, T33)
    else:
        invert_diagonal_blocks(A, row0, eos, i_hv, HV, BT)
        tl.debug_barrier()  # the inverted diagonal blocks are in memory for every thread
        A00 = tl.load(p0, mask=m0, other=0).to(tl.float32)
        A11 = tl.load(p1 + 16, mask=m1, other=0).to(tl.float32)
        A22 = tl.load(p2 + 32, mask=m2, other=0).to(tl.float32)
        A33 = tl.load(p3 + 48, mask=m3, other=0).to(tl.float32)
    A10, A20, A21, A30, A31, A32 = merge_blocks(A00, A11, A22, A33, T10, T20, T21, T30, T31, T32, PREC)
    if REG_DIAG:
        tl.debug_barrier()  # every thread has read its T before any overwrites it
        tl.store(p0, A00, mask=m0)
        tl.store(p1 + 16, A11, mask=m1)
        tl.store(p2 + 32, A22, mask=m2)
        tl.store(p3 + 48, A33, mask=m3)
    tl.store(p1, A10, mask=m1)
    tl.store(p2, A20, mask=m2)
    tl.store(p2 + 16, A21, mask=m2)
    tl.store(p3, A30, mask=m3)
    tl.store(p3 + 16, A31, mask=m3)
    tl.store(p3 + 32, A32, mask=m3)


@triton.jit
def load_erase(k, b, o_row, m_t, i_h, i_hv, o_k, m_tk, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr,
               ERASE: tl.constexpr):
    """``(k, e = b ⊙ k)`` rows of one K block, fp32 ``[BT, BK]``."""
    b_k = tl.load(k + (o_row[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    if ERASE == 2:
        p_b = b + (o_row[:, None] * HV + i_hv) * K + o_k[None, :]
        b_e = b_k * tl.load(p_b, mask=m_tk, other=0).to(tl.float32)
    elif ERASE == 1:
        b_e = b_k * tl.load(b + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)[:, None]
    else:
        b_e = b_k
    return b_k, b_e


@triton.jit
def load_write(v, w, o_row, m_t, i_hv, o_v, m_tv, HV: tl.constexpr, V: tl.constexpr, WRITE: tl.constexpr):
    """``z = w ⊙ v`` rows of one V block, fp32 ``[BT, BV]``."""
    b_z = tl.load(v + (o_row[:, None] * HV + i_hv) * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
    if WRITE == 2:
        b_z *= tl.load(w + (o_row[:, None] * HV + i_hv) * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
    elif WRITE == 1:
        b_z *= tl.load(w + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)[:, None]
    return b_z


@triton.jit
def load_cumdecay(g, o_row, m_t, i_hv, o_k, m_tk, HV: tl.constexpr, K: tl.constexpr, DECAY: tl.constexpr):
    """Chunk-local cumulative log-decay G: ``[BT, BK]`` (per channel) or ``[BT]`` (per head).

    Rows past the sequence end load g = 0, so G stays flat there and the last row holds G_C.
    """
    if DECAY == 2:
        b_g = tl.load(g + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    else:
        b_g = tl.load(g + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)
    return tl.cumsum(tl.maximum(b_g, G_MIN), 0)


@triton.jit
def load_slot(x, p_n, o_s, o_v, m_v, K: tl.constexpr, V: tl.constexpr):
    """Rows ``o_s`` of one ``[K, V]`` fp32 state at ``x + p_n``, value columns ``o_v``."""
    return tl.load(x + p_n + o_s[:, None] * V + o_v[None, :], mask=(o_s < K)[:, None] & m_v[None, :], other=0)


@triton.jit
def load_slots(x, p_n, o_k, o_v, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               USE: tl.constexpr):
    """A ``[K, BV]`` fp32 state as four ``[BK, BV]`` slots (rows ``i·BK + o_k``): read from
    ``x + p_n`` when USE, else zeros; slots past K stay zero (and are never used)."""
    b_0 = tl.zeros([BK, BV], dtype=tl.float32)
    b_1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_3 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        b_0 += load_slot(x, p_n, o_k, o_v, m_v, K, V)
        if K > BK:
            b_1 += load_slot(x, p_n, BK + o_k, o_v, m_v, K, V)
        if K > 2 * BK:
            b_2 += load_slot(x, p_n, 2 * BK + o_k, o_v, m_v, K, V)
        if K > 3 * BK:
            b_3 += load_slot(x, p_n, 3 * BK + o_k, o_v, m_v, K, V)
    return b_0, b_1, b_2, b_3


@triton.jit
def store_slot(x, p_n, b_S, o_s, o_v, m_v, K: tl.constexpr, V: tl.constexpr):
    tl.store(x + p_n + o_s[:, None] * V + o_v[None, :], b_S, mask=(o_s < K)[:, None] & m_v[None, :])


@triton.jit
def store_slots(x, p_n, b_0, b_1, b_2, b_3, o_k, o_v, m_v, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr):
    """Write the slots of :func:`load_slots` back as one ``[K, BV]`` state at ``x + p_n``."""
    store_slot(x, p_n, b_0, o_k, o_v, m_v, K, V)
    if K > BK:
        store_slot(x, p_n, b_1, BK + o_k, o_v, m_v, K, V)
    if K > 2 * BK:
        store_slot(x, p_n, b_2, 2 * BK + o_k, o_v, m_v, K, V)
    if K > 3 * BK:
        store_slot(x, p_n, b_3, 3 * BK + o_k, o_v, m_v, K, V)


@triton.jit
def chunk_cumsum_kernel(g, G, ranges, cu_seqlens, chunk_indices, HV: tl.constexpr, K: tl.constexpr,
                        BT: tl.constexpr, BK: tl.constexpr, DECAY: tl.constexpr, STORE_RANGE: tl.constexpr):
    """Chunk-local cumulative log-decay: G ``[Ttot, HV, K]`` (per channel) or ``[Ttot, HV]`` (per
    head), fp32. One program per (chunk, value head, K block). STORE_RANGE (per channel): also the
    tile's log-decay range (:func:`chunk_midpoint`) in ``ranges [NT, HV, NK]``, which the pair
    kernels' deferring launches read before any other work."""
    i_t, i_hv, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    if DECAY == 2:
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_G = load_cumdecay(g, o_row, m_t, i_hv, o_k, m_tk, HV, K, 2)
        tl.store(G + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], b_G, mask=m_tk)
        if STORE_RANGE:
            # masked channels (past K) load g = 0: their range is 0
            b_rng = chunk_midpoint(b_G, m_t)[1]
            tl.store(ranges + (i_t.to(tl.int64) * HV + i_hv) * tl.num_programs(2) + i_k, b_rng)
    else:
        b_G1 = load_cumdecay(g, o_row, m_t, i_hv, o_row, m_t, HV, K, 1)
        tl.store(G + o_row * HV + i_hv, b_G1, mask=m_t)


@triton.jit
def intra_program(
    q, k, b, G, M, A, cu_seqlens, chunk_indices, scale, i_t, i_hv,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, PREC: tl.constexpr, PREC_INV: tl.constexpr,
    LOW: tl.constexpr, SPLIT_SOLVE: tl.constexpr, RANGE: tl.constexpr, NATIVE: tl.constexpr,
):
    """The intra kernel's work for one (chunk, value head); RANGE < 0: the midpoint path unchecked
    (the deferring launch, which lists the chunks past the limit before any work)."""
    i_h = i_hv // (HV // H)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    m_tt = m_t[:, None] & (o_t[None, :] < BT)

    b_M = tl.zeros([BT, BT], dtype=tl.float32)
    b_T = tl.zeros([BT, BT], dtype=tl.float32)
    row0 = bos + i_c * BT
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_q = q + (o_row[:, None] * H + i_h) * K + o_k[None, :]
        if DECAY == 2:
            b_q = tl.load(p_q, mask=m_tk, other=0).to(tl.float32)
            b_k, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_k, m_tk, H, HV, K, ERASE)
            b_G = tl.load(G + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_tk, other=0)
            b_Mk, b_Tk = pair_matrices(b_q, b_e, b_k, b_G, G, row0, eos, i_hv, o_t, o_k, o_k < K, HV, K, BT,
                                       ERASE > 0, PREC, LOW, RANGE)
            b_M += b_Mk
            b_T += b_Tk
        elif ERASE < 2:
            # the inputs' own operands (NATIVE): 16-bit products are exact in the fp32 accumulator,
            # as tf32's are, at twice the rate and half the operand bytes. A scalar erase gate
            # scales T's rows after the loop instead of rounding b ⊙ k to 16 bits.
            b_q = tl.load(p_q, mask=m_tk, other=0)
            b_k = tl.load(k + (o_row[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0)
            if not NATIVE:
                b_q, b_k = b_q.to(tl.float32), b_k.to(tl.float32)
            b_M += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
            if ERASE > 0:
                b_T += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        else:
            b_q = tl.load(p_q, mask=m_tk, other=0).to(tl.float32)
            b_k, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_k, m_tk, H, HV, K, ERASE)
            b_M += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
            b_T += tl.dot(b_e, tl.trans(b_k), input_precision=PREC)
    if DECAY < 2 and ERASE == 1:
        b_T *= tl.load(b + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)[:, None]
    if DECAY == 1:
        b_G1 = tl.load(G + o_row * HV + i_hv, mask=m_t, other=0)
        b_rho = tl.exp(tl.minimum(b_G1[:, None] - b_G1[None, :], 0.0))
        b_M *= b_rho
        b_T *= b_rho
    b_M = tl.where(o_t[:, None] >= o_t[None, :], b_M * scale, 0.0)
    p_tt = (o_row[:, None] * HV + i_hv) * BT + o_t[None, :]
    tl.store(M + p_tt, b_M, mask=m_tt)
    if ERASE > 0:
        # A = (I + T)⁻¹ through the A buffer (block rows of 16 need 16 rows' masks per block),
        # here or (SPLIT_SOLVE) by chunk_solve_kernel
        tl.store(A + p_tt, tl.where(o_t[:, None] > o_t[None, :], b_T, 0.0), mask=m_tt)
        if not SPLIT_SOLVE:
            tl.debug_barrier()
            solve_unit_lower(A, row0, eos, i_hv, HV, BT, PREC_INV)


@triton.autotune(
    # With the dyadic split alone 4 warps spilled ~250 B and lost (H200 sweep, tune_gdn2_h200.json);
    # since most tiles take the midpoint path, the autotuner picks 4 warps again at gdn2's 2k and
    # 32k shapes (068b911). A 128-register cap (two programs per SM) and a 16-row-block form without
    # stack were timed on the H200 and lost (2026-11-29).
    launch_configs((4, 8), (1, 2)),
    key=["H", "HV", "K", "BK", "DECAY", "ERASE", "LOW", "SPLIT_SOLVE", "RANGE", "NATIVE", "PASS"],
    # a deferring pass appends to the worklist: every timing run starts from an empty one
    reset_to_zero=["worklist"],
)
@triton.jit
def chunk_intra_kernel(
    q, k, b, G, M, A, cu_seqlens, chunk_indices, scale, ranges, worklist, limit, capacity,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, PREC: tl.constexpr, PREC_INV: tl.constexpr,
    LOW: tl.constexpr, SPLIT_SOLVE: tl.constexpr, RANGE: tl.constexpr, NATIVE: tl.constexpr,
    NR: tl.constexpr, PASS: tl.constexpr,
):
    """One program per (chunk, value head). Reads G; writes M ``[Ttot, HV, BT]`` and, with an
    erase gate, A = (I + T)⁻¹ ``[Ttot, HV, BT]`` (row r holds A[r, :] of its chunk). NATIVE (not under
    the interpreter, whose bf16 ``tl.dot`` is wrong in Triton 3.9): per-head or no decay and no
    per-channel erase gate multiply the inputs as they are, not converted to fp32 first.

    PASS 0: the pair products by the midpoint or the split per tile (RANGE). With
    ``TUNING["pair_fallback"]`` (per-channel decay), PASS 1 reads the chunk's stored tile ranges
    (``ranges [NT, HV, NR]``, from the cumulative-decay kernel): past ``limit`` it puts the chunk
    on the worklist and stops, else it takes the midpoint path alone; PASS 2 (persistent programs,
    ``chunk_intra_kernel.fn``) does the listed ones as PASS 0 would (see :func:`chunk_grad_kernel`)."""
    if PASS == 2:
        n = tl.minimum(tl.load(worklist), capacity)
        for j in range(tl.program_id(0), n, tl.num_programs(0)):
            item = tl.load(worklist + 1 + j)
            intra_program(q, k, b, G, M, A, cu_seqlens, chunk_indices, scale, item // HV, item % HV, H, HV, K,
                          BT, BK, DECAY, ERASE, PREC, PREC_INV, LOW, SPLIT_SOLVE, RANGE, NATIVE)
    elif PASS == 1:
        i_t, i_hv = tl.program_id(0), tl.program_id(1)
        b_rng = stored_range(ranges, i_t, i_hv, HV, NR)
        if b_rng > limit:
            defer_program(worklist, i_t * HV + i_hv, capacity)
        else:
            intra_program(q, k, b, G, M, A, cu_seqlens, chunk_indices, scale, i_t, i_hv, H, HV, K, BT, BK,
                          DECAY, ERASE, PREC, PREC_INV, LOW, SPLIT_SOLVE, -1.0, NATIVE)
    else:
        intra_program(q, k, b, G, M, A, cu_seqlens, chunk_indices, scale, tl.program_id(0), tl.program_id(1),
                      H, HV, K, BT, BK, DECAY, ERASE, PREC, PREC_INV, LOW, SPLIT_SOLVE, RANGE, NATIVE)


@triton.jit
def chunk_solve_kernel(A, cu_seqlens, chunk_indices, HV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
                       REG_DIAG: tl.constexpr):
    """One program per (chunk, value head): ``A ← (I + T)⁻¹`` in place (T strictly lower, as the
    intra kernel stored it). Small tiles and registers: many programs per SM hide the latency of
    the substitution's serial steps, which the register-heavy intra kernel (one program per SM)
    cannot. Not autotuned: it works in place, so a tuning rerun would invert twice."""
    i_t, i_hv = tl.program_id(0), tl.program_id(1)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    solve_unit_lower(A, bos + i_c * BT, eos, i_hv, HV, BT, PREC, REG_DIAG)


@triton.autotune(
    launch_configs((4,), (1, 2)),
    key=["H", "HV", "K", "V", "BK", "BV", "DECAY", "ERASE", "WRITE", "STORE_WU", "PRE_KD", "PRE_QG",
         "PRE_EG"],
)
@triton.jit
def chunk_wu_kernel(
    q, k, v, b, w, G, A, W, U, KD, QG, EG, cu_seqlens, chunk_indices,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, STORE_WU: tl.constexpr,
    PRE_KD: tl.constexpr, PRE_QG: tl.constexpr, PRE_EG: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (chunk, value head): with STORE_WU, ``W = A Ē`` ``[Ttot, HV, K]`` (Ē rows
    ``γ_r ⊙ e_r``, factors ≤ 1 only) and ``U = A Z`` ``[Ttot, HV, V]`` for the unfused state
    kernel; with PRE_KD (a decay) the decayed keys ``k̃_r = exp(G_C − G_r) ⊙ k_r`` into KD
    ``[Ttot, HV, K]``, which the sequential kernels then read (:func:`decayed_keys`), and with
    PRE_QG ``γ_r ⊙ q_r`` into QG (for the forward's output, per-channel decay, and the backward's
    sequential kernel) and PRE_EG Ē into EG (for the latter). Without
    STORE_WU (the state kernel forms R from A itself) only the decayed operands."""
    i_t, i_hv = tl.program_id(0), tl.program_id(1)
    i_h = i_hv // (HV // H)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    if STORE_WU:
        b_A = tl.load(A + (o_row[:, None] * HV + i_hv) * BT + o_t[None, :], mask=m_t[:, None], other=0)
        b_A = b_A.to(tl.float32)
    i_last = tl.minimum(bos + i_c * BT + BT, eos) - 1
    if DECAY == 1:
        b_G1 = tl.load(G + o_row * HV + i_hv, mask=m_t, other=0)
        b_gam1 = tl.exp(b_G1)[:, None]
        b_kdec1 = tl.exp(tl.minimum(tl.load(G + i_last * HV + i_hv) - b_G1, 0.0))[:, None]
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (o_row[:, None] * HV + i_hv) * K + o_k[None, :]
        b_k, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_k, m_tk, H, HV, K, ERASE)
        if DECAY == 2:
            b_G = tl.load(G + p_tk, mask=m_tk, other=0)
            b_gam = tl.exp(b_G)
            b_gl = tl.load(G + (i_last * HV + i_hv) * K + o_k, mask=o_k < K, other=0)
            b_kdec = tl.exp(tl.minimum(b_gl[None, :] - b_G, 0.0))
        elif DECAY == 1:
            b_gam = b_gam1
            b_kdec = b_kdec1
        if DECAY > 0:
            b_e *= b_gam
            if PRE_KD:
                tl.store(KD + p_tk, b_k * b_kdec, mask=m_tk)
            if PRE_QG:
                b_q = tl.load(q + (o_row[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0)
                tl.store(QG + p_tk, b_q.to(tl.float32) * b_gam, mask=m_tk)
            if PRE_EG:
                tl.store(EG + p_tk, b_e, mask=m_tk)
        if STORE_WU:
            tl.store(W + p_tk, tl.dot(b_A, b_e, input_precision=PREC), mask=m_tk)
    if STORE_WU:
        for i_v in range(tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_tv = m_t[:, None] & (o_v < V)[None, :]
            b_z = load_write(v, w, o_row, m_t, i_hv, o_v, m_tv, HV, V, WRITE)
            p_tv = (o_row[:, None] * HV + i_hv) * V + o_v[None, :]
            tl.store(U + p_tv, tl.dot(b_A, b_z, input_precision=PREC), mask=m_tv)


@triton.jit
def decayed_keys(k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_k, m_k, H: tl.constexpr, HV: tl.constexpr,
                 K: tl.constexpr, DECAY: tl.constexpr, PRE_KD: tl.constexpr):
    """One K slot of a chunk: the keys decayed to the chunk end, ``k̃_r = exp(G_C − G_r) ⊙ k_r``
    ``[BT, BK]`` fp32, and the chunk's total decay ``γ_C`` (``[BK, 1]``, a scalar, or 1). PRE_KD
    (with a decay): k̃ read from KD ``[Ttot, HV, K]``, which :func:`chunk_wu_kernel` wrote,
    instead of formed here by every value-block program of the sequential kernels."""
    m_tk = m_t[:, None] & m_k[None, :]
    if DECAY > 0 and PRE_KD:
        b_k = tl.load(KD + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    else:
        b_k = tl.load(k + (o_row[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    if DECAY == 2:
        b_gl = tl.load(G + (i_last * HV + i_hv) * K + o_k, mask=m_k, other=0)
        if not PRE_KD:
            b_G = tl.load(G + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_tk, other=0)
            b_k *= tl.exp(tl.minimum(b_gl[None, :] - b_G, 0.0))
        b_decay = tl.exp(b_gl)[:, None]
    elif DECAY == 1:
        b_gl = tl.load(G + i_last * HV + i_hv)
        if not PRE_KD:
            b_G = tl.load(G + o_row * HV + i_hv, mask=m_t, other=0)
            b_k *= tl.exp(tl.minimum(b_gl - b_G, 0.0))[:, None]
        b_decay = tl.exp(b_gl)
    else:
        b_decay = 1.0
    return b_k, b_decay


@triton.jit
def output_slot(b_S, q, G, QG, o_row, m_t, i_h, i_hv, o_s, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr,
                DECAY: tl.constexpr, PRE_QG: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """The K rows ``o_s``'s share of ``(γ ⊙ Q) S₀`` ``[BT, BV]`` for a ``[len(o_s), BV]`` slice of
    the incoming state (per-head γ is left to :func:`output_finish`). PRE_QG (per-channel decay):
    ``γ ⊙ q`` read from QG ``[Ttot, HV, K]``, which :func:`chunk_wu_kernel` wrote once per chunk,
    instead of formed by every value-block program. LOW: operands as :func:`mixed_dot`'s."""
    m_tk = m_t[:, None] & (o_s < K)[None, :]
    if DECAY == 2 and PRE_QG:
        b_q = tl.load(QG + (o_row[:, None] * HV + i_hv) * K + o_s[None, :], mask=m_tk, other=0).to(tl.float32)
    else:
        b_q = tl.load(q + (o_row[:, None] * H + i_h) * K + o_s[None, :], mask=m_tk, other=0).to(tl.float32)
        if DECAY == 2:
            b_q *= tl.exp(tl.load(G + (o_row[:, None] * HV + i_hv) * K + o_s[None, :], mask=m_tk, other=0))
    return mixed_dot(b_q, b_S, PREC, LOW)


@triton.jit
def output_finish(b_o, b_R, G, M, o, o_row, m_t, o_t, i_hv, p_tv, m_tv, scale, HV: tl.constexpr,
                  BT: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr):
    """Store ``O = scale·(γ ⊙ Q) S₀ + M R`` for one value block of a chunk, from b_o = the sum of
    :func:`output_slot` over K and R ``[BT, BV]`` fp32."""
    if DECAY == 1:
        b_o *= tl.exp(tl.load(G + o_row * HV + i_hv, mask=m_t, other=0))[:, None]
    b_o *= scale
    b_M = tl.load(M + (o_row[:, None] * HV + i_hv) * BT + o_t[None, :], mask=m_t[:, None], other=0)
    b_o += tl.dot(b_M.to(tl.float32), b_R, input_precision=PREC)
    tl.store(o + p_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


@triton.jit
def state_slot_step(b_S, b_Y, k, b, G, W, h, p_h, o_row, m_t, i_h, i_hv, o_s, o_v, m_v,
                    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    DECAY: tl.constexpr, ERASE: tl.constexpr, FUSED_WU: tl.constexpr, PREC: tl.constexpr,
                    OUT: tl.constexpr, LOW: tl.constexpr):
    """Phase 1 of one K slot ``o_s`` of the state: store it as the chunk's incoming state (unless
    OUT: the state kernel forms the output itself and h is not needed) and return its share of
    ``Ē S₀`` (FUSED_WU: ``Ē`` rows ``γ_r ⊙ b_r ⊙ k_r`` built here) or of ``W S₀`` (W from memory);
    0 without an erase gate."""
    m_k = o_s < K
    if not OUT:
        tl.store(h + p_h + o_s[:, None] * V + o_v[None, :], b_S, mask=m_k[:, None] & m_v[None, :])
    if ERASE > 0:
        m_tk = m_t[:, None] & m_k[None, :]
        if FUSED_WU:
            _, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_s, m_tk, H, HV, K, ERASE)
            if DECAY == 2:
                p_G = G + (o_row[:, None] * HV + i_hv) * K + o_s[None, :]
                b_e *= tl.exp(tl.load(p_G, mask=m_tk, other=0))
            elif DECAY == 1:
                b_e *= tl.exp(tl.load(G + o_row * HV + i_hv, mask=m_t, other=0))[:, None]
        else:
            b_e = tl.load(W + (o_row[:, None] * HV + i_hv) * K + o_s[None, :], mask=m_tk, other=0)
            b_e = b_e.to(tl.float32)
        return mixed_dot(b_e, b_S, PREC, LOW)
    else:
        return tl.zeros(b_Y.shape, dtype=tl.float32)


@triton.jit
def state_slot_update(b_S, b_R, k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s, H: tl.constexpr,
                      HV: tl.constexpr, K: tl.constexpr, DECAY: tl.constexpr, PRE_KD: tl.constexpr,
                      PREC: tl.constexpr, LOW: tl.constexpr):
    """Phase 2 of one K slot: ``S ← γ_C ⊙ S + K̃ᵀ R``."""
    b_k, b_decay = decayed_keys(k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s, o_s < K, H, HV, K, DECAY,
                                PRE_KD)
    return b_S * b_decay + mixed_dot(tl.trans(b_k), b_R, PREC, LOW)


@triton.autotune(
    launch_configs((4, 8), (1, 2, 3)),
    key=["H", "HV", "K", "V", "BK", "BV", "DECAY", "ERASE", "WRITE", "PRE_KD", "OUT", "PRE_QG", "LOW"],
    prune_configs_by={"early_config_prune": wide_state_prune},
)
@triton.jit
def chunk_state_kernel(
    k, v, b, w, G, A, W, U, KD, R, h, h0, ht, q, QG, M, o, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, FUSED_WU: tl.constexpr,
    PRE_KD: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, OUT: tl.constexpr,
    PRE_QG: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr,
):
    """One program per (value block, sequence·head), walking the sequence's chunks in order.

    Writes the incoming state of each chunk h ``[NT, HV, K, V]``, the corrected values
    R ``[Ttot, HV, V]`` and the final state ht ``[N, HV, K, V]`` fp32; with OUT, instead of h and R,
    the output o ``[Ttot, HV, V]`` (as :func:`chunk_output_kernel` would, from q, G, M and the
    registers' S₀ and R: the forward then writes and re-reads neither). With an erase gate,
    ``R = A (Z − Ē S₀)`` (FUSED_WU: from A and the inputs) or ``R = U − W S₀`` (W, U from
    :func:`chunk_wu_kernel`); one or the other is faster depending on the compiler's registers.

    The ``[K, BV]`` state is held as up to four ``[BK, BV]`` slots (K ≤ 4·BK), each its own
    register tile: one ``[K, BV]`` tile with its ``[BT, K]`` operands spills at K = 128. LOW: the
    operands of the products with the state (``Ē S₀`` or ``W S₀``, ``(γ ⊙ Q) S₀``, ``K̃ᵀ R``) as
    :func:`mixed_dot`'s (``TUNING["state_bf16"]``); ``A Y`` and ``M R`` stay at PREC.
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    i_c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    tl.static_assert(K <= 4 * BK)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_s0, o_s1, o_s2, o_s3 = o_k, BK + o_k, 2 * BK + o_k, 3 * BK + o_k
    p_n = i_nh.to(tl.int64) * K * V

    b_S0, b_S1, b_S2, b_S3 = load_slots(h0, p_n, o_k, o_v, m_v, K, V, BK, BV, USE_H0)
    # A for loop over a data-dependent trip count (not a while loop): the compiler software-
    # pipelines it, prefetching the next chunk's rows while this chunk's products run.
    for i_c in range(tl.cdiv(eos - bos, BT)):
        o_row = bos + i_c * BT + o_t
        m_t = o_row < eos
        m_tv = m_t[:, None] & m_v[None, :]
        p_h = ((i_c0 + i_c) * HV + i_hv) * K * V
        i_last = tl.minimum(bos + i_c * BT + BT, eos) - 1
        # FUSED_WU: Y = Z − Ē S₀, then R = A Y. Else R = U − W S₀.
        if ERASE > 0 and not FUSED_WU:
            b_Y = tl.load(U + (o_row[:, None] * HV + i_hv) * V + o_v[None, :], mask=m_tv, other=0)
            b_Y = b_Y.to(tl.float32)
        else:
            b_Y = load_write(v, w, o_row, m_t, i_hv, o_v, m_tv, HV, V, WRITE)
        b_Y -= state_slot_step(b_S0, b_Y, k, b, G, W, h, p_h, o_row, m_t, i_h, i_hv, o_s0, o_v, m_v,
                               H, HV, K, V, DECAY, ERASE, FUSED_WU, PREC, OUT, LOW)
        if K > BK:
            b_Y -= state_slot_step(b_S1, b_Y, k, b, G, W, h, p_h, o_row, m_t, i_h, i_hv, o_s1,
                                   o_v, m_v, H, HV, K, V, DECAY, ERASE, FUSED_WU, PREC, OUT, LOW)
        if K > 2 * BK:
            b_Y -= state_slot_step(b_S2, b_Y, k, b, G, W, h, p_h, o_row, m_t, i_h, i_hv, o_s2,
                                   o_v, m_v, H, HV, K, V, DECAY, ERASE, FUSED_WU, PREC, OUT, LOW)
        if K > 3 * BK:
            b_Y -= state_slot_step(b_S3, b_Y, k, b, G, W, h, p_h, o_row, m_t, i_h, i_hv, o_s3,
                                   o_v, m_v, H, HV, K, V, DECAY, ERASE, FUSED_WU, PREC, OUT, LOW)
        if OUT:  # the output's state term, from S₀ before phase 2 updates it
            b_O = output_slot(b_S0, q, G, QG, o_row, m_t, i_h, i_hv, o_s0, H, HV, K, DECAY, PRE_QG, PREC, LOW)
            if K > BK:
                b_O += output_slot(b_S1, q, G, QG, o_row, m_t, i_h, i_hv, o_s1, H, HV, K, DECAY, PRE_QG,
                                   PREC, LOW)
            if K > 2 * BK:
                b_O += output_slot(b_S2, q, G, QG, o_row, m_t, i_h, i_hv, o_s2, H, HV, K, DECAY, PRE_QG,
                                   PREC, LOW)
            if K > 3 * BK:
                b_O += output_slot(b_S3, q, G, QG, o_row, m_t, i_h, i_hv, o_s3, H, HV, K, DECAY, PRE_QG,
                                   PREC, LOW)
        if ERASE > 0 and FUSED_WU:
            b_A = tl.load(A + (o_row[:, None] * HV + i_hv) * BT + o_t[None, :], mask=m_t[:, None], other=0)
            b_R = tl.dot(b_A.to(tl.float32), b_Y, input_precision=PREC)
        else:
            b_R = b_Y
        p_tv = (o_row[:, None] * HV + i_hv) * V + o_v[None, :]
        if OUT:
            output_finish(b_O, b_R, G, M, o, o_row, m_t, o_t, i_hv, p_tv, m_tv, scale, HV, BT, DECAY, PREC)
        else:
            tl.store(R + p_tv, b_R, mask=m_tv)
        b_S0 = state_slot_update(b_S0, b_R, k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s0, H, HV, K, DECAY,
                                 PRE_KD, PREC, LOW)
        if K > BK:
            b_S1 = state_slot_update(b_S1, b_R, k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s1, H, HV, K,
                                     DECAY, PRE_KD, PREC, LOW)
        if K > 2 * BK:
            b_S2 = state_slot_update(b_S2, b_R, k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s2, H, HV, K,
                                     DECAY, PRE_KD, PREC, LOW)
        if K > 3 * BK:
            b_S3 = state_slot_update(b_S3, b_R, k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s3, H, HV, K,
                                     DECAY, PRE_KD, PREC, LOW)
    if STORE_HT:
        store_slots(ht, p_n, b_S0, b_S1, b_S2, b_S3, o_k, o_v, m_v, K, V, BK)


@triton.autotune(
    launch_configs((4,), (1, 2)),
    key=["H", "HV", "K", "V", "BK", "BV", "DECAY"],
)
@triton.jit
def chunk_output_kernel(
    q, G, M, R, h, o, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (value block, chunk, value head): ``O = scale·(γ ⊙ Q) S₀ + M R``."""
    i_v, i_t, i_hv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h = i_hv // (HV // H)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        b_h = tl.load(h + (i_t.to(tl.int64) * HV + i_hv) * K * V + o_k[:, None] * V + o_v[None, :],
                      mask=(o_k < K)[:, None] & m_v[None, :], other=0).to(tl.float32)
        b_o += output_slot(b_h, q, G, q, o_row, m_t, i_h, i_hv, o_k, H, HV, K, DECAY, False, PREC, 0)
    p_tv = (o_row[:, None] * HV + i_hv) * V + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_R = tl.load(R + p_tv, mask=m_tv, other=0).to(tl.float32)
    output_finish(b_o, b_R, G, M, o, o_row, m_t, o_t, i_hv, p_tv, m_tv, scale, HV, BT, DECAY, PREC)


def _pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two ≥ n and ≥ lo (plain Python: Triton's helper is a JIT function,
    slower to call from the host, which the decode step does on every token)."""
    return max(lo, 1 << (n - 1).bit_length())


def state_slot(K: int, knob: str = "state_bk") -> int:
    """Rows per state slot of a sequential kernel (``TUNING[knob]``: ``"state_bk"`` for the state
    kernel, ``"state_bwd_bk"`` for the state-gradient kernel), at least a quarter of K rounded up
    to a power of two: the state is up to 4 slots."""
    return max(min(TUNING[knob], _pow2(K)), _pow2(K) // 4)


def state_block_v(V: int, K: int, programs: int, low: bool = False) -> int:
    """Value-block width of the sequential kernels: narrow enough to give the GPU at least
    ``TUNING["state_programs"]`` programs (long single sequences have few heads to spread over, and
    one program per SM leaves each chunk step's products unhidden), wide enough to feed the matrix
    units. ``programs`` is the number of (sequence, value head) pairs; ``low``: the kernel's state
    products take bf16 operands (:func:`~gatedelta.ops.triton.common.state_low`)."""
    BV = min(_pow2(V), 64 if K <= 64 else TUNING["state_bv_max"])
    # Not below TUNING["state_bv_min"] for K > 64, nor below 16 for K <= 64 unless it asks for less
    # (a dot's N may be 8: Triton pads it on the tensor cores); not below 32 with bf16 operands.
    lo = TUNING["state_bv_min"] if K > 64 else min(16, TUNING["state_bv_min"])
    if low:
        lo = max(lo, 32)
    while BV > lo and programs * triton.cdiv(V, BV) < TUNING["state_programs"]:
        BV //= 2
    return BV


def state_tiles(V: int, K: int, programs: int, dtype: torch.dtype, kernel: str) -> tuple[int, int]:
    """``(BV, LOW)`` of the sequential ``kernel`` (``"state"`` or ``"state_bwd"``): its value block
    (:func:`state_block_v`) and its state products' operands (:func:`~.common.state_low`). bf16
    operands only where the block is at least 32 wide (V ≥ 32): Triton 3.6 faulted on narrower
    bf16 state tiles."""
    low = state_low(dtype, kernel)
    BV = state_block_v(V, K, programs, low=bool(low))
    return BV, low if BV >= 32 else 0


def chunk_cumdecay(g, cu, chunk_indices, NT):
    """Stage 0: ``(G, ranges)``. G: fp32 like g (per head or per channel), or None without decay.
    ranges ``[NT, HV, NK]`` fp32: each chunk tile's log-decay range, for the pair kernels'
    deferring launches (:func:`gatedelta.ops.triton.common.launch_pair_kernel`); None when they do
    not defer."""
    if g is None:
        return None, None
    HV = g.shape[1]
    K = g.shape[2] if g.ndim == 3 else 1
    DECAY = gate_form(g)
    G = empty(g.shape, dtype=torch.float32, device=g.device)
    BK = min(64, _pow2(K))
    NK = triton.cdiv(K, BK)
    ranges = empty((NT, HV, NK), dtype=torch.float32, device=g.device) if defers(DECAY) else None
    chunk_cumsum_kernel[(NT, HV, NK)](g, G, G if ranges is None else ranges, cu, chunk_indices, HV=HV, K=K,
                                      BT=CHUNK, BK=BK, DECAY=DECAY, STORE_RANGE=ranges is not None,
                                      num_warps=4)
    return G, ranges


def chunk_intra(q, k, b, G, scale, cu, chunk_indices, NT, HV: int, ranges=None):
    """Stage 1 on packed inputs (G and ranges from :func:`chunk_cumdecay`; HV value heads).
    Returns ``(M, A)``, A None without an erase gate."""
    Ttot, H, K = q.shape
    DECAY, ERASE = gate_form(G), gate_form(b)
    M = empty((Ttot, HV, CHUNK), dtype=scratch_dtype(q.dtype, "M"), device=q.device)
    # A: also the scratch of the in-place (I + T)⁻¹ solve
    A = empty((Ttot, HV, CHUNK), dtype=scratch_dtype(q.dtype, "A"), device=q.device) if ERASE else None
    # per-channel decay keeps several [BT, BK] fp32 tiles live in the pairwise split
    BK = min(TUNING["intra_bk" if DECAY == 2 else "intra_bk_head"], _pow2(K))
    args = (q, k, q if b is None else b, M if G is None else G, M, M if A is None else A, cu, chunk_indices,
            scale)
    meta = dict(H=H, HV=HV, K=K, BT=CHUNK, BK=BK, DECAY=DECAY, ERASE=ERASE, PREC=dot_precision(q.dtype),
                PREC_INV=inverse_precision(q.dtype), LOW=pair_low(q.dtype),
                SPLIT_SOLVE=bool(TUNING["split_solve"]), NATIVE=not INTERPRET)
    launch_pair_kernel(chunk_intra_kernel, (NT, HV), args, meta, DECAY, q.device, ranges)
    if ERASE and TUNING["split_solve"]:
        chunk_solve_kernel[(NT, HV)](A, cu, chunk_indices, HV=HV, BT=CHUNK, PREC=inverse_precision(q.dtype),
                                     REG_DIAG=bool(TUNING["solve_reg_diag"]), num_warps=TUNING["solve_warps"])
    return M, A


def chunk_state(k, v, b, w, G, A, h0, cu, chunk_indices, chunk_offsets, NT, N, q=None, out=None,
                stream=None):
    """Stage 2 (with the W, U kernel first unless the decay form is in ``TUNING["fuse_wu"]`` and not
    in ``TUNING["pre_decayed_keys"]``). Returns
    ``(h [NT, HV, K, V], R [Ttot, HV, V], ht [N, HV, K, V])`` and the decayed operands
    ``(KD, QG, EG)`` ``[Ttot, HV, K]`` when the W, U kernel wrote them
    (decay forms in ``TUNING["pre_decayed_keys"]``; QG = γ ⊙ q and EG = Ē only when ``q`` is
    given, for the backward's sequential kernel), else ``(None, None, None)``. ht is fp32, the rest
    stored in :func:`scratch_dtype`. With ``out = (q, M, o, scale)`` the state kernel writes the
    output into o instead of h and R (returned as None; ``TUNING["fuse_output"]``), reading γ ⊙ q
    from a QG the W, U kernel writes for it under per-channel decay (``TUNING["pre_gated_q"]``).

    With a CUDA ``stream`` the state kernel (not the W, U kernel, whose KD, QG, EG the caller may
    need at once) runs on that stream, after the work queued so far on the current one; every
    tensor it touches is recorded on it, so the caller joins the streams before using h, R, ht."""
    Ttot, H, K = k.shape
    HV, V = v.shape[1], v.shape[2]
    f32 = dict(dtype=torch.float32, device=k.device)

    def scratch(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return empty(shape, dtype=scratch_dtype(k.dtype, name), device=k.device)

    DECAY, ERASE, WRITE = gate_form(G), gate_form(b), gate_form(w)
    fused = DECAY in TUNING["fuse_wu"]
    # a fused form needs no W, U kernel in the forward: launched for the decayed operands alone,
    # it pays only in the backward (whose state-gradient pass reads QG, EG too)
    pre = DECAY > 0 and DECAY in TUNING["pre_decayed_keys"] and (not fused or q is not None)
    # the forward's output with per-channel decay: γ ⊙ q once per chunk too (TUNING["pre_gated_q"])
    q_wu = q if out is None else out[0]
    qg_out = bool(ERASE) and pre and out is not None and DECAY == 2 and TUNING["pre_gated_q"]
    W = U = KD = QG = EG = None
    x = k  # placeholder pointer for absent tensors (never read: the flags compile them out)
    if ERASE and (not fused or pre):
        if not fused:
            W, U = scratch("W", (Ttot, HV, K)), scratch("U", (Ttot, HV, V))
        if pre:
            KD = scratch("KD", (Ttot, HV, K))
            if q is not None or qg_out:
                QG = scratch("QG", (Ttot, HV, K))
            if q is not None:
                EG = scratch("EG", (Ttot, HV, K))
        chunk_wu_kernel[(NT, HV)](
            k if q_wu is None else q_wu, k, v, b, k if w is None else w, k if G is None else G, A,
            x if W is None else W, x if U is None else U, x if KD is None else KD, x if QG is None else QG,
            x if EG is None else EG, cu, chunk_indices,
            H=H, HV=HV, K=K, V=V, BT=CHUNK, BK=min(64, _pow2(K)), BV=min(64, _pow2(V)), DECAY=DECAY,
            ERASE=ERASE, WRITE=WRITE, STORE_WU=not fused, PRE_KD=KD is not None, PRE_QG=QG is not None,
            PRE_EG=EG is not None, PREC=dot_precision(k.dtype),
        )
    ht = empty((N, HV, K, V), **f32)
    if out is None:
        h, R = scratch("h", (NT, HV, K, V)), scratch("R", (Ttot, HV, V))
        q_o, M, o, scale = x, x, x, 1.0
    else:
        h = R = None
        q_o, M, o, scale = out
    BV, low = state_tiles(V, K, N * HV, k.dtype, "state")
    args = (k, v, x if b is None else b, x if w is None else w, x if G is None else G, x if A is None else A,
            x if W is None else W, x if U is None else U, x if KD is None else KD, x if R is None else R,
            x if h is None else h, ht if h0 is None else h0, ht, q_o, x if QG is None else QG, M, o, cu,
            chunk_offsets)
    launch = functools.partial(
        chunk_state_kernel[(triton.cdiv(V, BV), N * HV)], *args, scale,
        H=H, HV=HV, K=K, V=V, BT=CHUNK, BK=state_slot(K), BV=BV, DECAY=DECAY, ERASE=ERASE, WRITE=WRITE,
        FUSED_WU=fused, PRE_KD=KD is not None, USE_H0=h0 is not None, STORE_HT=True, OUT=out is not None,
        PRE_QG=qg_out, PREC=dot_precision(k.dtype), LOW=low,
    )
    if stream is None:
        launch()
    else:
        # The caching allocator may hand a freed block to the current stream's next allocation
        # while this stream still reads it (W and U go out of scope on return): record them all.
        stream.wait_stream(torch.cuda.current_stream(k.device))
        for t in args:
            t.record_stream(stream)
        with torch.cuda.stream(stream):
            launch()
    return h, R, ht, (KD, QG, EG)


def chunk_forward(q, k, v, g, b, w, scale: float, h0, cu_seqlens, B: int, T: int):
    """Chunkwise forward on packed inputs (see module docstring).

    Args:
        q, k: ``[Ttot, H, K]``; v: ``[Ttot, HV, V]``; g, b, w: packed gates or None;
        h0: ``[N, HV, K, V]`` fp32 or None; cu_seqlens: ``[N+1]`` or None (then N = B rows of T).

    Returns:
        ``o [Ttot, HV, V]`` (v's dtype), the final state ``[N, HV, K, V]`` fp32, and for the
        backward M ``[Ttot, HV, BT]`` and A ``[Ttot, HV, BT]`` fp32 (A None without an erase gate).
    """
    Ttot, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    cu, chunk_indices, chunk_offsets, NT = prepare_chunks(cu_seqlens, B, T, CHUNK, q.device)
    N = cu.numel() - 1
    o = empty((Ttot, HV, V), dtype=v.dtype, device=v.device)
    if NT == 0:
        ht = h0.clone() if h0 is not None else torch.zeros(N, HV, K, V, dtype=torch.float32, device=q.device)
        return o, ht, None, None
    G, ranges = chunk_cumdecay(g, cu, chunk_indices, NT)
    M, A = chunk_intra(q, k, b, G, scale, cu, chunk_indices, NT, HV, ranges)
    if TUNING["fuse_output"]:
        _, _, ht, _ = chunk_state(k, v, b, w, G, A, h0, cu, chunk_indices, chunk_offsets, NT, N,
                                  out=(q, M, o, scale))
        return o, ht, M, A
    h, R, ht, _ = chunk_state(k, v, b, w, G, A, h0, cu, chunk_indices, chunk_offsets, NT, N)
    BV = min(64, _pow2(V))
    chunk_output_kernel[(triton.cdiv(V, BV), NT, HV)](
        q, M if G is None else G, M, R, h, o, cu, chunk_indices, scale,
        H=H, HV=HV, K=K, V=V, BT=CHUNK, BK=min(TUNING["output_bk"], _pow2(K)), BV=BV, DECAY=gate_form(g),
        PREC=dot_precision(q.dtype),
    )
    return o, ht, M, A
