"""The chunked PyTorch path (backend "torch") against the float64 reference, for every op.

Tolerances (DESIGN §4): ‖x − ref‖/‖ref‖ ≤ 1e-10 in float64, 1e-5 in float32, 5e-3 in bf16, with the
reference always run in float64 on the same inputs.
"""

from __future__ import annotations

import pytest
import torch

from gatedelta import ops
from gatedelta.ops import chunked, spec

from .helpers import OP_NAMES, OPS, TOL, gate_kwargs, make_inputs, rel_err, run, to64

INF = float("-inf")


def _check(op: str, args, s0=None, *, dtype=torch.float64, tol=None, **kw):
    """Run chunked and the float64 reference on the same inputs; compare o and the final state."""
    tol = TOL[dtype] if tol is None else tol
    o, s = run(op, args, "torch", initial_state=s0, output_final_state=True, **kw)
    s0_64 = None if s0 is None else s0.double()
    o_ref, s_ref = run(op, to64(args), "reference", initial_state=s0_64, output_final_state=True, **kw)
    assert o.dtype == args[2].dtype
    assert s.dtype == spec.state_dtype_for(args[2].dtype)
    assert rel_err(o, o_ref) < tol, (op, rel_err(o, o_ref))
    assert rel_err(s, s_ref) < tol, (op, rel_err(s, s_ref))
    return o, s


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", OP_NAMES)
def test_matches_reference(op, dtype):
    # T = 67: one full chunk and a ragged one; grouped value heads; initial and final state.
    args, s0 = make_inputs(op, T=67, dtype=dtype)
    _check(op, args, s0, dtype=dtype)


@pytest.mark.parametrize("op", OP_NAMES)
def test_no_initial_state_and_qk_l2norm(op):
    args, _ = make_inputs(op, B=1, T=45, H=1, G=3, K=8, V=12)
    _check(op, args, None, qk_l2norm=True, scale=0.7)


