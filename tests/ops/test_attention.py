"""gated_attention and attention_weights against an explicit float64 softmax-with-mask oracle."""

from __future__ import annotations

import warnings

import pytest
import torch

from gatedelta import ops
from gatedelta.ops import attention as attn
from gatedelta.ops.attention import attention_weights

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-3}


def oracle_probs(q, k, *, causal=True, window=None, scale=None, cu_seqlens=None):
    """Softmax probabilities ``[B, Hq, T, S]`` in float64 from a dense mask built position by position."""
    B, T, Hq, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    kr = k.double().repeat_interleave(Hq // Hkv, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.double(), kr) * scale
    offset = S - T if causal else 0
    seq = torch.zeros(S, dtype=torch.long)
    if cu_seqlens is not None:
        for n, (a, b) in enumerate(zip(cu_seqlens.tolist()[:-1], cu_seqlens.tolist()[1:])):
            seq[a:b] = n
    allowed = torch.zeros(T, S, dtype=torch.bool)
    for i in range(T):
        p = i + offset
        for s in range(S):
            allowed[i, s] = (
                (not causal or s <= p) and (window is None or s > p - window) and bool(seq[i] == seq[s])
            )
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def oracle(q, k, v, gate=None, **mask):
    p = oracle_probs(q, k, **mask)
    vr = v.double().repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    o = torch.einsum("bhts,bshd->bthd", p, vr)
    if gate is not None:
        g = gate.double().sigmoid()
        o = o * (g.unsqueeze(-1) if g.ndim == 3 else g)
    return o


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(x).any()
    return ((x.double() - ref).norm() / ref.norm()).item()


def make(B=2, T=23, S=None, Hq=4, Hkv=2, D=8, Dv=None, dtype=torch.float64, gate=None):
    S = T if S is None else S
    Dv = D if Dv is None else Dv
    q = torch.randn(B, T, Hq, D, dtype=dtype)
    k = torch.randn(B, S, Hkv, D, dtype=dtype)
    v = torch.randn(B, S, Hkv, Dv, dtype=dtype)
    g = {None: None, "head": torch.randn(B, T, Hq, dtype=dtype),
         "elem": torch.randn(B, T, Hq, Dv, dtype=dtype)}[gate]
    return q, k, v, g


MASKS = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, window=1),
    dict(causal=True, window=3),
    dict(causal=True, window=8),
    dict(causal=True, window=40),  # longer than T: no window
]


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("gate", [None, "head", "elem"])
def test_matches_oracle_fp64(mask, gate):
    q, k, v, g = make(gate=gate)
    o = ops.gated_attention(q, k, v, g, **mask)
    assert o.dtype == q.dtype and o.shape == q.shape
    assert rel_err(o, oracle(q, k, v, g, **mask)) < TOL[torch.float64]


@pytest.mark.parametrize("mask", MASKS[:4], ids=str)
def test_matches_oracle_fp32_gqa_value_dim(mask):
    q, k, v, g = make(T=19, Hq=6, Hkv=2, D=8, Dv=5, dtype=torch.float32, gate="elem")
    o = ops.gated_attention(q, k, v, g, scale=0.3, **mask)
    assert o.shape == (2, 19, 6, 5)
    assert rel_err(o, oracle(q, k, v, g, scale=0.3, **mask)) < TOL[torch.float32]


@pytest.mark.parametrize("window", [None, 1, 4, 12])
@pytest.mark.parametrize("T", [1, 5, 17])
def test_queries_at_the_end_of_the_keys(T, window):
    """Causal with S > T: query i sits at position S − T + i (KV-cache prefill and decode)."""
    q, k, v, g = make(T=T, S=29, gate="head")
    o = ops.gated_attention(q, k, v, g, window=window)
    assert rel_err(o, oracle(q, k, v, g, window=window)) < TOL[torch.float64]


