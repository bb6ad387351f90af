"""Shared pieces of the Triton backend: chunk bookkeeping, gate flags, pairwise-decay helpers.

Everything is laid out packed: ``q, k`` as ``[Ttot, H, K]``, ``v`` as ``[Ttot, HV, V]`` and gates as
``[Ttot, HV(, K or V)]`` with ``Ttot = B·T``; a batch without ``cu_seqlens`` is packed as B
sequences of length T, so every kernel has one varlen code path.

Gate forms are compile-time flags, ``0`` = absent, ``1`` = one value per head, ``2`` = one value
per channel; one kernel source serves every op of DESIGN §1's table.

Pairwise decay (DESIGN §1 numerics). With ``G`` the chunk-local cumulative log-decay, every
pairwise factor is ``exp(G_r − G_s)`` with ``r ≥ s`` (≤ 1); ``1/γ`` alone is never formed. For
per-channel decay, pairs are grouped by a dyadic split of the chunk: each pair factors through an
anchor row c between them, ``exp(G_r − G_c)·exp(G_c − G_s)`` (both ≤ 1), one matrix product per
level (:func:`pair_matrices`). A chunk whose log-decay spans at most ``TUNING["anchor_range"]`` in
every channel of the tile (ordinary gates) takes one product instead: every pair factors through
the per-channel midpoint m of its G, ``exp(G_r − m)·exp(m − G_s)``, each factor within
``exp(±range/2)`` (≤ e⁵⁰ at the default 100), so none can overflow (:func:`chunk_midpoint`). A
chunk with a hard reset or very strong decay keeps the dyadic split, for as many levels as it
needs to leave blocks of rows that span at most that range, each then through its own midpoint
(:func:`split_depth`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

# A log-decay below this is a hard reset: exp(G_MIN) is 0 in float32, so clamping g changes no
# product, while keeping every chunk-local cumulative sum finite (−inf − (−inf) would be NaN).
G_MIN = tl.constexpr(-110.0)
# Chunk length (the (I + T)⁻¹ solve is written for 4 blocks of 16, the pair split for 6 levels).
CHUNK = 64
# Block widths of the chunk kernels (K / V tiles). Module-level so that
# `benchmarks/tune_kernels.py` can sweep them; the values here are the best of its sweep on the
# H200 (benchmarks/results/tune_gdn2_h200.json). Warps and pipeline stages are autotuned per shape.
# fuse_wu: the decay forms (0 none, 1 per head, 2 per channel) for which the state kernel forms
# R = A (Z − Ē S₀) itself instead of reading W = A Ē, U = A Z from chunk_wu_kernel (H200 f+b:
# gdn2 at 2k / 32k 18.4 / 26.7 ms fused vs 18.1 / 24.8 unfused; gdn at 2k 8.64 fused vs 9.12).
# state_bv_min: the narrowest value block of the sequential kernels for K > 64 (32k: 16 beats 32
# by 0.9 ms). split_solve: (I + T)⁻¹ by its own small kernel instead of at the end of the intra
# kernel (gdn2 f+b 16.97 vs 17.50 ms at 2k, 23.28 vs 23.69 at 32k; since the midpoint path and the
# batched diagonal substitution, fwd 2.48 vs 2.71 ms at 2k, c8667de). solve_warps: warps of that
# kernel (H200, c8667de: 1 warp fwd 2.35 ms, 2 warps 2.48, 4 warps 2.73; its programs are small
# and serial, so more of them per SM beats more threads in each). pair_bf16: the pair split's
# products from bf16 operands (fp32 accumulation) for 16-bit inputs, instead of tf32: f+b 15.16 vs
# 17.06 ms at 2k, but dg's bf16 error doubles (9.4e-3 vs 4.3e-3; FLA 0.6.0's dg anchor is 4.34e-3), so
# it stays off (even with dG formed from the products' own operands, dg's bf16 error is 7.9e-3
# vs 3.6e-3 on the interpreter). Measured and removed (H200, 2026-11-29, code in git history):
# the short levels batched as 16×16 products (pair_diag3d, −2 % f+b, then +8 % with the dG
# accumulator), dM / dT formed once per chunk by their own kernel (grad_pre_d, ±0.3 %) and by
# one gradient program per chunk looping over the K blocks (grad_k_loop, aba74b3: f+b 10.14 vs
# 8.66 ms, dM and dT held across the loop spill).
# pre_decayed_keys: the decay forms (1 per head, 2 per channel; with an erase gate) whose decayed
# keys k̃ = exp(G_C − G) ⊙ k (and for the backward γ ⊙ q, Ē) the W/U kernel writes once per chunk
# (only these, not W and U, when the form is in fuse_wu, and then for the backward only), +512 B
# per token-head transient in the forward, 1.5 KB in the backward, read by the sequential kernels
# instead of formed by each of a head's value-block programs at every chunk step: gdn2 f+b 18.47 →
# 17.88 ms at 2k, 24.78 → 23.18 at 32k (H200, 2026-11-29); off, the kernels form them (less
# memory). grad_bv 64: 17.86 → 17.25 ms at 2k. Per-head decay (gdn, fused state kernel; H200,
# bec0c2c, forward too): f+b 9.48 vs 10.20 ms at 32k (forward 2.67 vs 2.46: the extra launch),
# 4.93 vs 4.70 at 2k (forward 1.30 vs 1.09, backward equal), hence backward-only for fused forms.
# Measured and removed the same day: the gradient and intra kernels in 16-row blocks (grad_sub:
# ±0.3 %; intra_sub: +0.6 ms forward), although they spill almost nothing.
# Measured and removed late that day: pair_stack, the gradient kernel's two right-hand pair
# products of a level as one product over 2·BT (f+b 17.42 vs 15.48 ms at 2k, 21.54 vs 20.05 at
# 32k, although it cut shared loads 681 → 273 in the local compile).
# scratch_bf16: for bf16 inputs, the intermediates listed (names in SCRATCH) are stored as bf16
# instead of fp32; kernels still multiply fp32 values (tf32). The state kernel re-reads W and the
# decayed keys in every value-block program at every chunk, so it moves bytes more than it
# multiplies. Listed are those whose rounding the bf16 accuracy test cannot see (H200: forward
# 3.83e-3–3.88e-3, gradients unchanged; interpreter at T = 512: 4.78e-3 → 4.80e-3): W, KD, QG, EG,
# h, dh. The value-side ones cost ~50 % more error each (interpreter, forward 4.8e-3 → 7.1e-3
# for U, R or M alone; dY: dv 4.8e-3 → 7.0e-3: figures of the interpreter's truncating bf16
# cast; rounded to nearest as on the GPU, ~+10 % each, 2026-12-08) and stay fp32 until timed
# (`run_h200.sh lean13`); A is free on the accuracy test's
# inputs but costs 6–12 % on the tests' harder ones (erase gate up to 2). gdn2 at 2k (H200): fwd
# 4.46 → 3.79 ms, f+b 17.25 → 15.73; at 32k f+b 22.28 → 20.05 (f98462a). state_bv_max: the
# widest value block of the sequential kernels for K > 64 (64: f+b 15.48 → 15.01 ms at 2k; at 32k
# they narrow to 16 anyway). Measured and removed: bf16 operands (fp32 accumulation, as FLA) in the
# state-side products: W S₀ in the state kernel f+b −0.12 ms at 2k, but gdn (the fused W/U path)
# faulted at a 32k sequence with it (illegal address, Triton 3.6, 16-wide value blocks); with the
# output kernel's (γ ⊙ Q) S₀ too, fwd −0.17 ms more at +8 % of the kernels' own output error; in
# the state backward it faulted at 2k; in the gradient kernel's V loop it was slower.
# fuse_output: the forward's state kernel forms the output itself (from q, G, M and its
# registers' S₀ and R) instead of writing h and R for chunk_output_kernel to read back: 2 KB per
# token-head less traffic (h 512 B and R 512 B, each written and read) and one launch fewer, for
# more work in each sequential step (off the state's dependency chain). The backward still
# writes h and R in its recomputation (the gradient kernel reads them). It also multiplies the
# fp32 state, not bf16 h (interpreter, bf16 inputs: the output's own error 3.52e-3 → 3.37e-3).
# H200 (56cfdac): gdn2 2k fwd 3.72 → 3.40 ms, f+b 15.17 → 14.87; 32k f+b 20.01 → 19.97; gdn 2k
# fwd 1.81 → 1.61; accuracy unchanged (forward 3.83e-3–3.88e-3, gradients 3.76e-3–5.03e-3).
TUNING = {"intra_bk": 32, "intra_bk_head": 64, "output_bk": 128, "grad_bk": 64, "grad_bk_head": 64,
          "grad_bv": 32, "fuse_wu": (0, 1), "state_bv_min": 16, "split_solve": True, "pair_bf16": False,
          "pre_decayed_keys": (1, 2), "scratch_bf16": ("W", "KD", "QG", "EG", "h", "dh"),
          "state_bv_max": 64, "fuse_output": True, "overlap_seq": 2, "anchor_range": 100.0,
          "solve_warps": 1, "state_bk": 64, "state_bwd_bk": 128, "pre_gated_q": True,
          "decode_bv": 32, "decode_warps": 2, "state_programs": 256,
          "solve_reg_diag": False, "pair_fallback": True, "grad_k_group": 1,
          "fallback_warps": 8, "state_bf16": ()}
# decode_bv / decode_warps: the decode kernel's value block (narrowed for K > 128 so the [K, BV]
# fp32 state block stays in registers) and warps. Its time is the state's bytes, read and written
# once per step. H200 (1e41ebe), one gdn2 token, B = 64, H = 16, K = V = 128, CUDA graph: 2 warps
# 36.8 µs (3.65 TB/s) at 32 or 64 wide, 4 warps 39.0, 1 warp 38.3; 16 wide 38.1–46.2, 8 wide
# 49.0–68.9; FLA's fused_recurrent_gdn2 39.4 µs in the same call.
# grad_bk / grad_bk_head: the gradient kernel's K block for per-channel decay (its pair split keeps
# ~8 [BT, BK] fp32 tiles live) and for per-head or no decay (no pair split; each K block re-forms
# dM and dT, so fewer, wider blocks pay). H200 (f8dedb0): gdn f+b at 2k 4.98 ms at 32, 4.69 at 64,
# 5.99 at 16; 128 (one block, 9f2df37): 4.96.
# Per-channel decay, H100 (c90635c, each beside the defaults in one call, after pair_fallback
# freed the pair kernels' registers), f+b ms at 32 vs 64: gdn2 8.66 vs 8.42 at 2k (16: 8.90),
# 12.09 vs 11.73 at 32k; kda 7.99 vs 7.90 at 2k. Hence 64 (the faithful sm_90 compile spills 488 B
# at 8 warps; the autotuner takes 8 there). Before pair_fallback 32 was the faster on the H200.
# intra_bk_head: the intra kernel's K block for per-head or no decay, which multiplies the inputs'
# own 16-bit operands there (NATIVE: exact products, fp32 accumulation; T = Diag(b) K Kᵀ, the
# erase gate applied to T's rows). H200, gdn at 2k (31d4986): intra kernel 0.277 → 0.178 ms, forward
# 1.068 → 0.985, f+b 4.50 → 4.45; K block 32: forward 1.106, 128: 1.120. The solve at the end of
# that kernel instead of its own (split_solve off) was 1.374.
# pre_gated_q: under per-channel decay the W, U kernel (which runs anyway) writes γ ⊙ q once per
# chunk for the forward's output, instead of every value-block program of the state kernel loading
# G and forming it at every chunk step. H200 (45b8f6c, 2k): gdn2 forward 2.343 → 2.302 ms, f+b
# 8.53 → 8.49; kda 2.233 → 2.209, 8.08 → 8.05; interpreter bf16 output error 4.79e-3 → 4.80e-3.
# Measured and removed the same night: a register cap on the one-warp solve kernel (more programs
# resident per SM for its latency-bound substitution): gdn2 forward 2.302 ms without, 2.297 at 168
# registers, 2.312 at 128 (45b8f6c).
# Measured and removed (2026-11-30, a3d3a32): reg_solve, the solve of I + T for per-head or no
# decay in the intra kernel's registers by 16×16 blocks of K Kᵀ (as FLA's K Kᵀ + solve kernel does):
# gdn forward 1.411 vs 0.975 ms at 2k (4 warps, 248 registers: one program per SM cannot hide the
# substitution's serial steps the way many one-warp solve programs do).
# grad_bv: the gradient kernel's V block. 32 vs 64 (H200, each timed beside the defaults in one
# call, a455d83 / 9f2df37), f+b ms: gdn2 8.47 vs 8.56 at 2k, 12.05 vs 12.17 at 32k; kda 8.01 vs
# 8.27, 11.62 vs 11.86; gdn 4.52 vs 4.69, 8.23 vs 8.38. Forward unchanged.
# state_bf16: the sequential kernels whose state-side products take bf16 operands (fp32
# accumulation) for bf16 inputs: "state" (the forward's state kernel, also run by the backward's
# recomputation: W S₀ or Ē S₀, (γ ⊙ Q) S₀ and K̃ᵀ R) and "state_bwd" (the state-gradient kernel:
# K̃ dS_C, (γ ⊙ Q)ᵀ dO and Ēᵀ dY). The products that carry the output's and dY's main terms
# (A Y, M R, Mᵀ dO, Aᵀ dR) keep tf32. FLA's sequential kernel rounds its state to bf16 for both of
# its products. Tried once on 2026-11-29 (H200, Triton 3.6, kernels since restructured): the state
# kernel's W S₀ alone −0.13 ms f+b at 2k; the state-gradient kernel faulted (illegal address) at
# 2k; gdn faulted at 32k with 16-wide value blocks. So bf16 operands only where value blocks are at
# least 32 wide (state_tiles), and no default until timed again (`run_h200.sh lean13`).
# fallback_warps: warps of the pair kernels' fallback launch (PASS 2, the listed chunks; the first
# launch is autotuned). Faithful sm_90 compile (Triton 3.6, gdn2, BK 64 gradient / 32 intra),
# stack per thread at 8 / 4 warps: gradient 4.4 / 11.7 KB, intra 288 B / 1.1 KB. It was 4 until
# 2026-12-07, when every benchmark's fallback launch had an empty worklist. Under strong decay
# (g × 8) every chunk is listed, so it carries all the work: H100 (2239992), gdn2 f+b at 2k 26.42
# ms at 8 warps, 31.06 at 4; one checked launch instead (pair_fallback off) 26.84.
# The deferring launch (PASS 1) reads the chunk's stored tile ranges (chunk_cumsum_kernel) before
# any work and a listed program stops there: before, it did all its work and then listed itself,
# so a listed chunk cost two programs' work.
# grad_k_group: K blocks per gradient program. Each program forms the chunk's dM and dT (two
# [BT, BT] contractions over V, a third of the kernel's products at 4 blocks of 32) once and holds
# them, as the pair products take them, for its blocks. Per block the same arithmetic, so results
# are bitwise those of 1. Faithful sm_90 compile (Triton 3.6, gdn2, BK = BV = 32, midpoint pass):
# stack per thread 16 B at 8 warps and 928 B at 4 with 1; 608 B and 1.6 KB with 2; 0.9 and 1.8 KB
# with 4. H100 (c90635c, gdn2 at 2k, BK 32): f+b 8.66 ms with 1, 10.58 with 2 (the spills cost more
# than the contractions saved), so 1 stays.
# state_bk, state_bwd_bk: rows per slot of the state (forward) and state-gradient tiles of the
# sequential kernels (64: two slots at K = 128; 128: one). Each slot costs its own small products
# per chunk step: at 64 rows the state-gradient step issues 8 [64, 64] × [64, 16] products at 32k,
# at 128 rows 5 larger ones. H200 (f8dedb0, both knobs at once): gdn2 f+b 13.15 vs 13.04 ms at 32k
# (forward 3.72 vs 3.57), 8.62 vs 8.66 at 2k; gdn 10.16 vs 10.51 at 32k (forward 2.56 vs 2.47),
# 5.11 vs 4.98 at 2k. So the state kernel keeps 64. state_bwd_bk = 128 alone (bec0c2c): gdn2 f+b
# 12.24 vs 13.02 ms at 32k, forward unchanged; gdn 4.71 vs 4.70 at 2k. At 32k (16-wide value
# blocks) gdn faulted once (illegal address) with it while autotuning: Triton 3.6's known fault of
# a [128, 16] fp32 tile at 8 warps (kernels_notes v2), so such tiles autotune over 4 warps only
# (wide_state_prune).
# anchor_range: the pair products of a chunk (per-channel decay; the intra and gradient kernels)
# factor every pair through one per-channel midpoint m when the tile's log-decay spans at most this
# much in each channel (max − min of G over the chunk's rows): one product instead of the dyadic
# split's six, with factors exp(±(G − m)) ≤ exp(range/2). At 100 that is e⁵⁰ ≈ 5e21, so a scaled
# operand overflows float32 only past ~6e16 (no gate can: the range is checked per chunk and K
# block). Ordinary gates take it: logsigmoid of a standard normal gives a 64-row range of 52 ± 4
# per channel (all tiles ≤ 80); the 1.3B preset's GDN-2 mixer at init (`benchmarks/gate_ranges.py`)
# has 83 % of its 32-channel tiles ≤ 80 and 99.8 % ≤ 100. A hard reset (g ≤ G_MIN) or much
# stronger decay takes the dyadic split, since 2026-12-08 only for the levels that leave blocks
# within the range, each block then through its own midpoint (split_depth; g × 2 needs one level,
# g × 8 three, a reset's tile six; not timed yet). The operands are rounded as before (tf32), so the
# accuracy is the split's (H200 at 80: forward 3.91e-3 vs 3.87e-3, gradients equal to 1 %;
# interpreter with emulated tf32 and bf16 inputs at ranges 96–102: equal to 1 % at 80, 100, 120).
# H200 (f23bc7c, at 80): gdn2 f+b 14.68 → 9.68 ms at 2k, 19.37 → 14.01 at 32k; fwd 3.37 → 2.78.
# 0: always the dyadic split. The choice is a branch per tile inside the kernel. Measured
# and removed (H200, 2026-11-29, 068b911): two launches, the first compiled with the midpoint path
# only (the gradient kernel's spills 158 → 2 B), the second doing the remaining chunks with the
# split: f+b 10.41 vs 9.86 ms at 2k, 15.23 vs 14.17 at 32k, because the second launch's 32,768
# programs of a one-program-per-SM kernel each load G and exit (~0.5–1 ms).
# pair_fallback: the intra and gradient kernels (per-channel decay) in two launches: the first
# compiled with the midpoint path alone (no dyadic split: the gradient kernel's stack at 4 warps
# 920 B instead of 4,016, the intra kernel's 0 instead of 952 on the faithful sm_90 compile),
# putting the programs whose range exceeds anchor_range on a worklist; the second, a few
# persistent programs, redoes those with the checked path. Unlike the two launches above, an
# empty worklist costs one small launch. H100 (a45b7f5, tune_kernels.py, gdn2 at 2k, each beside
# the single launch in one call): forward 2.547 → 2.142 ms, f+b 9.248 → 8.717 (8.651 on a rerun);
# outputs and gradients within 5.1e-6 of the single launch. Not yet timed: kda, 8k / 32k, H200.
# state_programs: the sequential kernels' value block narrows until this many programs run (down
# to state_bv_min; a dot's N may be 8). 8-wide blocks at 32k (state_bv_min = 8: 256 programs, two
# per SM by the faithful compile's shared memory) were slower on the H100 (a45b7f5): gdn2 f+b
# 14.68 vs 12.56 ms, forward 3.68 vs 3.65. solve_reg_diag: the solve kernel inverts the four
# diagonal 16×16 blocks as register tiles (no memory round trip); built and CPU-tested, not timed.
# Measured and removed (H200, 2026-11-29, one 32k sequence of 16 heads unless said; code at 695a83d):
# - fuse_cumsum, G = cumsum(g) formed and written by the intra (forward) and W, U (backward)
#   kernels instead of chunk_cumsum_kernel: f+b 8.69 vs 8.57 ms at 2k, 12.98 vs 12.92 at 32k;
#   forward 2.42 vs 2.36 at 2k (the cumsum on the kernels' critical path costs more than its read).
# - transition_seq, the state-gradient pass through each chunk's transition P = Diag(γ_C) − Wᵀ K̃
#   [K, K] and Q̂ = scale·Q_γ − M W (dS₀ = P dS_C + Q̂ᵀ dO, one product per step on the chain instead
#   of three), with P formed chunk-parallel and dY = Aᵀ (Mᵀ dO + K̃ dS_C) afterwards: f+b 13.89 vs
#   13.36 ms (P bf16: 13.38), 10.27 vs 9.51 at 8k. The pass itself 4.3 → 3.5 ms beside the state
#   recomputation, but P (0.62 ms) and dY (0.58 ms) cost as much. Through Pᵀ in the forward's state
#   kernel too (S_C = Pᵀ S₀ + K̃ᵀ U): 7+ ms per pass vs 1.8 (f+b 25.26 vs 13.05).
# - pre_ak (code at f519b21), the W, U kernel writing X = Aᵀ K̃ (bf16) so that the state-gradient
#   pass forms dY = Aᵀ (Mᵀ dO) + X dS_C, the product by Aᵀ off the dS chain (two dependent products
#   per step instead of three, same count): f+b 12.76 vs 12.59 ms, kda 12.57 vs 12.34, 8.73 vs
#   8.60 at 2k; the pass itself 4.21 ms. That pass is not bound by its chain's products.
# overlap_seq: the backward's recomputation of the states (forward order) and its state-gradient
# pass (reverse order) are independent sequential kernels; when they launch at most
# overlap_seq × (number of SMs) programs each (long sequences, few heads: 128 at one 32k sequence
# of 16 heads), they run side by side on two CUDA streams instead of one after the other. 0: never.
# H200 (a3eab3e): gdn2 f+b at one 32k sequence 20.27 → 19.23 ms, results bit-identical; no change
# at 8k or 2k (forced on there).
# The intermediates TUNING["scratch_bf16"] may list.
SCRATCH = ("W", "U", "KD", "QG", "EG", "h", "R", "dh", "dY", "M", "A")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ONE_CONFIG = os.environ.get("GATEDELTA_TRITON_ONE_CONFIG") == "1"


def wide_state_prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotuning filter of the sequential kernels: a state tile of ≥ 128 rows by ≤ 16 values keeps
    only its 4-warp candidates (Triton 3.6 faulted with an illegal address on such a tile at 8
    warps, on the H100 and again on the H200)."""
    if kwargs.get("BK", 0) >= 128 and kwargs.get("BV", 64) <= 16:
        return [c for c in configs if c.num_warps == 4] or configs[:1]
    return configs