@pytest.mark.parametrize("op", OP_NAMES)
def test_bfloat16(op):
    args, s0 = make_inputs(op, B=1, T=70, K=16, V=16, dtype=torch.float32)
    kinds = ["q", "k", "v", *(kind for kind, _ in OPS[op].gates)]
    args = tuple(a if kind == "g" else a.bfloat16() for kind, a in zip(kinds, args))  # g stays float32
    o, s = _check(op, args, s0, dtype=torch.bfloat16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


@pytest.mark.parametrize("chunk_size,sub_chunk", [(1, 8), (5, 8), (16, 4), (24, 8), (32, 16), (64, 64)])
@pytest.mark.parametrize("op", ["gdn2", "gdn", "gla"])
def test_chunk_sizes(op, chunk_size, sub_chunk):
    # Chunks that do not divide T, sub-chunks that split chunks in 1..8 parts.
    args, s0 = make_inputs(op, T=50)
    r = spec.validate(*args[:3], **gate_kwargs(op, args[3:]), initial_state=s0, output_final_state=True)
    o, s = chunked.recurrence(r, chunk_size=chunk_size, sub_chunk=sub_chunk)
    o_ref, s_ref = run(op, args, "reference", initial_state=s0, output_final_state=True)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10


def test_long_float32():
    args, s0 = make_inputs("gdn2", B=1, T=300, H=1, G=2, K=32, V=32, dtype=torch.float32)
    _check("gdn2", args, s0, dtype=torch.float32)


@pytest.mark.parametrize("op", OP_NAMES)
def test_varlen_equals_per_sequence(op):
    # Lengths: ragged, one empty, one longer than a chunk; each sequence has its own initial state.
    lens = [7, 0, 70, 1, 33]
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    args, _ = make_inputs(op, B=1, T=T, H=2, G=2, K=8, V=8)
    s0 = torch.randn(len(lens), 4, 8, 8, dtype=torch.float64)
    o, s = run(op, args, "torch", cu_seqlens=cu, initial_state=s0, output_final_state=True)
    for n in range(len(lens)):
        a, b_ = int(cu[n]), int(cu[n + 1])
        piece = tuple(x[:, a:b_] for x in args)
        o_n, s_n = run(op, piece, "reference", initial_state=s0[n : n + 1], output_final_state=True)
        if b_ > a:
            assert rel_err(o[:, a:b_], o_n) < 1e-10
        assert rel_err(s[n : n + 1], s_n) < 1e-10


def test_varlen_matches_reference_varlen():
    cu = torch.tensor([0, 64, 64, 129, 130], dtype=torch.int64)
    args, _ = make_inputs("gdn2", B=1, T=130, K=8, V=8, dtype=torch.float32)
    o, s = run("gdn2", args, "torch", cu_seqlens=cu, output_final_state=True)
    o_ref, s_ref = run("gdn2", to64(args), "reference", cu_seqlens=cu, output_final_state=True)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


@pytest.mark.parametrize("op", OP_NAMES)
def test_state_carry(op):
    # f(x1 ‖ x2) == f(x2, init = f(x1).state), split inside a chunk.
    args, s0 = make_inputs(op, T=90)
    o, s = run(op, args, "torch", initial_state=s0, output_final_state=True)
    cut = 41
    o1, s1 = run(op, tuple(x[:, :cut] for x in args), "torch", initial_state=s0, output_final_state=True)
    o2, s2 = run(op, tuple(x[:, cut:] for x in args), "torch", initial_state=s1, output_final_state=True)
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-12
    assert rel_err(s2, s) < 1e-12


@pytest.mark.parametrize("op", ["gdn2", "gdn", "ssd"])
def test_prefill_then_decode_equals_full(op):
    # Chunked prefill of 37 tokens, then 8 one-token steps carrying the state: the full forward.
    args, s0 = make_inputs(op, T=45)
    o, s = run(op, args, "torch", initial_state=s0, output_final_state=True)
    outs = []
    o_t, state = run(op, tuple(x[:, :37] for x in args), "torch", initial_state=s0, output_final_state=True)
    outs.append(o_t)
    for t in range(37, 45):
        o_t, state = run(op, tuple(x[:, t : t + 1] for x in args), "torch", initial_state=state,
                         output_final_state=True)
        outs.append(o_t)
    assert rel_err(torch.cat(outs, 1), o) < 1e-12 and rel_err(state, s) < 1e-12


@pytest.mark.parametrize("op", OP_NAMES)
def test_gva_equals_explicit_repeat(op):
    args, s0 = make_inputs(op, T=40, H=2, G=3)
    q, k, *rest = args
    o, s = run(op, args, "torch", initial_state=s0, output_final_state=True)
    rep = (q.repeat_interleave(3, dim=2), k.repeat_interleave(3, dim=2), *rest)
    o_rep, s_rep = run(op, rep, "torch", initial_state=s0, output_final_state=True)
    assert rel_err(o, o_rep) < 1e-12 and rel_err(s, s_rep) < 1e-12


def test_gates_with_qk_heads_are_shared_across_the_group():
    args, s0 = make_inputs("gdn2", T=30, H=2, G=2)
    q, k, v, g, b, w = args
    g_h, b_h = g[:, :, ::2], b[:, :, ::2]  # H heads
    o, _ = run("gdn2", (q, k, v, g_h, b_h, w), "torch", initial_state=s0)
    o_ref, _ = run("gdn2", (q, k, v, g_h.repeat_interleave(2, 2), b_h.repeat_interleave(2, 2), w),
                   "reference", initial_state=s0)
    assert rel_err(o, o_ref) < 1e-10


# --- extreme gates ----------------------------------------------------------------------------


def _with_resets(g: torch.Tensor, where: str, gen: torch.Generator) -> torch.Tensor:
    g = g.clone()
    if where == "sparse":  # about 1% of (token, head[, channel]) entries, at least one
        mask = torch.rand(g.shape, generator=gen) < 0.01
        mask.view(-1)[7] = True
        g[mask] = INF
    elif where == "chunk":  # a whole chunk of tokens, every head and channel
        g[:, 64:128] = INF
    elif where == "all":
        g[:] = INF
    elif where == "minus50":
        g[:] = -50.0
    return g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("where", ["sparse", "chunk", "all", "minus50"])
@pytest.mark.parametrize("op", ["gdn2", "kda", "gdn", "gla", "ssd"])
def test_extreme_decay(op, where, dtype):
    args, s0 = make_inputs(op, B=1, T=150, H=1, G=2, K=8, V=8, dtype=dtype)
    args = list(args)
    args[3] = _with_resets(args[3], where, torch.Generator().manual_seed(1))
    _check(op, tuple(args), s0, dtype=dtype)


@pytest.mark.parametrize("value", [0.0, 2.0])
@pytest.mark.parametrize("op", ["gdn2", "kda", "gdn", "delta_rule"])
def test_extreme_erase(op, value):
    # b = 0 removes the delta term; b = 2 is the negative-eigenvalue extreme.
    args, s0 = make_inputs(op, B=1, T=80, K=8, V=8)
    args = list(args)
    i = 3 if op == "delta_rule" else 4  # b of gdn2, beta (erase and write) of the others
    args[i] = torch.full_like(args[i], value)
    _check(op, tuple(args), s0)


@pytest.mark.parametrize("op", ["gdn2", "gla", "ssd"])
def test_zero_write(op):
    args, s0 = make_inputs(op, B=1, T=80, K=8, V=8)
    args = list(args)
    args[-1] = torch.zeros_like(args[-1])
    _check(op, tuple(args), s0)


# --- gradients --------------------------------------------------------------------------------


def _leaves(args, s0):
    return [a.detach().clone().requires_grad_() for a in (*args, s0)]


@pytest.mark.parametrize("op", ["gdn2", "kda", "gdn", "ssd", "gla", "delta_rule", "linear_attn"])
def test_gradcheck(op):
    # Small shapes with several chunks and, for per-channel decay, several sub-chunks per chunk.
    args, s0 = make_inputs(op, B=1, T=11, H=1, G=2, K=4, V=3)
    args = list(args)
    if OPS[op].gates and OPS[op].gates[0][0] == "g":
        args[3] = args[3].clamp(max=-0.05)  # stay a valid log-decay under gradcheck's perturbation
    leaves = _leaves(args, s0)

    def f(*xs):
        r = spec.validate(*xs[:3], **gate_kwargs(op, xs[3:-1]), initial_state=xs[-1],
                          output_final_state=True)
        return chunked.recurrence(r, chunk_size=4, sub_chunk=2)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("where", ["sparse", "chunk"])
@pytest.mark.parametrize("op", ["gdn2", "kda", "gdn", "gla", "ssd"])
def test_gradients_with_hard_resets(op, where):
    # Gradients stay finite through g = −inf and agree with autograd through the reference.
    args, s0 = make_inputs(op, B=1, T=150, H=1, G=2, K=8, V=8)
    args = list(args)
    args[3] = _with_resets(args[3], where, torch.Generator().manual_seed(2))
    grads = []
    for backend in ("torch", "reference"):
        leaves = _leaves(args, s0)
        o, s = run(op, tuple(leaves[:-1]), backend, initial_state=leaves[-1], output_final_state=True)
        weight_o = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)
        ((o * weight_o).sum() + s.square().sum()).backward()
        grads.append([x.grad for x in leaves])
    for got, ref in zip(*grads):
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) < 1e-9


