"""Bad input raises ValueError/TypeError whose message names the argument (DESIGN §3)."""

from __future__ import annotations

import pytest
import torch

from gatedelta import ops

B, T, H, HV, K, V = 2, 8, 2, 4, 8, 4


def _base():
    """Valid gdn2 inputs: q, k [B, T, H, K], v [B, T, HV, V], g/b [B, T, HV, K], w [B, T, HV, V]."""
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T, H, K)
    v = torch.randn(B, T, HV, V)
    g = -torch.rand(B, T, HV, K)
    b = torch.rand(B, T, HV, K)
    w = torch.rand(B, T, HV, V)
    return dict(q=q, k=k, v=v, g=g, b=b, w=w)


def _gdn2(**changes):
    x = _base()
    kw = {n: changes.pop(n) for n in list(changes) if n not in x}
    x.update(changes)
    return ops.gdn2(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], backend="torch", **kw)


def _gdn(**kw):
    x = _base()
    beta = kw.pop("beta", x["b"][..., 0])
    g = kw.pop("g", x["g"][..., 0])
    return ops.gdn(x["q"], x["k"], x["v"], g, beta, backend="torch", **kw)


def _packed(**kw):
    x = {n: t[:1] for n, t in _base().items()}
    return ops.gdn2(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], backend="torch", **kw)


CASES = [
    # (id, call, error, the argument the message must name)
    ("q_not_tensor", lambda: _gdn2(q=[[1.0]]), TypeError, r"\bq\b"),
    ("q_rank", lambda: _gdn2(q=torch.randn(B, T, H * K)), ValueError, r"\bq\b"),
    ("v_rank", lambda: _gdn2(v=torch.randn(B, T, HV, V, 1)), ValueError, r"\bv\b"),
    ("qk_shape", lambda: _gdn2(k=torch.randn(B, T, H, K + 1)), ValueError, r"\bk\b"),
    ("v_batch", lambda: _gdn2(v=torch.randn(B + 1, T, HV, V)), ValueError, r"\bv\b"),
    ("v_length", lambda: _gdn2(v=torch.randn(B, T - 1, HV, V)), ValueError, r"\bv\b"),
    ("hv_not_multiple", lambda: _gdn2(v=torch.randn(B, T, 3, V)), ValueError, r"HV=3"),
    ("head_dim_too_big", lambda: _gdn2(q=torch.randn(B, T, H, 257), k=torch.randn(B, T, H, 257)),
     ValueError, r"K=257"),
    ("q_integer", lambda: _gdn2(q=torch.ones(B, T, H, K, dtype=torch.int32)), TypeError, r"\bq\b"),
    ("qkv_dtypes", lambda: _gdn2(v=torch.randn(B, T, HV, V, dtype=torch.float64)), TypeError, r"q, k, v"),
    ("g_integer", lambda: _gdn2(g=-torch.ones(B, T, HV, K, dtype=torch.int64)), TypeError, r"\bg\b"),
    ("g_bfloat16", lambda: _gdn2(g=-torch.rand(B, T, HV, K).bfloat16()), TypeError, r"\bg\b"),
    ("g_positive", lambda: _gdn2(g=torch.rand(B, T, HV, K) + 0.1), ValueError, r"\bg\b"),
    ("g_nan", lambda: _gdn2(g=torch.full((B, T, HV, K), float("nan"))), ValueError, r"\bg\b"),
    ("g_wrong_heads", lambda: _gdn2(g=-torch.rand(B, T, 3, K)), ValueError, r"\bg\b"),
    ("g_wrong_length", lambda: _gdn2(g=-torch.rand(B, T + 1, HV, K)), ValueError, r"\bg\b"),
    ("b_wrong_channels", lambda: _gdn2(b=torch.rand(B, T, HV, K + 1)), ValueError, r"\bb\b"),
    ("w_wrong_channels", lambda: _gdn2(w=torch.rand(B, T, HV, V + 1)), ValueError, r"\bw\b"),
    ("w_rank", lambda: _gdn2(w=torch.rand(B, T)), ValueError, r"\bw\b"),
    ("gdn_beta_per_channel", lambda: _gdn(beta=torch.rand(B, T, HV, K)), ValueError, r"\bbeta\b"),
    ("gdn_g_per_channel", lambda: _gdn(g=-torch.rand(B, T, HV, K)), ValueError, r"\bg\b"),
    ("gla_g_per_head", lambda: ops.gla(*(_base()[n] for n in "qkv"), -torch.rand(B, T, HV)),
     ValueError, r"\bg\b"),
    ("g_on_other_device", lambda: _gdn2(g=torch.empty(B, T, HV, K, device="meta")), ValueError, r"\bg\b"),
    ("state_on_other_device", lambda: _gdn2(initial_state=torch.empty(B, HV, K, V, device="meta")),
     ValueError, r"initial_state"),
    ("state_shape", lambda: _gdn2(initial_state=torch.zeros(B, HV, V, K)), ValueError, r"initial_state"),
    ("state_integer", lambda: _gdn2(initial_state=torch.zeros(B, HV, K, V, dtype=torch.int32)),
     TypeError, r"initial_state"),
    ("cu_seqlens_batch", lambda: _gdn2(cu_seqlens=torch.tensor([0, 3, T])), ValueError, r"cu_seqlens"),
    ("cu_seqlens_unsorted", lambda: _packed(cu_seqlens=torch.tensor([0, 5, 3, T])), ValueError,
     r"cu_seqlens"),
    ("cu_seqlens_end", lambda: _packed(cu_seqlens=torch.tensor([0, 3, T - 1])), ValueError, r"cu_seqlens"),
    ("cu_seqlens_start", lambda: _packed(cu_seqlens=torch.tensor([1, 3, T])), ValueError, r"cu_seqlens"),
    ("cu_seqlens_float", lambda: _packed(cu_seqlens=torch.tensor([0.0, 3.0, T])), TypeError, r"cu_seqlens"),
    ("cu_seqlens_2d", lambda: _packed(cu_seqlens=torch.tensor([[0, T]])), ValueError, r"cu_seqlens"),
    ("state_vs_packed_sequences", lambda: _packed(cu_seqlens=torch.tensor([0, 3, T]),
                                                  initial_state=torch.zeros(1, HV, K, V)),
     ValueError, r"initial_state"),
    ("backend_name", lambda: ops.gdn2(*_base().values(), backend="cuda"), ValueError, r"backend"),
    ("triton_on_cpu", lambda: ops.gdn2(*_base().values(), backend="triton"), ValueError, r"backend"),
    ("scale_negative", lambda: _gdn2(scale=-1.0), ValueError, r"scale"),
    ("scale_type", lambda: _gdn2(scale="0.1"), TypeError, r"scale"),
    ("scale_bool", lambda: _gdn2(scale=True), TypeError, r"scale"),
    ("output_final_state_type", lambda: _gdn2(output_final_state=1), TypeError, r"output_final_state"),
    ("qk_l2norm_type", lambda: _gdn2(qk_l2norm="yes"), TypeError, r"qk_l2norm"),
]


@pytest.mark.parametrize("call,error,name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, error, name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("GATEDELTA_BACKEND", raising=False)
    with pytest.raises(error, match=name):
        call()


def test_bad_backend_from_environment(monkeypatch):
    monkeypatch.setenv("GATEDELTA_BACKEND", "fast")
    with pytest.raises(ValueError, match="backend"):
        ops.gdn2(*_base().values())


def test_many_distinct_cases():
    assert len({c[0] for c in CASES}) >= 15