@pytest.mark.parametrize("window", [None, 3])
def test_prefill_then_decode_equals_full(window):
    q, k, v, g = make(T=20, gate="elem")
    full = ops.gated_attention(q, k, v, g, window=window)
    steps = [ops.gated_attention(q[:, :12], k[:, :12], v[:, :12], g[:, :12], window=window)]
    for t in range(12, 20):
        steps.append(ops.gated_attention(q[:, t : t + 1], k[:, : t + 1], v[:, : t + 1], g[:, t : t + 1],
                                         window=window))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_gqa_equals_explicit_repeat():
    q, k, v, g = make(Hq=6, Hkv=2, gate="head")
    for mask in (dict(causal=True), dict(causal=True, window=4)):
        grouped = ops.gated_attention(q, k, v, g, **mask)
        repeated = ops.gated_attention(q, k.repeat_interleave(3, 2), v.repeat_interleave(3, 2), g, **mask)
        torch.testing.assert_close(grouped, repeated, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mask", [dict(causal=True), dict(causal=False), dict(causal=True, window=3)],
                         ids=str)
def test_varlen_equals_per_sequence(mask):
    cu = torch.tensor([0, 7, 7, 19, 20, 31], dtype=torch.int32)  # an empty and a 1-token sequence
    q, k, v, g = make(B=1, T=31, gate="elem")
    o = ops.gated_attention(q, k, v, g, cu_seqlens=cu, **mask)
    assert rel_err(o, oracle(q, k, v, g, cu_seqlens=cu, **mask)) < TOL[torch.float64]
    for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:]):
        if b > a:
            ref = ops.gated_attention(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], **mask)
            torch.testing.assert_close(o[:, a:b], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "mask",
    [dict(causal=True), dict(causal=False), dict(causal=True, window=5),
     dict(causal=True, window=2, cu_seqlens=torch.tensor([0, 9, 30, 41]))],
    ids=["causal", "full", "window", "varlen"],
)
def test_masked_path_in_many_chunks(monkeypatch, mask):
    """Small chunks: each chunk sees only its key span; results do not depend on the chunking."""
    monkeypatch.setattr(attn, "_CHUNK_BUDGET", 1)  # → the minimum chunk of 16 queries
    q, k, v, g = make(B=1, T=41, gate="head")
    a = attn._validate(q, k, v, g, scale=None, **{"window": None, "cu_seqlens": None, **mask})
    o = attn._apply_gate(attn._masked(a), g, q.dtype)
    assert rel_err(o, oracle(q, k, v, g, **mask)) < TOL[torch.float64]


@pytest.mark.parametrize("chunked", [False, True])
def test_gradcheck_masked_path(monkeypatch, chunked):
    if chunked:  # exercises the per-chunk checkpointing
        monkeypatch.setattr(attn, "_CHUNK_BUDGET", 1)
    q, k, v, g = make(B=1, T=12, Hq=2, Hkv=1, D=3, gate="elem")
    cu = torch.tensor([0, 5, 12])
    args = [x.requires_grad_() for x in (q, k, v, g)]
    fn = lambda q, k, v, g: ops.gated_attention(q, k, v, g, window=4, cu_seqlens=cu)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