def launch_configs(warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    """Autotuning candidates (warps × software-pipeline stages); one under the interpreter.

    Every chunk kernel only stores (no accumulation into its outputs), so re-running it while
    tuning is harmless. A 128-register cap (``maxnreg``: two 8-warp programs per SM instead of one)
    was among the intra and gradient kernels' candidates and never won on the H200 (2026-11-29).
    With ``GATEDELTA_TRITON_ONE_CONFIG=1`` (set before import) only the first candidate: a
    correctness run on a cold GPU (``gatedelta bench kernels check``) then compiles each kernel
    once per shape instead of once per candidate.
    """
    if INTERPRET or ONE_CONFIG:
        return [triton.Config({}, num_warps=warps[0], num_stages=stages[0])]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


# Debug mode (tests): fill every kernel output with NaN before the kernels write it, so an element
# a kernel forgets to write cannot pass.
POISON = os.environ.get("GATEDELTA_TRITON_POISON") == "1"


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _side_stream(device_index: int) -> tuple[torch.cuda.Stream, int]:
    return torch.cuda.Stream(device_index), _sm_count(device_index)


def side_stream(device: torch.device, programs: int) -> torch.cuda.Stream | None:
    """A second CUDA stream (one per device) for a sequential kernel of ``programs`` programs to
    run beside another, or None (CPU, the interpreter, enough programs to fill the GPU —
    ``TUNING["overlap_seq"]`` — or a CUDA-graph capture in progress: a fork into a side stream
    inside a capture was not measured, so captured graphs keep the single-stream order)."""
    if device.type != "cuda" or INTERPRET or not TUNING["overlap_seq"]:
        return None
    if torch.cuda.is_current_stream_capturing():
        return None
    stream, sms = _side_stream(device.index if device.index is not None else torch.cuda.current_device())
    return stream if programs <= TUNING["overlap_seq"] * sms else None


def defers(decay: int) -> bool:
    """Whether the pair kernels run a deferring launch and a fallback (``TUNING["pair_fallback"]``):
    per-channel decay, the fallback on and a positive ``anchor_range``."""
    return decay == 2 and bool(TUNING["pair_fallback"]) and float(TUNING["anchor_range"]) > 0


def deferral(decay: int, programs: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """The worklist of a pair kernel's deferring launch (``TUNING["pair_fallback"]``) and the
    range limit. When :func:`defers`, the worklist is ``[1 + programs]`` int32, zeroed: a counter,
    then the deferred programs' indices; else a one-element placeholder (the kernels then take the
    checked path and never touch it)."""
    limit = float(TUNING["anchor_range"])
    if defers(decay):
        return torch.zeros(1 + programs, dtype=torch.int32, device=device), limit
    return torch.empty(1, dtype=torch.int32, device=device), limit


def fallback_programs(device: torch.device, programs: int) -> int:
    """Persistent programs of a fallback launch: two per SM (4 under the interpreter), at most one
    per possible item."""
    if device.type != "cuda" or INTERPRET:
        return min(programs, 4)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return min(programs, 2 * _sm_count(index))


def launch_pair_kernel(kernel, grid: tuple[int, ...], args: tuple, meta: dict, decay: int,
                       device: torch.device, ranges: torch.Tensor | None) -> None:
    """Launch a pair kernel (intra or gradient) whose signature ends ``…, ranges, worklist, limit,
    capacity`` before its constexprs: one checked pass (PASS 0), or with ``TUNING["pair_fallback"]``
    the deferring pass (PASS 1) and, through ``kernel.fn`` without the autotuner (whose reruns would
    zero the worklist), the fallback pass (PASS 2) over what it listed.

    ``ranges [NT, HV, NR]``: the log-decay range of each chunk's tiles, stored by the
    cumulative-decay kernel (:func:`gatedelta.ops.triton.forward.chunk_cumdecay`), required when
    deferring. A PASS 1 program reads its chunk's largest range first and, past the limit, lists
    itself and exits: a deferred program costs one launch of work (the fallback's), not two.
    ``TUNING["fallback_warps"]``: warps of the fallback launch."""
    programs = math.prod(grid)
    worklist, limit = deferral(decay, programs, device)
    deferring = worklist.numel() > 1
    if deferring and ranges is None:
        raise ValueError("launch_pair_kernel: a deferring launch needs the chunks' stored ranges")
    rng, NR = (ranges, ranges.shape[-1]) if deferring else (worklist, 1)
    kernel[grid](*args, rng, worklist, limit, programs, **meta, NR=NR, RANGE=limit, PASS=int(deferring))
    if deferring:
        kernel.fn[(fallback_programs(device, programs),)](
            *args, rng, worklist, limit, programs, **meta, NR=NR, RANGE=limit, PASS=2,
            num_warps=int(TUNING["fallback_warps"]), num_stages=1)


@triton.jit
def stored_range(ranges, i_t, i_hv, HV: tl.constexpr, NR: tl.constexpr):
    """The largest log-decay range of chunk program ``i_t``'s tiles for value head ``i_hv``, as
    the cumulative-decay kernel stored them (``ranges [NT, HV, NR]``)."""
    p = ranges + (i_t.to(tl.int64) * HV + i_hv) * NR
    b_rng = tl.load(p)
    for j in tl.static_range(1, NR):
        b_rng = tl.maximum(b_rng, tl.load(p + j))
    return b_rng


@triton.jit
def defer_program(worklist, item, capacity):
    """Append ``item`` to the worklist ``[counter, items…]``: a program of a deferring pass
    (``PASS = 1``) whose chunk needs the dyadic split. Appends past ``capacity`` are dropped (a
    guard: the autotuner zeroes the worklist before each timing run and the final one, so a launch
    lists each item once)."""
    slot = tl.atomic_add(worklist, 1)
    if slot < capacity:
        tl.store(worklist + 1 + slot, item)


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


def state_low(dtype: torch.dtype, kernel: str) -> int:
    """Operands of the state-side products of the sequential ``kernel`` (``"state"`` or
    ``"state_bwd"``), as :func:`mixed_dot`'s LOW: bf16 (2 under the interpreter) for bf16 inputs
    when ``TUNING["state_bf16"]`` lists the kernel, else 0 (fp32 at :func:`dot_precision`)."""
    if kernel not in ("state", "state_bwd"):
        raise ValueError(f"kernel must be 'state' or 'state_bwd', got {kernel!r}")
    if dtype != torch.bfloat16 or kernel not in TUNING["state_bf16"]:
        return 0
    return 2 if INTERPRET else 1


def pair_low(dtype: torch.dtype) -> int:
    """Operands of the pair split's products (:func:`mixed_dot`): 0 = fp32; 1 = bf16 (2 under the
    interpreter), only for 16-bit inputs, whose own rounding is as coarse, and only when
    ``TUNING["pair_bf16"]``."""
    if not (TUNING["pair_bf16"] and dtype in (torch.bfloat16, torch.float16)):
        return 0
    return 2 if INTERPRET else 1


def scratch_dtype(dtype: torch.dtype, name: str) -> torch.dtype:
    """Storage dtype of the intermediate ``name`` (one of :data:`SCRATCH`) passed between the
    sequential kernels and the rest: bf16 for bf16 inputs when ``TUNING["scratch_bf16"]`` lists
    it, else fp32. Kernels load them with ``.to(tl.float32)``; stores convert to the buffer's dtype.
    fp16 inputs keep fp32: their own rounding is 8× finer than bf16's (interpreter, gdn2: the
    kernels' own errors 2e-4–3e-4 with fp32, ~2e-3 with bf16 intermediates), and fp16 storage
    could overflow."""
    if name not in SCRATCH:
        raise ValueError(f"scratch name {name!r} not in {SCRATCH}")
    if name in TUNING["scratch_bf16"] and dtype == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def inverse_precision(dtype: torch.dtype) -> str:
    """The (I + T)⁻¹ products compound errors; three-pass tf32 is as good as fp32 there."""
    if os.environ.get("TRITON_INTERPRET") == "1" or dtype == torch.float32:
        return "ieee"
    return "tf32x3"


def on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make x's GPU the current device for the launches inside: Triton launches on the current
    device, so tensors on another GPU (a model moved to ``cuda:1`` while ``cuda:0`` is current)
    would otherwise be read by kernels running on the wrong one."""
    if x.is_cuda:
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


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
def chunk_rows(cu_seqlens, chunk_indices, i_t, BT: tl.constexpr):
    """Rows of the chunk-parallel program ``i_t`` (see :func:`prepare_chunks`): its sequence's
    bounds ``bos, eos`` and chunk index ``i_c`` (int64), ``o_t = 0..BT−1``, the packed rows
    ``o_row`` and their mask ``m_t`` (rows past the sequence end are masked)."""
    i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
    i_c = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_row = bos + i_c * BT + o_t
    return bos, eos, i_c, o_t, o_row, o_row < eos


@triton.jit
def level_split(b_G, G, row0, eos, i_hv, o_t, o_k, m_k, h, HV: tl.constexpr, K: tl.constexpr):
    """One level of the dyadic pair split (see :func:`pair_matrices_split`): rows are grouped in blocks of
    ``2h``; the anchor of a block is its row ``h − 1`` (the last row of its left half).

    Returns ``(right, same, e)``: ``right [BT]`` marks rows in a right half, ``same [BT, BT]`` marks
    pairs in one block, and ``e = exp(−|G − G_anchor|) [BT, BK]`` is ``exp(G_r − G_c)`` on right
    rows and ``exp(G_c − G_s)`` on left rows, each ≤ 1. The anchor rows of G are re-read from
    memory (L1/L2-resident: picking them from ``b_G`` in registers measured 6 % slower on the H200,
    2026-11-29); an anchor past the sequence end reads 0 and only reaches pairs with a row past
    the end.

    ``h`` (a power of two) is a run-time value: the callers' level loops are not unrolled, which
    keeps one level's tiles live at a time (faithful sm_90 compile, Triton 3.6, gdn2's gradient
    fallback at BK 64 and 8 warps: 1,400 B of stack per thread instead of 4,408 unrolled). Blocks
    are aligned powers of two, so bit operations place rows: a block starts at ``o_t & −2h``, and
    two rows share one exactly when their indices differ only below bit ``2h``."""
    o_c = (o_t & (-2 * h)) + h - 1
    m_c = (row0 + o_c < eos)[:, None] & m_k[None, :]
    b_gc = tl.load(G + ((row0 + o_c)[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_c, other=0)
    b_e = tl.exp(-tl.abs(b_G - b_gc))
    right = (o_t & h) != 0
    same = (o_t[:, None] ^ o_t[None, :]) < 2 * h
    return right, same, b_e


@triton.jit
def block_ends(G, row0, eos, i_hv, o_t, o_k, m_k, s, HV: tl.constexpr, K: tl.constexpr):
    """G ``[BT, BK]`` at the first and at the last valid row of each row's aligned block of ``s``
    rows (``s`` a run-time power of two). G does not increase down a chunk (g ≤ 0), so these are
    the block's largest and smallest values per channel. A block wholly past the sequence end
    reads 0 at both."""
    first = o_t & (-s)
    last = tl.minimum(first + s - 1, eos - row0 - 1)
    m_f = (row0 + first < eos)[:, None] & m_k[None, :]
    b_first = tl.load(G + ((row0 + first)[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_f, other=0)
    b_last = tl.load(G + ((row0 + last)[:, None] * HV + i_hv) * K + o_k[None, :], mask=m_f, other=0)
    return b_first, b_last


@triton.jit
def split_depth(G, row0, eos, i_hv, o_t, o_k, m_k, limit, HV: tl.constexpr, K: tl.constexpr,
                BT: tl.constexpr):
    """How far a tile must be split: the fewest levels L (0 … 6) of the dyadic split after which
    every aligned block of ``BT >> L`` rows spans a log-decay range of at most ``limit`` in every
    channel (L = 6: blocks of one row, range 0). Returns L and each row's block midpoint
    ``[BT, BK]``, through which the pairs inside a block then factor with factors
    ``≤ exp(limit / 2)`` (:func:`pair_matrices_split`).

    L = 0 is the midpoint path's test and midpoint (:func:`chunk_midpoint`), value for value.
    Strong decay needs a few levels, not six: gdn2's inputs with g × 8 (≈ −6.5 per row) span ~200
    over 32 rows, ~45 over 8, so L = 3 there, while a hard reset (g clamped to −110) needs all six
    for the tiles that hold one."""
    levels = tl.full([], 0, tl.int32)
    s = tl.full([], BT, tl.int32)
    b_first, b_last = block_ends(G, row0, eos, i_hv, o_t, o_k, m_k, s, HV, K)
    b_rng = tl.max(tl.max(b_first - b_last, 1), 0)
    while b_rng > limit:
        levels += 1
        s = s // 2
        b_first, b_last = block_ends(G, row0, eos, i_hv, o_t, o_k, m_k, s, HV, K)
        b_rng = tl.max(tl.max(b_first - b_last, 1), 0)
    return levels, 0.5 * (b_first + b_last)


@triton.jit
def bf16_values(a):
    """fp32 ``a`` rounded to bf16 precision (round to nearest, ties to even, as the GPU's
    ``.to(tl.bfloat16)``), kept in fp32. Bit arithmetic, not a cast: Triton 3.9's interpreter
    truncates fp32 → bf16, which doubles the rounding error LOW = 2 stands in for."""
    bits = a.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32, bitcast=True)


@triton.jit
def pair_operand(a, PREC: tl.constexpr, LOW: tl.constexpr):
    """An fp32 operand of the pair split's products, rounded as :func:`mixed_dot` will use it: to
    bf16 (LOW = 1: a bf16 tile; LOW = 2: bf16 values in fp32), to tf32 (round to nearest, ties
    away, like ``cvt.rna.tf32.f32``) for ``PREC == "tf32"``, else unchanged. Rounding once,
    before the product, lets :func:`pair_both` reuse the exact values the tensor cores saw."""
    if LOW == 1:
        return a.to(tl.bfloat16)
    elif LOW == 2:
        return bf16_values(a)
    elif PREC == "tf32":
        bits = a.to(tl.int32, bitcast=True)
        return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)  # keep 10 mantissa bits
    else:
        return a


@triton.jit
def mixed_dot(a, b, PREC: tl.constexpr, LOW: tl.constexpr):
    """``a @ b`` accumulated in fp32, from fp32 operands at precision PREC (LOW = 0), bf16 operands
    (LOW = 1, see :func:`pair_low`), or operands rounded to bf16 and multiplied exactly (LOW = 2:
    the same numbers, for the interpreter, whose bf16 ``tl.dot`` is wrong in Triton 3.9 and whose
    bf16 cast truncates: :func:`bf16_values`)."""
    if LOW == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif LOW == 2:
        return tl.dot(bf16_values(a), bf16_values(b), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def chunk_midpoint(b_G, m_t):
    """Per channel, the midpoint ``m = (max + min) / 2`` of G over the chunk's valid rows ``m_t``
    ``[BK]``, and the largest range ``max − min`` over the tile's channels (a scalar): when it is at
    most ``TUNING["anchor_range"]``, every pair factors through m with factors ``≤ exp(range/2)``."""
    b_hi = tl.max(tl.where(m_t[:, None], b_G, -float("inf")), 0)
    b_lo = tl.min(tl.where(m_t[:, None], b_G, float("inf")), 0)
    return 0.5 * (b_hi + b_lo), tl.max(b_hi - b_lo, 0)


@triton.jit
def anchor_scales(b_G, b_m, m_t):
    """``exp(G − m)`` (row operands) and ``exp(m − G)`` (column operands) ``[BT, BK]``, zero on rows
    past the sequence end (their G is not this chunk's and could be far from m). The midpoint m is
    per channel ``[1, BK]`` (the tile's) or per row ``[BT, BK]`` (each row's block's,
    :func:`split_depth`)."""
    b_d = b_G - b_m
    return tl.where(m_t[:, None], tl.exp(b_d), 0.0), tl.where(m_t[:, None], tl.exp(-b_d), 0.0)


@triton.jit
def pair_matrices_anchor(b_x, b_x2, b_y, b_up, b_dn, o_t, pairs, BT: tl.constexpr, TWO: tl.constexpr,
                         PREC: tl.constexpr, LOW: tl.constexpr, DIAG: tl.constexpr):
    """:func:`pair_matrices_split`'s results through the midpoint (:func:`anchor_scales`) for the
    pairs ``r > s`` marked in ``pairs [BT, BT]`` (all of them, or those inside each block of
    :func:`split_depth`): one product each; with DIAG, the diagonal (ρ = 1, the largest terms)
    added exact in fp32 as in the split."""
    b_ys = tl.trans(b_y * b_dn)
    b_P = tl.where(pairs, mixed_dot(b_x * b_up, b_ys, PREC, LOW), 0.0)
    if DIAG:
        b_P += tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_x * b_y, 1)[:, None], 0.0)
    b_P2 = tl.zeros([BT, BT], dtype=tl.float32)
    if TWO:
        b_P2 = tl.where(pairs, mixed_dot(b_x2 * b_up, b_ys, PREC, LOW), 0.0)
    return b_P, b_P2


@triton.jit
def pair_matrices(b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV: tl.constexpr, K: tl.constexpr,
                  BT: tl.constexpr, TWO: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr,
                  RANGE: tl.constexpr):
    """The pair matrices of one K block (see :func:`pair_matrices_split`): split as far as the tile's
    log-decay needs for blocks spanning at most RANGE (:func:`split_depth`; none, the midpoint
    path, for most tiles); RANGE 0: always the whole split; RANGE < 0: always the midpoint,
    unchecked (the deferring pass of ``TUNING["pair_fallback"]``, which checks the range itself and
    hands the tile to a fallback pass)."""
    if RANGE < 0:
        m_t = (row0 + o_t) < eos
        b_m, _ = chunk_midpoint(b_G, m_t)
        b_up, b_dn = anchor_scales(b_G, b_m[None, :], m_t)
        lower = o_t[:, None] > o_t[None, :]
        b_P, b_P2 = pair_matrices_anchor(b_x, b_x2, b_y, b_up, b_dn, o_t, lower, BT, TWO, PREC, LOW, True)
    elif RANGE > 0:
        levels, b_m = split_depth(G, row0, eos, i_hv, o_t, o_k, m_k, RANGE, HV, K, BT)
        b_P, b_P2 = pair_matrices_split(b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV, K, BT,
                                        TWO, PREC, LOW, levels, b_m)
    else:
        b_P, b_P2 = pair_matrices_split(b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV, K, BT,
                                        TWO, PREC, LOW, 6, b_G)
    return b_P, b_P2


@triton.jit
def pair_matrices_split(b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV: tl.constexpr,
                        K: tl.constexpr, BT: tl.constexpr, TWO: tl.constexpr, PREC: tl.constexpr,
                        LOW: tl.constexpr, levels, b_m):
    """``P[r, s] = Σ_k x[r,k] y[s,k] exp(G[r,k] − G[s,k])`` for ``s ≤ r`` and, when TWO, the same
    with x2 for ``s < r`` (strict). All tiles ``[BT, BK]`` fp32 of one chunk (per-channel decay);
    G in memory serves the anchor rows. Returns two ``[BT, BT]`` fp32 tiles, zero above.

    Dyadic split, exact for every ``G`` (no factor above 1 is formed): a pair ``s < r`` belongs to
    exactly one level ``h ∈ {BT/2, …, 1}``, the one at which r and s fall in the right and left
    halves of the same block of ``2h`` rows. Through that block's anchor row c (``s ≤ c < r``),
    ``exp(G_r − G_s) = exp(G_r − G_c)·exp(G_c − G_s)``, so each level is one matrix product of
    scaled rows, masked to pairs in one block: log₂ BT products and no per-pair loop. ``row0`` is
    the chunk's first row.

    Only the first ``levels`` levels run (6: all); the pairs left, inside one aligned block of
    ``BT >> levels`` rows, factor through their block's midpoint ``b_m [BT, BK]``
    (:func:`split_depth`), one product each, as :func:`pair_matrices_anchor` does for the whole
    tile. With ``levels = 0`` the results are that function's, value for value.
    """
    tl.static_assert(BT == 64)  # six levels
    b_P = tl.where(o_t[:, None] == o_t[None, :], tl.sum(b_x * b_y, 1)[:, None], 0.0)
    b_P2 = tl.zeros([BT, BT], dtype=tl.float32)
    for lvl in range(levels):  # not unrolled: see level_split
        right, same, b_e = level_split(b_G, G, row0, eos, i_hv, o_t, o_k, m_k, (BT // 2) >> lvl, HV, K)
        b_ys = tl.where(right[:, None], 0.0, b_y * b_e)
        b_xr = tl.where(right[:, None], b_x * b_e, 0.0)
        b_P += tl.where(same, mixed_dot(b_xr, tl.trans(b_ys), PREC, LOW), 0.0)
        if TWO:
            b_xr2 = tl.where(right[:, None], b_x2 * b_e, 0.0)
            b_P2 += tl.where(same, mixed_dot(b_xr2, tl.trans(b_ys), PREC, LOW), 0.0)
    if levels < 6:
        m_t = (row0 + o_t) < eos
        b_up, b_dn = anchor_scales(b_G, b_m, m_t)
        # r > s in one block of BT >> levels rows (the diagonal is in b_P already)
        inner = ((o_t[:, None] ^ o_t[None, :]) < (BT >> levels)) & (o_t[:, None] > o_t[None, :])
        b_Pb, b_P2b = pair_matrices_anchor(b_x, b_x2, b_y, b_up, b_dn, o_t, inner, BT, TWO, PREC, LOW, False)
        b_P += b_Pb
        b_P2 += b_P2b
    return b_P, b_P2


@triton.jit
def pair_both(b_D, b_D2, b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV: tl.constexpr,
              K: tl.constexpr, BT: tl.constexpr, TWO: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr,
              RANGE: tl.constexpr):
    """The gradient kernel's pairwise products (see :func:`pair_both_split`), through the midpoint or
    split as far as needed, as for :func:`pair_matrices`. Returns ``(left, left2, right, dG)``."""
    if RANGE < 0:
        m_t = (row0 + o_t) < eos
        b_m, _ = chunk_midpoint(b_G, m_t)
        b_up, b_dn = anchor_scales(b_G, b_m[None, :], m_t)
        b_l, b_l2, b_r, b_dG = pair_both_anchor(b_D, b_D2, b_x, b_x2, b_y, b_up, b_dn, o_t, TWO, PREC, LOW)
    elif RANGE > 0:
        levels, b_m = split_depth(G, row0, eos, i_hv, o_t, o_k, m_k, RANGE, HV, K, BT)
        b_l, b_l2, b_r, b_dG = pair_both_split(b_D, b_D2, b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k,
                                               m_k, HV, K, BT, TWO, PREC, LOW, levels, b_m)
    else:
        b_l, b_l2, b_r, b_dG = pair_both_split(b_D, b_D2, b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k,
                                               m_k, HV, K, BT, TWO, PREC, LOW, 6, b_G)
    return b_l, b_l2, b_r, b_dG


@triton.jit
def pair_both_anchor(b_D, b_D2, b_x, b_x2, b_y, b_up, b_dn, o_t, TWO: tl.constexpr, PREC: tl.constexpr,
                     LOW: tl.constexpr, b_diag=None):
    """:func:`pair_both_split`'s results with every pair through the midpoint: ``ρ_rsk = up_rk·dn_sk``
    (:func:`anchor_scales`), so ``left = up ⊙ (D (dn ⊙ y))`` and
    ``right = dn ⊙ (Dᵀ (up ⊙ x) + D2ᵀ (up ⊙ x2))``: four products over the pairs below the diagonal
    (D2 is strictly lower already). The diagonal (ρ = 1) is added exactly and left out of dG, where
    it cancels, as in the split; dG comes from the products' rounded operands (each pair enters
    both of its terms with one value). With ``b_diag`` given, D and D2 come as
    :func:`anchor_pair_operands` formed them (D's strictly lower part, rounded; D2 rounded)."""
    ROUNDED: tl.constexpr = b_diag is not None
    if not ROUNDED:
        b_diag, b_Ds, _ = anchor_pair_operands(b_D, b_D2, o_t, False, PREC, LOW)  # D2 below, where used
    else:
        b_Ds = b_D
    b_ys = pair_operand(b_y * b_dn, PREC, LOW)
    b_xr = pair_operand(b_x * b_up, PREC, LOW)
    b_L = mixed_dot(b_Ds, b_ys, PREC, LOW)
    b_R = mixed_dot(tl.trans(b_Ds), b_xr, PREC, LOW)
    b_dG = b_xr.to(tl.float32) * b_L
    b_l2 = tl.zeros(b_x.shape, dtype=tl.float32)
    if TWO:
        if not ROUNDED:
            b_D2s = pair_operand(b_D2, PREC, LOW)
        else:
            b_D2s = b_D2
        b_xr2 = pair_operand(b_x2 * b_up, PREC, LOW)
        b_L2 = mixed_dot(b_D2s, b_ys, PREC, LOW)
        b_R += mixed_dot(tl.trans(b_D2s), b_xr2, PREC, LOW)
        b_dG += b_xr2.to(tl.float32) * b_L2
        b_l2 = b_L2 * b_up
    b_dG -= b_ys.to(tl.float32) * b_R
    b_l = b_L * b_up + b_diag[:, None] * b_y
    return b_l, b_l2, b_R * b_dn + b_diag[:, None] * b_x, b_dG


@triton.jit
def anchor_pair_operands(b_D, b_D2, o_t, TWO: tl.constexpr, PREC: tl.constexpr, LOW: tl.constexpr):
    """D and D2 ``[BT, BT]`` as :func:`pair_both_anchor` takes them with its ``b_diag``: D's
    diagonal ``[BT]``, its strictly lower part and D2, each rounded for the products
    (:func:`pair_operand`). They do not depend on the K block: a gradient program with several K
    blocks forms them once. Returns ``(diagonal, D, D2)``."""
    b_diag = tl.sum(tl.where(o_t[:, None] == o_t[None, :], b_D, 0.0), 1)
    b_Ds = pair_operand(tl.where(o_t[:, None] > o_t[None, :], b_D, 0.0), PREC, LOW)
    b_D2s = b_D2
    if TWO:
        b_D2s = pair_operand(b_D2, PREC, LOW)
    return b_diag, b_Ds, b_D2s


@triton.jit
def pair_both_split(b_D, b_D2, b_x, b_x2, b_y, b_G, G, row0, eos, i_hv, o_t, o_k, m_k, HV: tl.constexpr,
                    K: tl.constexpr, BT: tl.constexpr, TWO: tl.constexpr, PREC: tl.constexpr,
                    LOW: tl.constexpr, levels, b_m):
    """The pairwise products of the gradient kernel, for D and (when TWO) D2 lower-triangular
    ``[BT, BT]`` and x, x2, y ``[BT, BK]``, with ``ρ_rsk = exp(G[r,k] − G[s,k])``:

    ``left[r, k] = Σ_s D[r,s] y[s,k] ρ_rsk``, ``left2`` the same with D2;
    ``right[s, k] = Σ_r (D[r,s] x[r,k] + D2[r,s] x2[r,k]) ρ_rsk`` (one sum: the gradient kernel
    only needs it whole).

    One level loop of the dyadic split of :func:`pair_matrices_split`: each level's split (anchor rows
    and one exp) serves every product (one loop measured 1.2 ms faster than one per side for gdn2
    at 2k on the H200).

    Also returns the pairs' log-decay gradient ``dG = x⊙left + x2⊙left2 − y⊙right`` (the diagonal
    cancels), summed level by level from the very operands of the products, as rounded for them
    (:func:`pair_operand`): each pair ``(r, s)`` then enters with one value in both terms, so the
    pairs inside ``[t, BT)`` cancel exactly in dg's reverse cumulative sum. Formed as
    ``x⊙left − y⊙right`` after the fact, each term carries the operands' own rounding error, which
    the cancellation leaves standing (H200, bf16 inputs: dg 4.30e-3 → 3.77e-3 with tf32 products;
    interpreter with bf16 operands: 1.6e-2 → 7.9e-3).

    As in :func:`pair_matrices_split`, only the first ``levels`` levels run; the pairs inside one
    block of ``BT >> levels`` rows go through the block's midpoint ``b_m [BT, BK]``.

    Returns ``(left, left2, right, dG)``."""
    tl.static_assert(BT == 64)  # six levels
    eye = o_t[:, None] == o_t[None, :]
    b_diag = tl.where(eye, b_D, 0.0)
    b_diag2 = tl.where(eye, b_D2, 0.0)
    b_l = tl.sum(b_diag, 1)[:, None] * b_y
    b_l2 = tl.sum(b_diag2, 1)[:, None] * b_y
    b_r = tl.sum(b_diag, 0)[:, None] * b_x + tl.sum(b_diag2, 0)[:, None] * b_x2
    b_dG = tl.zeros(b_x.shape, dtype=tl.float32)
    for lvl in range(levels):  # not unrolled: see level_split
        right, same, b_e = level_split(b_G, G, row0, eos, i_hv, o_t, o_k, m_k, (BT // 2) >> lvl, HV, K)
        b_Ds = pair_operand(tl.where(same, b_D, 0.0), PREC, LOW)
        b_ys = pair_operand(tl.where(right[:, None], 0.0, b_y * b_e), PREC, LOW)
        b_xr = pair_operand(tl.where(right[:, None], b_x * b_e, 0.0), PREC, LOW)
        # xr is zero on left rows and ys on right rows: dG needs no mask
        b_L = mixed_dot(b_Ds, b_ys, PREC, LOW)
        b_l += tl.where(right[:, None], b_L * b_e, 0.0)
        b_dG += b_xr.to(tl.float32) * b_L
        b_R = mixed_dot(tl.trans(b_Ds), b_xr, PREC, LOW)
        b_r += tl.where(right[:, None], 0.0, b_R * b_e)
        b_dG -= b_ys.to(tl.float32) * b_R
        if TWO:
            b_D2s = pair_operand(tl.where(same, b_D2, 0.0), PREC, LOW)
            b_xr2 = pair_operand(tl.where(right[:, None], b_x2 * b_e, 0.0), PREC, LOW)
            b_L2 = mixed_dot(b_D2s, b_ys, PREC, LOW)
            b_l2 += tl.where(right[:, None], b_L2 * b_e, 0.0)
            b_dG += b_xr2.to(tl.float32) * b_L2
            b_R2 = mixed_dot(tl.trans(b_D2s), b_xr2, PREC, LOW)
            b_r += tl.where(right[:, None], 0.0, b_R2 * b_e)
            b_dG -= b_ys.to(tl.float32) * b_R2
    if levels < 6:
        # the pairs inside one block of BT >> levels rows, through its midpoint: pair_both_anchor
        # on D and D2 masked to those pairs, its diagonal zero (added above), so levels = 0 gives
        # the midpoint path's values
        m_t = (row0 + o_t) < eos
        b_up, b_dn = anchor_scales(b_G, b_m, m_t)
        inner = ((o_t[:, None] ^ o_t[None, :]) < (BT >> levels)) & (o_t[:, None] > o_t[None, :])
        b_Ds = pair_operand(tl.where(inner, b_D, 0.0), PREC, LOW)
        b_D2s = pair_operand(tl.where(inner, b_D2, 0.0), PREC, LOW)
        b_lb, b_l2b, b_rb, b_dGb = pair_both_anchor(b_Ds, b_D2s, b_x, b_x2, b_y, b_up, b_dn, o_t, TWO, PREC,
                                                    LOW, tl.zeros([BT], dtype=tl.float32))
        b_l += b_lb
        b_l2 += b_l2b
        b_r += b_rb
        b_dG += b_dGb
    return b_l, b_l2, b_r, b_dG