def test_default_backend_on_cpu_is_chunked(monkeypatch):
    monkeypatch.delenv("GATEDELTA_BACKEND", raising=False)
    args, _ = make_inputs("gdn", T=20)
    o, _ = ops.gdn(*args)
    o_t, _ = ops.gdn(*args, backend="torch")
    assert torch.equal(o, o_t)


def test_gradcheck_varlen():
    # Packed sequences (one empty, one spanning chunks): gradients flow into the right tokens only.
    cu = torch.tensor([0, 3, 3, 10])
    args, _ = make_inputs("gdn2", B=1, T=10, H=1, G=2, K=3, V=2)
    args = list(args)
    args[3] = args[3].clamp(max=-0.05)
    s0 = torch.randn(3, 2, 3, 2, dtype=torch.float64)
    leaves = _leaves(args, s0)

    def f(*xs):
        r = spec.validate(*xs[:3], g=xs[3], b=xs[4], w=xs[5], initial_state=xs[-1],
                          output_final_state=True, cu_seqlens=cu)
        return chunked.recurrence(r, chunk_size=4, sub_chunk=2)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_no_leakage_across_packed_sequences():
    # Changing one packed sequence changes neither the outputs nor the gradients of the others.
    cu = torch.tensor([0, 30, 95, 100])
    args, _ = make_inputs("kda", B=1, T=100, K=8, V=8)
    o, _ = run("kda", args, "torch", cu_seqlens=cu)
    changed = [x.clone() for x in args]
    changed[2][:, 30:95] = torch.randn_like(changed[2][:, 30:95])
    o2, _ = run("kda", tuple(changed), "torch", cu_seqlens=cu)
    assert torch.equal(o[:, :30], o2[:, :30]) and torch.equal(o[:, 95:], o2[:, 95:])
    leaves = _leaves(args, torch.zeros(3, 4, 8, 8, dtype=torch.float64))
    o, _ = run("kda", tuple(leaves[:-1]), "torch", cu_seqlens=cu)
    o[:, 30:95].sum().backward()
    assert leaves[2].grad[:, :30].abs().max() == 0 and leaves[2].grad[:, 95:].abs().max() == 0


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("T", [1, 3, chunked.SHORT_T])
def test_short_inputs_run_token_by_token_and_match(op, T):
    # Decode steps and tiny prefills skip chunk padding: same values and gradients as the chunked path.
    args, s0 = make_inputs(op, T=T, G=3)

    def forward_backward(short_t):
        leaves = [a.clone().requires_grad_(True) for a in (*args, s0)]
        r = spec.validate(*leaves[:3], **gate_kwargs(op, tuple(leaves[3:-1])), initial_state=leaves[-1],
                          output_final_state=True)
        o, s = chunked.recurrence(r, chunk_size=4, short_t=short_t)
        (o.sum() + (s * s).sum()).backward()
        return o.detach(), s.detach(), [a.grad for a in leaves]

    o, s, grads = forward_backward(chunked.SHORT_T)
    o_ref, s_ref = run(op, args, "reference", initial_state=s0, output_final_state=True)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12
    o2, s2, grads2 = forward_backward(0)
    for a, b_ in zip(grads, grads2):
        assert rel_err(a, b_) < 1e-10


