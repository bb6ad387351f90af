"""short_conv against a token-by-token loop in float64: state carry, decoding, varlen, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gatedelta import ops


def naive(x, weight, bias=None, activation="silu", initial_state=None):
    """``y_t = Σ_j weight[:, j] · x_{t−(W−1)+j} + bias`` with explicit history, one token at a time."""
    B, T, D = x.shape
    W = weight.shape[1]
    zeros = torch.zeros(B, D, dtype=torch.float64)
    history = [initial_state[:, :, j].double() if initial_state is not None else zeros for j in range(W - 1)]
    inputs = history + [x[:, t].double() for t in range(T)]  # index W−1+t is token t
    ys = []
    for t in range(T):
        y = sum(weight[:, j].double() * inputs[t + j] for j in range(W))
        if bias is not None:
            y = y + bias.double()
        ys.append(F.silu(y) if activation == "silu" else y)
    state = torch.stack(inputs[len(inputs) - (W - 1):], dim=2) if W > 1 else zeros[:, :, None][:, :, :0]
    y = torch.stack(ys, dim=1) if ys else torch.zeros(B, 0, D, dtype=torch.float64)
    return y, state


def make(B=2, T=13, D=6, W=4, dtype=torch.float64, N=None):
    x = torch.randn(B, T, D, dtype=dtype)
    weight = torch.randn(D, W, dtype=dtype)
    bias = torch.randn(D, dtype=dtype)
    state = torch.randn(B if N is None else N, D, W - 1, dtype=dtype)
    return x, weight, bias, state


@pytest.mark.parametrize("W", [1, 2, 4, 5])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [1, 13])  # T = 1: the decode step's product-and-sum path
def test_matches_loop(W, activation, with_state, T):
    x, weight, bias, state = make(T=T, W=W)
    state = state if with_state else None
    y, s = ops.short_conv(x, weight, bias, activation=activation, initial_state=state,
                          output_final_state=True)
    y_ref, s_ref = naive(x, weight, bias, activation, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)


def test_no_bias_fp32_and_conv1d_weight_layout():
    x, weight, _, state = make(dtype=torch.float32)
    y, s = ops.short_conv(x, weight.unsqueeze(1), initial_state=state, output_final_state=True)
    y_ref, s_ref = naive(x, weight, None, "silu", state)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref.float())
    assert ops.short_conv(x, weight)[1] is None


@pytest.mark.parametrize("split", [1, 2, 7, 12])
def test_state_carry(split):
    """f(x₁‖x₂) == f(x₂, initial_state=f(x₁).state), also when x₁ is shorter than W − 1."""
    x, weight, bias, state = make(T=13, W=4)
    y, s = ops.short_conv(x, weight, bias, initial_state=state, output_final_state=True)
    y1, s1 = ops.short_conv(x[:, :split], weight, bias, initial_state=state, output_final_state=True)
    y2, s2 = ops.short_conv(x[:, split:], weight, bias, initial_state=s1, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, s, rtol=0, atol=0)


def test_token_by_token_decode_equals_full():
    x, weight, bias, _ = make(T=11, W=4)
    y, s = ops.short_conv(x, weight, bias, output_final_state=True)
    y_pre, state = ops.short_conv(x[:, :3], weight, bias, output_final_state=True)
    steps = [y_pre]
    for t in range(3, 11):
        y_t, state = ops.short_conv(x[:, t : t + 1], weight, bias, initial_state=state,
                                    output_final_state=True)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, s, rtol=0, atol=0)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("W", [1, 4])
def test_varlen_equals_per_sequence(W, with_state):
    # an empty sequence, one shorter than W − 1, and longer ones
    cu = torch.tensor([0, 5, 5, 7, 16, 17], dtype=torch.int32)
    N = cu.numel() - 1
    x, weight, bias, state = make(B=1, T=17, W=W, N=N)
    state = state if with_state else None
    y, s = ops.short_conv(x, weight, bias, initial_state=state, output_final_state=True, cu_seqlens=cu)
    for n, (a, b) in enumerate(zip(cu.tolist()[:-1], cu.tolist()[1:])):
        init = None if state is None else state[n : n + 1]
        y_ref, s_ref = naive(x[:, a:b], weight, bias, "silu", init)
        torch.testing.assert_close(y[:, a:b], y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s[n : n + 1], s_ref, rtol=0, atol=0)


def test_empty_input_returns_state():
    x, weight, bias, state = make(T=0)
    y, s = ops.short_conv(x, weight, bias, initial_state=state, output_final_state=True)
    assert y.shape == (2, 0, 6)
    torch.testing.assert_close(s, state)


@pytest.mark.parametrize("T", [1, 29])
def test_bf16_close_to_fp64(T):
    x, weight, bias, state = make(T=T, D=16, dtype=torch.bfloat16)
    y, _ = ops.short_conv(x, weight, bias, initial_state=state)
    y_ref, _ = naive(x, weight, bias, "silu", state)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - y_ref).norm() / y_ref.norm()).item() < 5e-3


@pytest.mark.parametrize("varlen, T", [(False, 6), (True, 6), (False, 1)])
def test_gradcheck(varlen, T):
    cu = torch.tensor([0, 2, 6]) if varlen else None
    x, weight, bias, state = make(B=1 if varlen else 2, T=T, D=3, W=3, N=2)
    args = [t.requires_grad_() for t in (x, weight, bias, state)]

    def fn(x, weight, bias, state):
        y, s = ops.short_conv(x, weight, bias, initial_state=state, output_final_state=True, cu_seqlens=cu)
        return y, s

    assert torch.autograd.gradcheck(fn, args)


def _bad_cases():
    x, weight, bias, state = make(B=2, T=5, D=6, W=4, dtype=torch.float32)
    return {
        "x type": (dict(x=x.tolist()), TypeError, "x must be a torch.Tensor"),
        "x int": (dict(x=x.long()), TypeError, "x must be a floating-point"),
        "x rank": (dict(x=x[0]), ValueError, "x must have 3 dims"),
        "weight D": (dict(weight=weight[:5]), ValueError, r"weight must be \[D, W\] = \[6, W\]"),
        "weight rank": (dict(weight=weight[:, :, None]), ValueError, "weight must be"),
        "weight W=0": (dict(weight=weight[:, :0], initial_state=None), ValueError, "W >= 1"),
        "weight dtype": (dict(weight=weight.double()), TypeError, "weight must have x's dtype"),
        "weight device": (dict(weight=weight.to("meta")), ValueError, "weight is on meta"),
        "bias shape": (dict(bias=bias[:3]), ValueError, r"bias must be \[D\] = \[6\]"),
        "bias dtype": (dict(bias=bias.half()), TypeError, "bias must have x's dtype"),
        "activation": (dict(activation="relu"), ValueError, "activation must be one of"),
        "state shape": (dict(initial_state=state[:, :, :2]), ValueError, r"\[2, 6, 3\]"),
        "state device": (dict(initial_state=state.to("meta")), ValueError, "initial_state is on meta"),
        "state int": (dict(initial_state=state.long()), TypeError, "initial_state must be a floating"),
        "final flag": (dict(output_final_state=1), TypeError, "output_final_state must be a bool"),
        "cu batch": (dict(cu_seqlens=torch.tensor([0, 5]), initial_state=None), ValueError, "x has B=2"),
        "cu end": (dict(x=x[:1], cu_seqlens=torch.tensor([0, 4]), initial_state=None), ValueError, "T=5"),
        "cu order": (dict(x=x[:1], cu_seqlens=torch.tensor([0, 4, 3, 5]), initial_state=None), ValueError,
                     "non-decreasing"),
        "cu state rows": (dict(x=x[:1], cu_seqlens=torch.tensor([0, 1, 2, 5])), ValueError, "N = 3 packed"),
    }, dict(x=x, weight=weight, bias=bias, initial_state=state)


@pytest.mark.parametrize("name", list(_bad_cases()[0]))
def test_bad_inputs(name):
    cases, good = _bad_cases()
    change, error, match = cases[name]
    kwargs = {**good, **change}
    with pytest.raises(error, match=match):
        ops.short_conv(kwargs.pop("x"), kwargs.pop("weight"), kwargs.pop("bias"), **kwargs)
