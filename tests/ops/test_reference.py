"""The reference recurrence (the spec) against independent formulations.

* ``_naive``: FLA's naive-recurrent style (decay, then ``v' = z − Sᵀe``, ``S += k v'ᵀ``), heads
  repeated explicitly and looped one by one — written without reference.py's einsums.
* ``_scalar``: plain Python floats for a tiny case, no torch at all in the loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gatedelta import ops

from .helpers import OP_NAMES, gate_kwargs, make_inputs, rel_err


def _naive(q, k, v, g=None, b=None, w=None, *, scale=None, s0=None):
    """FLA-style token loop. q, k: [B, T, H, K]; v: [B, T, HV, V]; gates with HV heads."""
    B, T, H, K = q.shape
    HV, V = v.shape[2:]
    q = q.repeat_interleave(HV // H, 2) * (K**-0.5 if scale is None else scale)
    k = k.repeat_interleave(HV // H, 2)
    o = torch.empty(B, T, HV, V, dtype=torch.float64)
    S_out = torch.empty(B, HV, K, V, dtype=torch.float64)
    for bi in range(B):
        for h in range(HV):
            S = torch.zeros(K, V, dtype=torch.float64) if s0 is None else s0[bi, h].clone()
            for t in range(T):
                if g is not None:
                    S = S * torch.exp(g[bi, t, h]).reshape(-1, 1)  # [K] or scalar, over rows
                kt = k[bi, t, h]
                z = v[bi, t, h] * (1.0 if w is None else w[bi, t, h])
                e = torch.zeros(K, dtype=torch.float64) if b is None else kt * b[bi, t, h]
                S = S + torch.outer(kt, z - S.T @ e)
                o[bi, t, h] = S.T @ q[bi, t, h]
            S_out[bi, h] = S
    return o, S_out


@pytest.mark.parametrize("op", OP_NAMES)
def test_reference_matches_naive(op):
    args, s0 = make_inputs(op, B=2, T=13, H=2, G=2, K=4, V=3)
    q, k, v, *gates = args
    o, s = ops.__dict__[op](*args, initial_state=s0, output_final_state=True, backend="reference")
    # per-head gates get a trailing axis so they broadcast like per-channel ones
    kw = {n: x if x.ndim == 4 else x[..., None] for n, x in gate_kwargs(op, tuple(gates)).items()}
    o_n, s_n = _naive(q, k, v, **kw, s0=s0)
    assert rel_err(o, o_n) < 1e-13 and rel_err(s, s_n) < 1e-13


def _scalar(q, k, v, g, b, w, scale):
    """One head, per-channel gates, Python floats: lists of T rows."""
    K, V = len(k[0]), len(v[0])
    S = [[0.0] * V for _ in range(K)]
    out = []
    for t in range(len(q)):
        S = [[S[i][j] * math.exp(g[t][i]) for j in range(V)] for i in range(K)]
        # erase: S -= k (eᵀ S) with e = b ⊙ k
        eS = [sum(b[t][i] * k[t][i] * S[i][j] for i in range(K)) for j in range(V)]
        S = [[S[i][j] - k[t][i] * eS[j] for j in range(V)] for i in range(K)]
        S = [[S[i][j] + k[t][i] * w[t][j] * v[t][j] for j in range(V)] for i in range(K)]
        out.append([sum(S[i][j] * q[t][i] * scale for i in range(K)) for j in range(V)])
    return out


def test_reference_matches_scalar_python():
    (q, k, v, g, b, w), _ = make_inputs("gdn2", B=1, T=5, H=1, G=1, K=3, V=2)
    o, _ = ops.gdn2(q, k, v, g, b, w, scale=0.9, backend="reference")
    rows = lambda x: x[0, :, 0].tolist()
    expect = torch.tensor(_scalar(*(rows(x) for x in (q, k, v, g, b, w)), 0.9), dtype=torch.float64)
    assert rel_err(o[0, :, 0], expect) < 1e-13


def test_output_reads_state_after_update():
    # One token from S0: o = ((I − k eᵀ) D S0 + k zᵀ)ᵀ (scale q).
    (q, k, v, g, b, w), s0 = make_inputs("gdn2", B=1, T=1, H=1, G=1, K=4, V=3)
    o, s = ops.gdn2(q, k, v, g, b, w, initial_state=s0, output_final_state=True, backend="reference")
    kt, e, z = k[0, 0, 0], b[0, 0, 0] * k[0, 0, 0], w[0, 0, 0] * v[0, 0, 0]
    S = (torch.eye(4, dtype=torch.float64) - torch.outer(kt, e)) @ torch.diag(g[0, 0, 0].exp()) @ s0[0, 0]
    S = S + torch.outer(kt, z)
    assert rel_err(s[0, 0], S) < 1e-14
    assert rel_err(o[0, 0, 0], S.T @ (q[0, 0, 0] * 4**-0.5)) < 1e-14


@pytest.mark.parametrize(
    "dtype,state_dtype",
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32),
     (torch.float16, torch.float32)],
)
def test_dtypes(dtype, state_dtype):
    (q, k, v, g, beta), _ = make_inputs("gdn", B=1, T=6, H=1, G=2, K=4, V=4, dtype=torch.float64)
    cast = [x.to(dtype) for x in (q, k, v, beta)]
    g = g.to(torch.float64 if dtype == torch.float64 else torch.float32)
    o, s = ops.gdn(cast[0], cast[1], cast[2], g, cast[3], output_final_state=True, backend="reference")
    assert o.dtype == dtype and s.dtype == state_dtype and o.shape == v.shape
    ref, _ = ops.gdn(*(x.to(dtype).double() for x in (q, k, v)), g.double(), cast[3].double(),
                     backend="reference")
    assert rel_err(o, ref) < (1e-12 if dtype == torch.float64 else 1e-2)


def test_default_scale_and_qk_l2norm():
    (q, k, v, g, beta), _ = make_inputs("gdn", T=9, K=16)
    base, _ = ops.gdn(q, k, v, g, beta, backend="reference")
    assert rel_err(base, ops.gdn(q, k, v, g, beta, scale=16**-0.5, backend="reference")[0]) < 1e-15
    qn, kn = F.normalize(q, dim=-1), F.normalize(3.0 * k, dim=-1)
    a, _ = ops.gdn(q, 3.0 * k, v, g, beta, qk_l2norm=True, backend="reference")
    b_, _ = ops.gdn(qn, kn, v, g, beta, backend="reference")
    assert rel_err(a, b_) < 1e-6  # l2norm adds eps = 1e-6 under the root


def test_hard_reset_forgets_the_past():
    # g = −inf at token t: outputs from t on do not depend on anything before t (incl. S0).
    (q, k, v, g, b, w), s0 = make_inputs("gdn2", B=1, T=12, H=1, G=1, K=4, V=3)
    g = g.clone()
    g[:, 5] = float("-inf")
    o1, _ = ops.gdn2(q, k, v, g, b, w, initial_state=s0, backend="reference")
    v2, k2 = v.clone(), k.clone()
    v2[:, :5] = torch.randn_like(v2[:, :5])
    k2[:, :5] = torch.randn_like(k2[:, :5])
    o2, _ = ops.gdn2(q, k2, v2, g, b, w, initial_state=2 * s0, backend="reference")
    assert torch.equal(o1[:, 5:], o2[:, 5:])
    assert not torch.equal(o1[:, :5], o2[:, :5])


def test_varlen_is_per_sequence():
    (q, k, v, g, beta), _ = make_inputs("kda", B=1, T=10, K=4, V=4)
    cu = torch.tensor([0, 3, 10])
    o, s = ops.kda(q, k, v, g, beta, cu_seqlens=cu, output_final_state=True, backend="reference")
    for n in range(2):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        o_n, s_n = ops.kda(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], output_final_state=True,
                           backend="reference")
        assert torch.equal(o[:, sl], o_n) and torch.equal(s[n], s_n[0])