def test_gradients_match_oracle():
    q, k, v, g = make(T=13, S=21, gate="head")
    args = [x.requires_grad_() for x in (q, k, v, g)]
    for mask in (dict(causal=True), dict(causal=True, window=5)):
        do = torch.randn(2, 13, 4, 8, dtype=torch.float64)
        got = torch.autograd.grad((ops.gated_attention(*args, **mask) * do).sum(), args)
        ref = torch.autograd.grad((oracle(*args, **mask) * do).sum(), args)
        for x, r in zip(got, ref):
            torch.testing.assert_close(x, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mask", [dict(causal=True), dict(causal=True, window=6)], ids=str)
def test_bf16(mask):
    q, k, v, g = make(T=33, dtype=torch.bfloat16, gate="elem")
    o = ops.gated_attention(q, k, v, g, **mask)
    assert o.dtype == torch.bfloat16
    assert rel_err(o, oracle(q, k, v, g, **mask)) < TOL[torch.bfloat16]


@pytest.mark.parametrize(
    "case",
    [(False, None, [0, 9, 10, 25]), (True, None, [0, 9, 9, 25]), (True, 6, None), (True, 3, [0, 9, 10, 25])],
    ids=["full-varlen", "causal-varlen", "window-end", "window-varlen"],
)
def test_flex_mask_on_cpu(monkeypatch, case):
    """The FlexAttention block mask, run through eager flex_attention on the CPU."""
    causal, window, cu = case
    cu = None if cu is None else torch.tensor(cu)
    B, S = (1, 25) if cu is not None else (2, 25)
    T = 25 if cu is not None else 9
    q, k, v, _ = make(B=B, T=T, S=S, Hq=4, Hkv=2, D=16, dtype=torch.float32)
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(attn, "_compiled_flex", lambda: flex_attention)
    a = attn._validate(q, k, v, None, causal=causal, window=window, scale=None, cu_seqlens=cu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = attn._flex(attn._simplify(a))
    assert o is not None
    assert rel_err(o, oracle(q, k, v, causal=causal, window=window, cu_seqlens=cu)) < 1e-5


@pytest.mark.parametrize(
    "mask",
    [dict(causal=False), dict(causal=True), dict(causal=True, window=4),
     dict(causal=True, window=3, cu_seqlens=torch.tensor([0, 6, 6, 17]))],
    ids=["full", "causal", "window", "varlen"],
)
def test_attention_weights(mask):
    q, k, v, _ = make(B=1, T=17, Hq=4, Hkv=2)
    w = attention_weights(q, k, **mask)
    ref = oracle_probs(q, k, **mask)
    assert w.shape == (1, 4, 17, 17) and w.dtype == torch.float64
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 17, dtype=torch.float64))
    assert bool((w[ref == 0] == 0).all())
    torch.testing.assert_close(w, ref, rtol=1e-10, atol=1e-12)
    # The weights are the ones gated_attention applies.
    o = torch.einsum("bhts,bshd->bthd", w, v.repeat_interleave(2, 2))
    torch.testing.assert_close(o, ops.gated_attention(q, k, v, **mask), rtol=1e-10, atol=1e-10)


def test_attention_weights_queries_at_end_fp32():
    q, k, _, _ = make(T=3, S=11, dtype=torch.float32)
    w = attention_weights(q, k, window=5)
    assert w.dtype == torch.float32 and w.shape == (2, 4, 3, 11)
    torch.testing.assert_close(w, oracle_probs(q, k, window=5).float(), rtol=1e-5, atol=1e-6)


def _bad_cases():
    q, k, v, g = make(B=2, T=6, Hq=4, Hkv=2, D=8, dtype=torch.float32, gate="head")
    return {
        "q not a tensor": (dict(q=q.tolist()), TypeError, "q must be a torch.Tensor"),
        "q integer": (dict(q=q.long()), TypeError, "q must be a floating-point"),
        "q rank": (dict(q=q[0]), ValueError, "q must have 4 dims"),
        "v rank": (dict(v=v[..., 0]), ValueError, "v must have 4 dims"),
        "head dim": (dict(k=k[..., :4], v=v[..., :4]), ValueError, "k must be"),
        "batch": (dict(k=k[:1], v=v[:1]), ValueError, "k must be"),
        "v vs k": (dict(v=v[:, :5]), ValueError, "v must be"),
        "groups": (dict(k=torch.randn(2, 6, 3, 8), v=torch.randn(2, 6, 3, 8)), ValueError, "multiple of"),
        "dtype": (dict(k=k.double()), TypeError, "share one dtype"),
        "device": (dict(k=k.to("meta")), ValueError, "one device"),
        "gate shape": (dict(gate=g[:, :, :2]), ValueError, "gate must be headwise"),
        "gate elem dim": (dict(gate=torch.randn(2, 6, 4, 3)), ValueError, r"\[2, 6, 4, 8\]"),
        "gate type": (dict(gate=g.long()), TypeError, "gate must be a floating-point"),
        "gate device": (dict(gate=g.to("meta")), ValueError, "gate is on meta"),
        "window 0": (dict(window=0), ValueError, "window must be >= 1"),
        "window float": (dict(window=2.0), TypeError, "window must be an int"),
        "window noncausal": (dict(window=2, causal=False), ValueError, "causal=True"),
        "causal S<T": (dict(k=k[:, :4], v=v[:, :4]), ValueError, "needs S >= T"),
        "causal type": (dict(causal=1), TypeError, "causal must be a bool"),
        "scale": (dict(scale=-1.0), ValueError, "scale must be positive"),
        "cu batch": (dict(cu_seqlens=torch.tensor([0, 6])), ValueError, "q has B=2"),
        "cu end": (dict(q=q[:1], k=k[:1], v=v[:1], gate=g[:1], cu_seqlens=torch.tensor([0, 5])),
                   ValueError, "end at T=6"),
        "cu float": (dict(q=q[:1], k=k[:1], v=v[:1], gate=g[:1], cu_seqlens=torch.tensor([0.0, 6.0])),
                     TypeError, "int32 or int64"),
        "cu T!=S": (dict(q=q[:1, :4], k=k[:1], v=v[:1], gate=g[:1, :4], cu_seqlens=torch.tensor([0, 4])),
                    ValueError, "as many keys as queries"),
    }, dict(q=q, k=k, v=v, gate=g)


