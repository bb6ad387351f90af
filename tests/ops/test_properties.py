"""Property-based: the chunked path equals the reference for random shapes and gate forms.

Hypothesis draws batch, length (1 and lengths that no chunk divides included), q/k heads, value
heads per group, head dims, each gate's form (none / per head / per channel, given with HV or H
heads), chunk and sub-chunk sizes, packing into varlen, initial state, and a share of extreme
log-decays (−inf, −50).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gatedelta.ops import chunked, reference, spec

from .helpers import log_decay, rel_err

FORMS = ("none", "head", "channel")


@st.composite
def problems(draw):
    varlen = draw(st.booleans())
    B = 1 if varlen else draw(st.integers(1, 2))
    T = draw(st.one_of(st.just(1), st.integers(2, 90)))
    H, G = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    K, V = draw(st.sampled_from([1, 3, 8, 16])), draw(st.sampled_from([1, 5, 8]))
    forms = {name: draw(st.sampled_from(FORMS)) for name in "gbw"}
    shared = draw(st.booleans())  # gates given with H heads, shared across each group
    cuts = sorted(draw(st.lists(st.integers(0, T), max_size=4))) if varlen else []
    return dict(
        B=B, T=T, H=H, G=G, K=K, V=V, forms=forms, shared=shared,
        cu=[0, *cuts, T] if varlen else None,
        chunk=draw(st.sampled_from([1, 4, 16, 64])), sub=draw(st.sampled_from([2, 8, 16])),
        init=draw(st.booleans()), extreme=draw(st.sampled_from([0.0, 0.05, 0.5])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _inputs(p):
    gen = torch.Generator().manual_seed(p["seed"])
    B, T, H, G, K, V = (p[n] for n in ("B", "T", "H", "G", "K", "V"))
    HV = H * G
    heads = H if p["shared"] else HV
    f64 = dict(dtype=torch.float64, generator=gen)
    q = torch.randn(B, T, H, K, **f64)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, **f64), dim=-1)
    v = torch.randn(B, T, HV, V, **f64)
    gates = {}
    for name, last in (("g", K), ("b", K), ("w", V)):
        form = p["forms"][name]
        if form == "none":
            continue
        shape = (B, T, heads) if form == "head" else (B, T, heads, last)
        if name == "g":
            x = log_decay(shape, torch.float64, gen)
            pick = torch.rand(shape, generator=gen)
            x = torch.where(pick < p["extreme"] / 2, float("-inf"), x)
            x = torch.where((pick >= p["extreme"] / 2) & (pick < p["extreme"]), -50.0, x)
        elif name == "b":
            x = 2.0 * torch.rand(shape, **f64)
        else:
            x = torch.randn(shape, **f64)
        gates[name] = x
    N = B if p["cu"] is None else len(p["cu"]) - 1
    s0 = torch.randn(N, HV, K, V, **f64) if p["init"] else None
    cu = None if p["cu"] is None else torch.tensor(p["cu"])
    return spec.validate(q, k, v, **gates, initial_state=s0, output_final_state=True, cu_seqlens=cu)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_chunked_equals_reference(p):
    r = _inputs(p)
    o, s = chunked.recurrence(r, chunk_size=p["chunk"], sub_chunk=p["sub"])
    o_ref, s_ref = reference.recurrence(r)
    assert o.shape == o_ref.shape and s.shape == s_ref.shape
    assert rel_err(o, o_ref) < 1e-9
    assert rel_err(s, s_ref) < 1e-9
