"""Gate-aware chunkwise backward (DESIGN §1's written-out chain rule), same flags as the forward.

The forward keeps its inputs and the chunk matrices M and A (fp32, 2·BT values per token and
value head); the backward recomputes ``G`` (stage 0) and stage 2 (``h = S₀`` per chunk, ``R``) —
stage 1 too when M and A were not kept — then

4. ``chunk_state_bwd_kernel`` (sequential, last chunk first), per chunk with ``dS_C`` given:
   ``dR = Mᵀ dO + K̃ dS_C``, ``dY = Aᵀ dR`` (stored), and
   ``dS₀ = Q_γᵀ dO + Diag(γ_C) dS_C − Ēᵀ dY`` (stored as the next chunk's ``dS_C``; the first
   chunk's is d initial_state).
5. ``chunk_grad_kernel`` (chunk-parallel, one K block each): with ``dM = tril(dO Rᵀ)``,
   ``dT = −strict_tril(dY Rᵀ)``, ``dZ = dY``, ``dĒ = −dY S₀ᵀ``, ``dK̃ = R dS_Cᵀ`` and
   ``dQ_γ = dO S₀ᵀ``, the pairwise products give dq, dk, de and ``d log γ`` per row (for a
   pairwise factor ``Σ_k x_rk y_sk exp(G_rk − G_sk)`` the log-decay gradient is ``x⊙dx − y⊙dy``),
   then ``e = b⊙k``, ``z = w⊙v`` give db, dw, and ``dg`` is the reverse cumulative sum of
   ``d log γ`` within the chunk.

Stages 2 and 4 do not depend on each other (4 needs only stage 1's M, A and the W, U kernel's
pre-decayed operands): when they launch few programs (one long sequence, few heads) they run side
by side on two CUDA streams (``TUNING["overlap_seq"]``), and stage 5 waits for both.

Here ``Y = Z − Ē S₀`` and ``R = A Y``; ``dT = −Aᵀ dA Aᵀ`` with ``dA = dR Yᵀ`` collapses to
``−dY Rᵀ``, so the gradient kernel needs no A.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    CHUNK,
    G_MIN,
    TUNING,
    anchor_pair_operands,
    anchor_scales,
    chunk_midpoint,
    chunk_rows,
    defer_program,
    dot_precision,
    empty,
    gate_form,
    launch_configs,
    launch_pair_kernel,
    mixed_dot,
    pair_both,
    pair_both_anchor,
    pair_low,
    prepare_chunks,
    scratch_dtype,
    side_stream,
    stored_range,
    wide_state_prune,
)
from .forward import (
    _pow2,
    chunk_cumdecay,
    chunk_intra,
    chunk_state,
    decayed_keys,
    load_erase,
    load_slots,
    state_slot,
    state_tiles,
    store_slots,
)


@triton.jit
def state_bwd_slot_dR(b_dS, k, G, KD, dh, p_dh, o_row, m_t, i_h, i_hv, i_last, o_s, o_v, m_v,
                      H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      DECAY: tl.constexpr, PRE_KD: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """Phase 1 of one K slot ``o_s`` of ``dS_C``: store it as the chunk's dh and return its share
    ``K̃ dS_C`` of dR (LOW: operands as :func:`mixed_dot`'s)."""
    tl.store(dh + p_dh + o_s[:, None] * V + o_v[None, :], b_dS, mask=(o_s < K)[:, None] & m_v[None, :])
    b_k, _ = decayed_keys(k, G, KD, o_row, m_t, i_h, i_hv, i_last, o_s, o_s < K, H, HV, K, DECAY, PRE_KD)
    return mixed_dot(b_k, b_dS, PREC, LOW)


@triton.jit
def state_bwd_slot_update(b_dS, b_do, b_dY, q, k, b, G, QG, EG, o_row, m_t, i_h, i_hv, i_last, o_s, scale,
                          H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, DECAY: tl.constexpr,
                          ERASE: tl.constexpr, PRE_KD: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """Phase 2 of one K slot: ``dS₀ = γ_C ⊙ dS_C + scale·Q_γᵀ dO − Ēᵀ dY`` (PRE_KD: Q_γ and Ē
    read from QG, EG, which :func:`chunk_wu_kernel` wrote)."""
    m_k = o_s < K
    m_tk = m_t[:, None] & m_k[None, :]
    if DECAY > 0 and PRE_KD:
        p_tk = (o_row[:, None] * HV + i_hv) * K + o_s[None, :]
        b_q = tl.load(QG + p_tk, mask=m_tk, other=0).to(tl.float32)
        b_e = tl.load(EG + p_tk, mask=m_tk, other=0).to(tl.float32)
    else:
        b_q = tl.load(q + (o_row[:, None] * H + i_h) * K + o_s[None, :], mask=m_tk, other=0).to(tl.float32)
        _, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_s, m_tk, H, HV, K, ERASE)
    if DECAY == 2:
        if not PRE_KD:
            b_gam = tl.exp(tl.load(G + (o_row[:, None] * HV + i_hv) * K + o_s[None, :], mask=m_tk, other=0))
            b_q *= b_gam
            b_e *= b_gam
        b_dS *= tl.exp(tl.load(G + (i_last * HV + i_hv) * K + o_s, mask=m_k, other=0))[:, None]
    elif DECAY == 1:
        if not PRE_KD:
            b_gam = tl.exp(tl.load(G + o_row * HV + i_hv, mask=m_t, other=0))[:, None]
            b_q *= b_gam
            b_e *= b_gam
        b_dS *= tl.exp(tl.load(G + i_last * HV + i_hv))
    b_dS += mixed_dot(tl.trans(b_q * scale), b_do, PREC, LOW)
    if ERASE > 0:
        b_dS -= mixed_dot(tl.trans(b_e), b_dY, PREC, LOW)
    return b_dS


@triton.autotune(
    # 8 warps spilled 14–44 B (H200 sweep, before pre_decayed_keys lightened the step); 3 stages
    # did not compile. At T = 32k one program per SM: 8 warps give each scheduler two warps.
    launch_configs((4, 8), (1, 2)),
    key=["H", "HV", "K", "V", "BK", "BV", "DECAY", "ERASE", "PRE_KD", "LOW"],
    prune_configs_by={"early_config_prune": wide_state_prune},
)
@triton.jit
def chunk_state_bwd_kernel(
    q, k, b, G, KD, QG, EG, M, A, do, dY, dh, dht, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, PRE_KD: tl.constexpr, USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr,
):
    """One program per (value block, sequence·head), last chunk first.

    Writes dh ``[NT, HV, K, V]`` (gradient of each chunk's outgoing state), dY ``[Ttot, HV, V]``
    and dh0 ``[N, HV, K, V]``. The ``[K, BV]`` state gradient is held as up to four ``[BK, BV]``
    slots, as in the forward's state kernel. LOW: the operands of the products with the state
    gradient and of its update (``K̃ dS_C``, ``(γ ⊙ Q)ᵀ dO``, ``Ēᵀ dY``) as :func:`mixed_dot`'s
    (``TUNING["state_bf16"]``); ``Mᵀ dO`` and ``Aᵀ dR`` stay at PREC.
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

    b_dS0, b_dS1, b_dS2, b_dS3 = load_slots(dht, p_n, o_k, o_v, m_v, K, V, BK, BV, USE_DHT)
    NTs = tl.cdiv(eos - bos, BT)
    for j in range(NTs):  # a for loop (software-pipelined) walking the chunks last to first
        i_c = NTs - 1 - j
        o_row = bos + i_c * BT + o_t
        m_t = o_row < eos
        m_tv = m_t[:, None] & m_v[None, :]
        p_dh = ((i_c0 + i_c) * HV + i_hv) * K * V
        i_last = tl.minimum(bos + i_c * BT + BT, eos) - 1
        p_tv = (o_row[:, None] * HV + i_hv) * V + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m_tv, other=0).to(tl.float32)
        b_M = tl.load(M + (o_row[:, None] * HV + i_hv) * BT + o_t[None, :], mask=m_t[:, None], other=0)
        b_M = b_M.to(tl.float32)
        # dR = Mᵀ dO + K̃ dS_C
        b_dR = tl.dot(tl.trans(b_M), b_do, input_precision=PREC)
        b_dR += state_bwd_slot_dR(b_dS0, k, G, KD, dh, p_dh, o_row, m_t, i_h, i_hv, i_last, o_s0, o_v, m_v,
                                  H, HV, K, V, DECAY, PRE_KD, PREC, LOW)
        if K > BK:
            b_dR += state_bwd_slot_dR(b_dS1, k, G, KD, dh, p_dh, o_row, m_t, i_h, i_hv, i_last, o_s1, o_v,
                                      m_v, H, HV, K, V, DECAY, PRE_KD, PREC, LOW)
        if K > 2 * BK:
            b_dR += state_bwd_slot_dR(b_dS2, k, G, KD, dh, p_dh, o_row, m_t, i_h, i_hv, i_last, o_s2, o_v,
                                      m_v, H, HV, K, V, DECAY, PRE_KD, PREC, LOW)
        if K > 3 * BK:
            b_dR += state_bwd_slot_dR(b_dS3, k, G, KD, dh, p_dh, o_row, m_t, i_h, i_hv, i_last, o_s3, o_v,
                                      m_v, H, HV, K, V, DECAY, PRE_KD, PREC, LOW)
        if ERASE > 0:
            b_A = tl.load(A + (o_row[:, None] * HV + i_hv) * BT + o_t[None, :], mask=m_t[:, None], other=0)
            b_dY = tl.dot(tl.trans(b_A.to(tl.float32)), b_dR, input_precision=PREC)
        else:
            b_dY = b_dR
        tl.store(dY + p_tv, b_dY, mask=m_tv)
        b_dS0 = state_bwd_slot_update(b_dS0, b_do, b_dY, q, k, b, G, QG, EG, o_row, m_t, i_h, i_hv, i_last,
                                      o_s0, scale, H, HV, K, DECAY, ERASE, PRE_KD, PREC, LOW)
        if K > BK:
            b_dS1 = state_bwd_slot_update(b_dS1, b_do, b_dY, q, k, b, G, QG, EG, o_row, m_t, i_h, i_hv,
                                          i_last, o_s1, scale, H, HV, K, DECAY, ERASE, PRE_KD, PREC, LOW)
        if K > 2 * BK:
            b_dS2 = state_bwd_slot_update(b_dS2, b_do, b_dY, q, k, b, G, QG, EG, o_row, m_t, i_h, i_hv,
                                          i_last, o_s2, scale, H, HV, K, DECAY, ERASE, PRE_KD, PREC, LOW)
        if K > 3 * BK:
            b_dS3 = state_bwd_slot_update(b_dS3, b_do, b_dY, q, k, b, G, QG, EG, o_row, m_t, i_h, i_hv,
                                          i_last, o_s3, scale, H, HV, K, DECAY, ERASE, PRE_KD, PREC, LOW)
    if STORE_DH0:
        store_slots(dh0, p_n, b_dS0, b_dS1, b_dS2, b_dS3, o_k, o_v, m_v, K, V, BK)


@triton.jit
def pair_grads(b_dORt, b_dYRt, o_t):
    """``dM = tril(dO Rᵀ)`` and ``dT = −strict_tril(dY Rᵀ)`` from the two ``[BT, BT]`` contractions
    (``T`` is strictly lower and enters ``A = (I + T)⁻¹``, hence the sign)."""
    b_dM = tl.where(o_t[:, None] >= o_t[None, :], b_dORt, 0.0)
    b_dT = tl.where(o_t[:, None] > o_t[None, :], -b_dYRt, 0.0)
    return b_dM, b_dT


@triton.jit
def write_dv_dw(v, w, dv, dw, b_dY, p_tv, m_tv, o_row, m_t, i_hv, HV: tl.constexpr, WRITE: tl.constexpr):
    """dv and dw of one ``[rows, BV]`` block from ``z = w ⊙ v`` and ``dZ = dY``; for a per-head
    write gate, returns this block's share of the rows' dw (the caller sums and stores it)."""
    b_v = tl.load(v + p_tv, mask=m_tv, other=0).to(tl.float32)
    b_dw1 = tl.zeros(o_row.shape, dtype=tl.float32)
    if WRITE == 2:
        b_w = tl.load(w + p_tv, mask=m_tv, other=0).to(tl.float32)
        tl.store(dv + p_tv, (b_w * b_dY).to(dv.dtype.element_ty), mask=m_tv)
        tl.store(dw + p_tv, (b_v * b_dY).to(dw.dtype.element_ty), mask=m_tv)
    elif WRITE == 1:
        b_w1 = tl.load(w + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)
        tl.store(dv + p_tv, (b_w1[:, None] * b_dY).to(dv.dtype.element_ty), mask=m_tv)
        b_dw1 = tl.sum(b_v * b_dY, 1)
    else:
        tl.store(dv + p_tv, b_dY.to(dv.dtype.element_ty), mask=m_tv)
    return b_dw1


@triton.jit
def grad_v_loop(do, R, dY, h, dh, v, w, dv, dw, p_h, o_row, m_t, o_t, i_hv, o_k, m_k, write_dv,
                HV: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, PREC: tl.constexpr,
                PAIRS: tl.constexpr):
    """Phase 1 of the gradient kernel, the contractions over V of a chunk's BT rows: the
    ``[BT, BT]`` gradients ``dM = tril(dO Rᵀ)`` and ``dT = −strict_tril(dY Rᵀ)`` (only when PAIRS:
    a program's later K blocks reuse its first one's), the K block ``o_k``'s
    state-side terms ``dO S₀ᵀ``, ``dY S₀ᵀ``, ``R dS_Cᵀ`` ``[BT, BK]`` and (DECAY > 0)
    ``Σ_v S₀ ⊙ dS_C`` ``[BK]``. When write_dv, also dv and dw."""
    b_dM = tl.zeros([BT, BT], dtype=tl.float32)
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dqs = tl.zeros([BT, BK], dtype=tl.float32)
    b_dEb = tl.zeros([BT, BK], dtype=tl.float32)
    b_dKt = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgc = tl.zeros([BK], dtype=tl.float32)
    b_dw1 = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (o_row[:, None] * HV + i_hv) * V + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m_tv, other=0).to(tl.float32)
        b_R = tl.load(R + p_tv, mask=m_tv, other=0).to(tl.float32)
        b_dY = tl.load(dY + p_tv, mask=m_tv, other=0).to(tl.float32)
        if PAIRS:
            b_dM += tl.dot(b_do, tl.trans(b_R), input_precision=PREC)
            if ERASE > 0:
                b_dT += tl.dot(b_dY, tl.trans(b_R), input_precision=PREC)
        m_kv = m_k[:, None] & m_v[None, :]
        b_h = tl.load(h + p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0).to(tl.float32)
        b_dh = tl.load(dh + p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0).to(tl.float32)
        b_dqs += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        if ERASE > 0:
            b_dEb += tl.dot(b_dY, tl.trans(b_h), input_precision=PREC)
        b_dKt += tl.dot(b_R, tl.trans(b_dh), input_precision=PREC)
        if DECAY > 0:
            b_dgc += tl.sum(b_h * b_dh, 1)
        if write_dv:
            b_dw1 += write_dv_dw(v, w, dv, dw, b_dY, p_tv, m_tv, o_row, m_t, i_hv, HV, WRITE)
    if write_dv and WRITE == 1:
        tl.store(dw + o_row * HV + i_hv, b_dw1.to(dw.dtype.element_ty), mask=m_t)
    if PAIRS:
        b_dM, b_dT = pair_grads(b_dM, b_dT, o_t)
    return b_dM, b_dT, b_dqs, b_dEb, b_dKt, b_dgc


@triton.jit
def store_dq_dk_db(b, dq, dk, db, b_dq, b_dk, b_de, b_k, o_row, m_t, m_tk, o_k, i_k, i_hv, Ttot,
                   HV: tl.constexpr, K: tl.constexpr, ERASE: tl.constexpr):
    """Through ``e = b ⊙ k``: ``dk += b ⊙ de`` and db (per channel, or per head as the K block's
    partial sum ``[NK, Ttot, HV]``), then dq and dk of the rows. Returns the rows' offsets in
    ``[Ttot, HV, K]``."""
    p_tk = (o_row[:, None] * HV + i_hv) * K + o_k[None, :]
    if ERASE == 2:
        b_dk += tl.load(b + p_tk, mask=m_tk, other=0).to(tl.float32) * b_de
        tl.store(db + p_tk, (b_k * b_de).to(db.dtype.element_ty), mask=m_tk)
    elif ERASE == 1:
        b_b1 = tl.load(b + o_row * HV + i_hv, mask=m_t, other=0).to(tl.float32)
        b_dk += b_b1[:, None] * b_de
        tl.store(db + (i_k * Ttot + o_row) * HV + i_hv, tl.sum(b_k * b_de, 1), mask=m_t)
    tl.store(dq + p_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    return p_tk


@triton.jit
def head_decay_pairs(b_G):
    """``ρ_rs = exp(G_r − G_s)`` ``[BT, BT]`` of per-head decay for r ≥ s (1 above the diagonal,
    where the pair matrices are zero), from the chunk's cumulative log-decays ``[BT]``."""
    return tl.exp(tl.minimum(b_G[:, None] - b_G[None, :], 0.0))


@triton.jit
def grad_pair_inputs(b_dM, b_dT, G, o_row, m_t, o_t, i_hv, scale, HV: tl.constexpr, DECAY: tl.constexpr,
                     ERASE: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr, RANGE: tl.constexpr):
    """dM and dT as every K block's pair products take them, formed once for a program's KG > 1
    blocks (with one, :func:`grad_k_block` forms them where it uses them): per-channel decay
    through the midpoint unchecked (RANGE < 0), :func:`anchor_pair_operands` of ``scale·dM`` and
    dT; checked, dM and dT as they are; per-head decay, both times ``ρ_rs = exp(G_r − G_s)``
    (r ≥ s); no decay, as they are. Returns ``(P, P2, diagonal)`` (the diagonal only for the
    first form; else zeros)."""
    b_none = tl.zeros([b_dM.shape[0]], dtype=tl.float32)
    if DECAY == 2:
        if RANGE < 0:
            b_Pd, b_P, b_P2 = anchor_pair_operands(b_dM * scale, b_dT, o_t, ERASE > 0, PREC, LOW)
        else:
            b_P, b_P2, b_Pd = b_dM, b_dT, b_none
    elif DECAY == 1:
        b_rho = head_decay_pairs(tl.load(G + o_row * HV + i_hv, mask=m_t, other=0))
        b_P, b_P2, b_Pd = b_dM * b_rho, b_dT * b_rho, b_none
    else:
        b_P, b_P2, b_Pd = b_dM, b_dT, b_none
    return b_P, b_P2, b_Pd


@triton.jit
def grad_k_block(q, k, g, b, G, dq, dk, dg, db, b_P, b_P2, b_Pd, b_dqs, b_dEb, b_dKt, b_dgc, i_k, scale, Ttot,
                 bos, eos, i_c, o_row, m_t, o_t, i_h, i_hv,
                 H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 DECAY: tl.constexpr, ERASE: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr,
                 RANGE: tl.constexpr, PREPARED: tl.constexpr):
    """Phases 2–4 of the gradient kernel for the K block ``i_k``: from phase 1's terms, dq, dk, the
    erase gate's db and the log-decay gradient dg of its rows. dM and dT come in P, P2 as they are
    or, PREPARED, as :func:`grad_pair_inputs` formed them for several blocks (with the diagonal
    Pd). RANGE < 0: the midpoint path unchecked (the deferring launch, which lists the chunks past
    the limit before any work: see :func:`chunk_grad_kernel`)."""
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    # 2. pairwise products -> dq, dk, de and the log-decay gradient dG per row
    b_q = tl.load(q + (o_row[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    b_k, b_e = load_erase(k, b, o_row, m_t, i_h, i_hv, o_k, m_tk, H, HV, K, ERASE)
    n_last = tl.minimum(eos - bos - i_c * BT, BT) - 1  # last valid row of the chunk
    if DECAY == 2:
        b_G = tl.load(G + (o_row[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_tk, other=0)
        if PREPARED and RANGE < 0:
            b_m = chunk_midpoint(b_G, m_t)[0]
        b_gam = tl.exp(b_G)
        # dk sums both pair products; dG's pair terms come from the pair products themselves
        # (q⊙dq − k⊙dk formed here would not cancel in dg's reverse cumulative sum)
        if PREPARED and RANGE < 0:
            b_up, b_dn = anchor_scales(b_G, b_m[None, :], m_t)
            b_dq, b_de, b_dk, b_dG = pair_both_anchor(b_P, b_P2, b_q, b_e, b_k, b_up, b_dn, o_t, ERASE > 0,
                                                      PREC, LOW, b_Pd)
        else:
            b_dq, b_de, b_dk, b_dG = pair_both(b_P * scale, b_P2, b_q, b_e, b_k, b_G, G, bos + i_c * BT, eos,
                                               i_hv, o_t, o_k, m_k, HV, K, BT, ERASE > 0, PREC, LOW, RANGE)
        b_dq0 = scale * b_gam * b_dqs
        b_dq += b_dq0
        b_dG += b_q * b_dq0
        if ERASE > 0:
            b_de0 = -b_gam * b_dEb
            b_de += b_de0
            b_dG += b_e * b_de0
        b_gl = tl.sum(tl.where(o_t[:, None] == n_last, b_G, 0.0), 0)
        b_dk2 = tl.where(m_tk, tl.exp(tl.minimum(b_gl[None, :] - b_G, 0.0)), 0.0) * b_dKt
        b_dk += b_dk2
        b_dG -= b_k * b_dk2
        b_dGC = tl.sum(b_k * b_dk2, 0) + tl.exp(b_gl) * b_dgc
        b_dG += tl.where((o_t == n_last)[:, None], b_dGC[None, :], 0.0)
    else:
        b_dMr = b_P
        b_dTr = b_P2
        if DECAY == 1:
            b_G = tl.load(G + o_row * HV + i_hv, mask=m_t, other=0)
            b_gam = tl.exp(b_G)
            if not PREPARED:
                b_rho = head_decay_pairs(b_G)
                b_dMr = b_P * b_rho
                b_dTr = b_P2 * b_rho
        b_dq = tl.dot(b_dMr, b_k, input_precision=PREC) * scale
        b_dk = tl.dot(tl.trans(b_dMr), b_q, input_precision=PREC) * scale
        b_dG = b_q * b_dq - b_k * b_dk
        if DECAY == 1:
            b_dq0 = scale * b_gam[:, None] * b_dqs
        else:
            b_dq0 = scale * b_dqs
        b_dq += b_dq0
        b_dG += b_q * b_dq0
        if ERASE > 0:
            b_de = tl.dot(b_dTr, b_k, input_precision=PREC)
            b_dk1 = tl.dot(tl.trans(b_dTr), b_e, input_precision=PREC)
            b_dG += b_e * b_de - b_k * b_dk1
            b_dk += b_dk1
            if DECAY == 1:
                b_de0 = -b_gam[:, None] * b_dEb
            else:
                b_de0 = -b_dEb
            b_de += b_de0
            b_dG += b_e * b_de0
        if DECAY == 1:
            b_gl = tl.sum(tl.where(o_t == n_last, b_G, 0.0), 0)
            b_dk2 = tl.where(m_t, tl.exp(tl.minimum(b_gl - b_G, 0.0)), 0.0)[:, None] * b_dKt
            b_dG -= b_k * b_dk2
            b_dGC = tl.sum(tl.sum(b_k * b_dk2, 0) + tl.exp(b_gl) * b_dgc, 0)
        else:
            b_dk2 = b_dKt
        b_dk += b_dk2

    # 3. e = b ⊙ k
    if ERASE == 0:
        b_de = b_dk  # a placeholder: without an erase gate the helper does not read it
    p_tk = store_dq_dk_db(b, dq, dk, db, b_dq, b_dk, b_de, b_k, o_row, m_t, m_tk, o_k, i_k, i_hv, Ttot, HV, K,
                          ERASE)

    # 4. dg: reverse cumulative sum of d log γ within the chunk; a clamped g (a hard reset) has 0
    if DECAY == 2:
        b_dg = tl.cumsum(tl.where(m_tk, b_dG, 0.0), 0, reverse=True)
        b_g = tl.load(g + p_tk, mask=m_tk, other=0)
        tl.store(dg + p_tk, tl.where(b_g > G_MIN, b_dg, 0.0).to(dg.dtype.element_ty), mask=m_tk)
    elif DECAY == 1:
        b_dG1 = tl.sum(b_dG, 1) + tl.where(o_t == n_last, b_dGC, 0.0)
        b_dg = tl.cumsum(tl.where(m_t, b_dG1, 0.0), 0, reverse=True)
        b_g = tl.load(g + o_row * HV + i_hv, mask=m_t, other=0)
        tl.store(dg + (i_k * Ttot + o_row) * HV + i_hv, tl.where(b_g > G_MIN, b_dg, 0.0), mask=m_t)



@triton.jit
def grad_program(
    q, k, v, g, b, w, G, R, h, do, dY, dh, dq, dk, dv, dg, db, dw, cu_seqlens, chunk_indices, scale, Ttot,
    i_kg, i_t, i_hv,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KG: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr,
    RANGE: tl.constexpr,
):
    """The gradient kernel's work for K blocks ``KG·i_kg … KG·i_kg + KG − 1`` of one (chunk, value
    head): the first block's V loop forms dM and dT, which the later blocks reuse (their V loops
    form only their own state-side terms)."""
    i_h = i_hv // (HV // H)
    bos, eos, i_c, o_t, o_row, m_t = chunk_rows(cu_seqlens, chunk_indices, i_t, BT)
    p_h = (i_t.to(tl.int64) * HV + i_hv) * K * V
    i_k = i_kg * KG
    o_k = i_k * BK + tl.arange(0, BK)
    b_dM, b_dT, b_dqs, b_dEb, b_dKt, b_dgc = grad_v_loop(
        do, R, dY, h, dh, v, w, dv, dw, p_h, o_row, m_t, o_t, i_hv, o_k, o_k < K, i_k == 0,
        HV, V, BT, BK, BV, DECAY, ERASE, WRITE, PREC, True)
    # one K block: dM and dT become the pair operands where the block uses them (as they always
    # did); more: once, here, held for every block
    if KG > 1:
        b_P, b_P2, b_Pd = grad_pair_inputs(b_dM, b_dT, G, o_row, m_t, o_t, i_hv, scale, HV, DECAY, ERASE,
                                           LOW, PREC, RANGE)
    else:
        b_P, b_P2, b_Pd = b_dM, b_dT, 0.0
    grad_k_block(
        q, k, g, b, G, dq, dk, dg, db, b_P, b_P2, b_Pd, b_dqs, b_dEb, b_dKt, b_dgc, i_k, scale, Ttot,
        bos, eos, i_c, o_row, m_t, o_t, i_h, i_hv, H, HV, K, BT, BK, DECAY, ERASE, LOW, PREC, RANGE, KG > 1)
    for j in tl.static_range(1, KG):
        o_k = (i_k + j) * BK + tl.arange(0, BK)
        _, _, b_dqs, b_dEb, b_dKt, b_dgc = grad_v_loop(
            do, R, dY, h, dh, v, w, dv, dw, p_h, o_row, m_t, o_t, i_hv, o_k, o_k < K, False,
            HV, V, BT, BK, BV, DECAY, ERASE, WRITE, PREC, False)
        grad_k_block(
            q, k, g, b, G, dq, dk, dg, db, b_P, b_P2, b_Pd, b_dqs, b_dEb, b_dKt, b_dgc, i_k + j, scale,
            Ttot, bos, eos, i_c, o_row, m_t, o_t, i_h, i_hv, H, HV, K, BT, BK, DECAY, ERASE, LOW, PREC, RANGE,
            True)


@triton.autotune(
    # 4 warps spilled 460–880 B with the dyadic split alone (H200 sweep); back among the candidates
    # since most tiles take the midpoint path. A 128-register cap (two programs per SM, 1,792 B of
    # stack) and a 16-row-block form (40–120 B of stack) were timed on the H200 and never won
    # (2026-11-29): the spills are not what limits this kernel.
    launch_configs((4, 8), (1, 2)),
    key=["H", "HV", "K", "V", "BK", "BV", "KG", "DECAY", "ERASE", "WRITE", "LOW", "RANGE", "PASS"],
    # a deferring pass appends to the worklist: every timing run starts from an empty one
    reset_to_zero=["worklist"],
)
@triton.jit
def chunk_grad_kernel(
    q, k, v, g, b, w, G, R, h, do, dY, dh,
    dq, dk, dv, dg, db, dw, cu_seqlens, chunk_indices, scale, Ttot, ranges, worklist, limit, capacity,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KG: tl.constexpr,
    DECAY: tl.constexpr, ERASE: tl.constexpr, WRITE: tl.constexpr, LOW: tl.constexpr, PREC: tl.constexpr,
    RANGE: tl.constexpr, NR: tl.constexpr, PASS: tl.constexpr,
):
    """One program per (group of KG K blocks, chunk, value head). Each recomputes the chunk's
    ``dM``, ``dT`` (``[BT, BT]``, a contraction over V) once for its KG blocks
    (``TUNING["grad_k_group"]``): forming them once per chunk in a kernel of their own measured no
    faster (H200, 2026-11-29), and one program per chunk looping over all K blocks, with both pair
    paths compiled, held dM and dT in 5.7 KB of stack (10.14 vs 8.66 ms f+b).

    Writes dq, dk ``[Ttot, HV, K]`` (per value head; GVA groups are summed by the caller),
    dv ``[Ttot, HV, V]``, dg / db (per channel: ``[Ttot, HV, K]``; per head: partial sums
    ``[NK, Ttot, HV]`` over each K block) and dw (``[Ttot, HV(, V)]``, with the first K block).

    PASS 0: the pair products by the midpoint or the split per tile (RANGE). With
    ``TUNING["pair_fallback"]`` (per-channel decay), PASS 1 first reads the chunk's largest tile
    range as the cumulative-decay kernel stored it (``ranges [NT, HV, NR]``): past ``limit`` the
    program lists itself on the worklist (``capacity`` items at most) and stops; else it takes the
    midpoint path alone, compiled without the dyadic split. PASS 2, a few persistent programs
    launched without the autotuner (``chunk_grad_kernel.fn``), does the listed ones as PASS 0
    would. A chunk is deferred whole (every K group of it) when any of its tiles is past the limit."""
    if PASS == 2:
        NKG: tl.constexpr = (K + BK * KG - 1) // (BK * KG)
        n = tl.minimum(tl.load(worklist), capacity)
        for j in range(tl.program_id(0), n, tl.num_programs(0)):
            item = tl.load(worklist + 1 + j)
            i_th = item // NKG
            grad_program(
                q, k, v, g, b, w, G, R, h, do, dY, dh, dq, dk, dv, dg, db, dw, cu_seqlens, chunk_indices,
                scale, Ttot, item % NKG, i_th // HV, i_th % HV, H, HV, K, V, BT, BK, BV, KG, DECAY, ERASE,
                WRITE, LOW, PREC, RANGE)
    elif PASS == 1:
        i_kg, i_t, i_hv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b_rng = stored_range(ranges, i_t, i_hv, HV, NR)
        if b_rng > limit:
            defer_program(worklist, (i_t * HV + i_hv) * tl.num_programs(0) + i_kg, capacity)
        else:
            grad_program(
                q, k, v, g, b, w, G, R, h, do, dY, dh, dq, dk, dv, dg, db, dw, cu_seqlens, chunk_indices,
                scale, Ttot, i_kg, i_t, i_hv, H, HV, K, V, BT, BK, BV, KG, DECAY, ERASE, WRITE, LOW, PREC,
                -1.0)
    else:
        grad_program(
            q, k, v, g, b, w, G, R, h, do, dY, dh, dq, dk, dv, dg, db, dw, cu_seqlens, chunk_indices, scale,
            Ttot, tl.program_id(0), tl.program_id(1), tl.program_id(2), H, HV, K, V, BT, BK, BV, KG, DECAY,
            ERASE, WRITE, LOW, PREC, RANGE)


def grad_k_group(NK: int) -> int:
    """K blocks per gradient program (``TUNING["grad_k_group"]``), where it divides the NK blocks;
    else 1 (every program then has KG whole blocks: the per-head partial sums of dg and db are
    indexed by block, so no program may run past the last)."""
    group = int(TUNING["grad_k_group"])
    if group < 1:
        raise ValueError(f"TUNING['grad_k_group'] must be a positive integer, got {group}")
    return group if NK % group == 0 else 1


def chunk_backward(q, k, v, g, b, w, scale: float, h0, cu_seqlens, B: int, T: int, do, dht, M=None, A=None):
    """Gradients of :func:`chunk_forward` on packed inputs.

    Args: as :func:`gatedelta.ops.triton.forward.chunk_forward`, plus ``do [Ttot, HV, V]``,
    ``dht [N, HV, K, V]`` (or None) and the forward's M and A (None: recomputed).

    Returns ``(dq, dk, dv, dg, db, dw, dh0)`` shaped like the inputs (None for absent ones).
    """
    Ttot, H, K = q.shape
    HV, V = v.shape[1], v.shape[2]
    dev = q.device
    DECAY, ERASE, WRITE = gate_form(g), gate_form(b), gate_form(w)
    cu, chunk_indices, chunk_offsets, NT = prepare_chunks(cu_seqlens, B, T, CHUNK, dev)
    N = cu.numel() - 1
    f32 = dict(dtype=torch.float32, device=dev)
    PREC = dot_precision(q.dtype)
    BK = min(TUNING["grad_bk" if DECAY == 2 else "grad_bk_head"], _pow2(K))
    NK = triton.cdiv(K, BK)
    KG = grad_k_group(NK)
    groups = HV // H
    # Gradients the kernel writes whole are stored in the input's dtype; fp32 where partial sums
    # follow (over the GVA group of a key head, or over K blocks for per-head gates).
    dq = empty((Ttot, HV, K), dtype=q.dtype if groups == 1 else torch.float32, device=dev)
    dk = empty((Ttot, HV, K), dtype=k.dtype if groups == 1 else torch.float32, device=dev)
    dv = empty((Ttot, HV, V), dtype=v.dtype, device=dev)
    dg = None if g is None else (empty((Ttot, HV, K), dtype=g.dtype, device=dev) if DECAY == 2
                                 else empty((NK, Ttot, HV), **f32))
    db = None if b is None else (empty((Ttot, HV, K), dtype=b.dtype, device=dev) if ERASE == 2
                                 else empty((NK, Ttot, HV), **f32))
    dw = None if w is None else empty(w.shape, dtype=w.dtype, device=dev)
    dh0 = None if h0 is None else empty(h0.shape, **f32)
    if NT > 0:
        G, ranges = chunk_cumdecay(g, cu, chunk_indices, NT)
        if M is None or (ERASE and A is None):
            M, A = chunk_intra(q, k, b, G, scale, cu, chunk_indices, NT, HV, ranges)
        BV, low = state_tiles(V, K, N * HV, q.dtype, "state_bwd")
        # The recomputed states (h, R) and the state gradients (dh, dY) are independent chains
        # (the latter needs only the W, U kernel's KD, QG, EG): when few programs walk long
        # sequences, run them side by side (TUNING["overlap_seq"]).
        side = side_stream(dev, triton.cdiv(V, BV) * N * HV)
        h, R, _, (KD, QG, EG) = chunk_state(k, v, b, w, G, A, h0, cu, chunk_indices, chunk_offsets, NT, N,
                                            q=q, stream=side)
        dh = empty((NT, HV, K, V), dtype=scratch_dtype(q.dtype, "dh"), device=dev)
        dY = empty((Ttot, HV, V), dtype=scratch_dtype(q.dtype, "dY"), device=dev)
        chunk_state_bwd_kernel[(triton.cdiv(V, BV), N * HV)](
            q, k, q if b is None else b, M if G is None else G, M if KD is None else KD,
            M if QG is None else QG, M if EG is None else EG, M,
            M if A is None else A, do, dY, dh, dh if dht is None else dht, dh if dh0 is None else dh0, cu,
            chunk_offsets, scale, H=H, HV=HV, K=K, V=V, BT=CHUNK, BK=state_slot(K, "state_bwd_bk"), BV=BV,
            DECAY=DECAY, ERASE=ERASE, PRE_KD=KD is not None, USE_DHT=dht is not None,
            STORE_DH0=dh0 is not None, PREC=PREC, LOW=low,
        )
        if side is not None:
            torch.cuda.current_stream(dev).wait_stream(side)
        outs = (dq, dk, dv, dq if dg is None else dg, dq if db is None else db, dq if dw is None else dw)
        gates = (q if g is None else g, q if b is None else b, q if w is None else w)
        args = (q, k, v, *gates, M if G is None else G, R, h, do, dY, dh, *outs, cu, chunk_indices, scale,
                Ttot)
        meta = dict(H=H, HV=HV, K=K, V=V, BT=CHUNK, BK=BK, BV=min(TUNING["grad_bv"], _pow2(V)), KG=KG,
                    DECAY=DECAY, ERASE=ERASE, WRITE=WRITE, LOW=pair_low(q.dtype), PREC=PREC)
        launch_pair_kernel(chunk_grad_kernel, (NK // KG, NT, HV), args, meta, DECAY, dev, ranges)
    elif dh0 is not None:
        dh0 = dht.float().clone() if dht is not None else torch.zeros_like(dh0)
    if groups > 1:
        dq = dq.view(Ttot, H, groups, K).sum(2).to(q.dtype)
        dk = dk.view(Ttot, H, groups, K).sum(2).to(k.dtype)
    if DECAY == 1:
        dg = dg.sum(0).to(g.dtype)
    if ERASE == 1:
        db = db.sum(0).to(b.dtype)
    return dq, dk, dv, dg, db, dw, dh0
