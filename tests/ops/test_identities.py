"""DESIGN §1 identities between the ops, on both exact backends (float64).

    gdn2(b = w = β·1) == kda;   kda(g constant over channels) == gdn;   gdn(g = 0) == delta_rule;
    erase 0 turns each delta op into its sibling: gdn2/kda -> gla, gdn -> ssd, delta_rule -> linear.
"""

from __future__ import annotations

import pytest
import torch

from gatedelta import ops

from .helpers import make_inputs, rel_err

BACKENDS = ["torch", "reference"]
TOL = 1e-12


def _pair(a, b):
    return rel_err(a[0], b[0]) < TOL and rel_err(a[1], b[1]) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdn2_with_tied_gates_is_kda(backend):
    (q, k, v, g, beta), s0 = make_inputs("kda", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    K, V = q.shape[-1], v.shape[-1]
    b = beta[..., None].expand(*beta.shape, K)
    w = beta[..., None].expand(*beta.shape, V)
    assert _pair(ops.gdn2(q, k, v, g, b, w, **kw), ops.kda(q, k, v, g, beta, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kda_with_channel_constant_decay_is_gdn(backend):
    (q, k, v, g, beta), s0 = make_inputs("gdn", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    g_c = g[..., None].expand(*g.shape, q.shape[-1]).contiguous()
    assert _pair(ops.kda(q, k, v, g_c, beta, **kw), ops.gdn(q, k, v, g, beta, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdn_without_decay_is_delta_rule(backend):
    (q, k, v, g, beta), s0 = make_inputs("gdn", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    zero = torch.zeros_like(g)
    assert _pair(ops.gdn(q, k, v, zero, beta, **kw), ops.delta_rule(q, k, v, beta, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdn2_without_erase_is_gla(backend):
    (q, k, v, g, b, w), s0 = make_inputs("gdn2", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    assert _pair(ops.gdn2(q, k, v, g, torch.zeros_like(b), w, **kw), ops.gla(q, k, v, g, w, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kda_without_erase_is_gla(backend):
    # kda ties erase and write to β; with the erase alone set to 0 it writes β·v like gla(w=β).
    (q, k, v, g, beta), s0 = make_inputs("kda", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    lhs = ops.recurrence(q, k, v, g, torch.zeros_like(beta), beta, **kw)
    assert _pair(lhs, ops.gla(q, k, v, g, beta, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdn_without_erase_is_ssd(backend):
    (q, k, v, g, beta), s0 = make_inputs("gdn", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    lhs = ops.recurrence(q, k, v, g, torch.zeros_like(beta), beta, **kw)
    assert _pair(lhs, ops.ssd(q, k, v, g, beta, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_rule_without_erase_is_linear_attention(backend):
    (q, k, v, beta), s0 = make_inputs("delta_rule", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    lhs = ops.recurrence(q, k, v, None, torch.zeros_like(beta), beta, **kw)
    assert _pair(lhs, ops.linear_attn(q, k, v * beta[..., None], **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ssd_without_write_gate_is_decayed_linear_attention(backend):
    # ssd(w = None) == ssd(w = 1), and with g = 0 it is plain linear attention.
    (q, k, v, g, w), s0 = make_inputs("ssd", T=40)
    kw = dict(initial_state=s0, output_final_state=True, backend=backend)
    assert _pair(ops.ssd(q, k, v, g, **kw), ops.ssd(q, k, v, g, torch.ones_like(w), **kw))
    assert _pair(ops.ssd(q, k, v, torch.zeros_like(g), **kw), ops.linear_attn(q, k, v, **kw))