@pytest.mark.parametrize("name", list(_bad_cases()[0]))
def test_bad_inputs(name):
    cases, good = _bad_cases()
    change, error, match = cases[name]
    kwargs = {**good, **change}
    with pytest.raises(error, match=match):
        ops.gated_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("gate"), **kwargs)


def test_attention_weights_bad_inputs():
    q, k, _, _ = make(dtype=torch.float32)
    with pytest.raises(ValueError, match="window must be >= 1"):
        attention_weights(q, k, window=0)
    with pytest.raises(ValueError, match="multiple of"):
        attention_weights(q[:, :, :3], k)


def test_cached_block_mask_is_reused_and_read_not_rebuilt_by_a_compiled_caller():
    """The window's block mask is built once per shape; a compiled function that looks it up gets
    its index tensors as graph inputs instead of tracing the O(T·S) mask construction."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from gatedelta.ops import attention as attn

    T, W = 256, 32
    mask = attn.cached_block_mask(T, T, causal=True, window=W, device="cpu")
    assert attn.cached_block_mask(T, T, causal=True, window=W, device="cpu") is mask
    other = attn.cached_block_mask(T, T, causal=True, window=2 * W, device="cpu")
    assert other is not mask
    dense = mask.to_dense()  # [1, 1, T/128, T/128] blocks that hold any visible key
    assert dense.shape[-1] == T // 128 and bool(dense.tril().eq(dense).all())
    assert isinstance(mask, flex.BlockMask)

    def lookup(x: torch.Tensor) -> torch.Tensor:
        m = attn.cached_block_mask(x.shape[0], x.shape[0], causal=True, window=W, device=x.device)
        return x + m.kv_num_blocks.sum()

    torch._dynamo.reset()
    explained = torch._dynamo.explain(lookup)(torch.zeros(T))
    assert explained.graph_break_count == 0
    assert explained.op_count <= 3  # a rebuilt mask traces ~70 ops (vmap over positions)
    torch._dynamo.reset()
    unseen = torch._dynamo.explain(lookup)(torch.zeros(T // 2))  # not cached: traced, still correct
    assert unseen.op_count > 10


def test_packed_block_mask_is_built_once_per_packing(monkeypatch):
    """Every attention layer of a packed forward asks for the same mask: built once per distinct
    ``cu_seqlens`` (by value), with the blocks that hold a visible key of the same sequence."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from gatedelta.ops import attention as attn

    builds = []
    real_build = attn._build_block_mask
    monkeypatch.setattr(attn, "_build_block_mask", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    monkeypatch.setattr(attn, "_PACKED_MASKS", {})
    T = 384
    cu = torch.tensor([0, 100, 300, 384])
    mask = attn.packed_block_mask(T, T, cu, causal=True, window=64)
    assert attn.packed_block_mask(T, T, cu.clone(), causal=True, window=64) is mask  # same values
    assert len(builds) == 1
    other = attn.packed_block_mask(T, T, torch.tensor([0, 200, 384]), causal=True, window=64)
    assert other is not mask and len(builds) == 2
    # blocks of 128 × 128 that hold at least one visible (query, key) pair
    pos = torch.arange(T)
    seq = torch.searchsorted(cu[1:], pos, right=True)
    q_pos, k_pos = pos[:, None], pos[None, :]
    visible = (k_pos <= q_pos) & (k_pos > q_pos - 64) & (seq[:, None] == seq[None, :])
    expected = visible.view(3, 128, 3, 128).any(3).any(1)
    assert torch.equal(mask.to_dense()[0, 0].bool(), expected)