def test_autocast_does_not_lower_the_backend_precision():
    # Layers call the ops under bf16 autocast; the chunked products must still run in fp32.
    args, s0 = make_inputs("gdn2", T=40, dtype=torch.float32)
    ref, _ = run("gdn2", args, "reference", initial_state=s0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _ = run("gdn2", args, "torch", initial_state=s0)
    assert o.dtype == torch.float32 and rel_err(o, ref) < 1e-5


@pytest.mark.parametrize("C", [1, 5, 16, 24, 32, 48, 64])
def test_wy_solve_matches_triangular_solve(C):
    # Leaf inverses + block forward substitution == one triangular solve, values and gradients,
    # with and without autograd (the two paths store the solved rows differently).
    g_ = torch.Generator().manual_seed(C)
    t = 0.5 * torch.randn(2, 3, C, C, generator=g_, dtype=torch.float64)
    rhs = torch.randn(2, 3, C, 5, generator=g_, dtype=torch.float64)
    ref = torch.linalg.solve_triangular(t, rhs, upper=False, unitriangular=True)
    with torch.no_grad():
        assert rel_err(chunked._wy_solve(t, rhs), ref) < 1e-12
    tg, rg = t.clone().requires_grad_(), rhs.clone().requires_grad_()
    assert rel_err(chunked._wy_solve(tg, rg).detach(), ref) < 1e-12
    if C in (5, 32):
        torch.autograd.gradcheck(chunked._wy_solve, (tg[:1, :1], rg[:1, :1]))
    # the explicit inverse (no-autograd path: W and R as one matmul each)
    eye = torch.eye(C, dtype=torch.float64).expand(t.shape)
    inv = torch.linalg.solve_triangular(t, eye, upper=False, unitriangular=True)
    assert rel_err(chunked._wy_inverse(t), inv) < 1e-12


@pytest.mark.parametrize("op", ["gdn2", "gdn", "delta_rule"])
def test_no_grad_and_grad_paths_agree(op):
    # Without autograd the state loop writes into preallocated buffers; with it, it builds lists.
    # Packed sequences make the loop reset and record final states mid-block.
    args, _ = make_inputs(op, B=1, T=150, H=2, G=2, K=8, V=8, dtype=torch.float64)
    cu = torch.tensor([0, 33, 33, 100, 150])
    with torch.no_grad():
        o, s = run(op, args, "torch", cu_seqlens=cu, output_final_state=True)
    grads = tuple(a.clone().requires_grad_() for a in args)
    o_g, s_g = run(op, grads, "torch", cu_seqlens=cu, output_final_state=True)
    assert rel_err(o, o_g.detach()) < 1e-13 and rel_err(s, s_g.detach()) < 1e-13


@pytest.mark.parametrize("op", ["gdn2", "kda", "gdn", "delta_rule"])
@pytest.mark.parametrize("varlen", [False, True])
def test_buffers_reused_across_blocks(op, varlen, monkeypatch):
    # Blocks of one or two chunks: without autograd every block goes through the same buffers
    # (_PairWork, W and R, the state loop's views in _StateWork), the last block has another
    # shape, and packed sequences reset the state and end in the middle of blocks. Stale values
    # from an earlier block would show against the reference.
    monkeypatch.setattr(chunked, "BLOCK_TOKENS", 64)
    if varlen:
        lens = [40, 0, 75, 9, 64]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
        args, _ = make_inputs(op, B=1, T=sum(lens), H=2, G=1, K=8, V=8)
        s0 = torch.randn(len(lens), 2, 8, 8, dtype=torch.float64)
        kw = dict(cu_seqlens=cu)
    else:
        args, s0 = make_inputs(op, B=1, T=150, H=2, G=2, K=8, V=8)
        kw = {}
    with torch.no_grad():
        o, s = run(op, args, "torch", initial_state=s0, output_final_state=True, **kw)
    o_ref, s_ref = run(op, args, "reference", initial_state=s0, output_final_state=True, **kw)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10


@pytest.mark.parametrize("op", ["gdn2", "gdn"])
def test_gradient_of_initial_state_only(op):
    # Only the initial state needs a gradient: the inputs' terms then skip the reused buffers
    # (the graph keeps every block's terms), and the state's gradient matches the reference's.
    args, s0 = make_inputs(op, B=1, T=150, H=2, G=2, K=8, V=8)
    grads = []
    for backend in ("torch", "reference"):
        leaf = s0.clone().requires_grad_()
        o, s = run(op, args, backend, initial_state=leaf, output_final_state=True)
        (o.square().sum() + s.square().sum()).backward()
        grads.append(leaf.grad)
    assert rel_err(*grads) < 1e-10


@pytest.mark.parametrize("C", [2, 4, 32])
def test_pair_buffers_match_general_hierarchy(C):
    # The no-grad per-channel path (_PairWork: preallocated buffers reused across blocks, exp as
    # exp2) against the general hierarchy: pairs, rows, tails and the last decay, for two blocks
    # through the same buffers (stale entries from the first would show in the second), with
    # GVA broadcasting (k, q over G) and hard resets (g = −inf).
    g_ = torch.Generator().manual_seed(C)
    work: dict = {}
    for _ in range(2):
        lead = (1, 3, 2)
        g = -torch.rand(*lead, 2, C, 8, generator=g_, dtype=torch.float64) * 2
        g[..., C // 2, :3] = INF
        q = torch.randn(*lead, 1, C, 8, generator=g_, dtype=torch.float64)
        k = torch.randn(*lead, 1, C, 8, generator=g_, dtype=torch.float64)
        e = torch.randn(*lead, 2, C, 8, generator=g_, dtype=torch.float64)
        fast, ref = chunked._ChannelDecay(g, 1, work), chunked._ChannelDecay(g, 1)
        with torch.no_grad():
            got = fast.pairs([q, e], k)
        want = ref.pairs([q, e], k)
        # the second x's diagonal is left 0 (only T is paired that way; its diagonal is unread)
        assert (got[1].diagonal(dim1=-2, dim2=-1) == 0).all()
        got[1], want[1] = got[1].tril(-1), want[1].tril(-1)
        for a, b in [*zip(got, want), (fast.rows(q), ref.rows(q)), (fast.rows(e), ref.rows(e)),
                     (fast.tails(k), ref.tails(k)), (fast.last, ref.last)]:
            assert a.shape == b.shape and torch.isfinite(a).all()
            assert rel_err(a, b) < 1e-14
    assert len(work) == 1
