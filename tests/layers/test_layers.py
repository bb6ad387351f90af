"""Layer-level checks: shapes, gradients, gate ranges, init, padding and decoding state."""

from __future__ import annotations

import math

import pytest
import torch

from gatedelta.layers import (
    MLP,
    DeltaNet,
    GatedAttention,
    GatedDeltaNet,
    GatedDeltaNet2,
    GatedLinearAttention,
    GatedRMSNorm,
    KimiDeltaAttention,
    KVState,
    Mamba2,
    RecurrentState,
    RMSNorm,
)

DELTA = [GatedDeltaNet2, KimiDeltaAttention, GatedDeltaNet, DeltaNet, GatedLinearAttention]
HIDDEN = 24


def make(cls, **kw):
    torch.manual_seed(0)
    if cls is Mamba2:
        return Mamba2(hidden_size=HIDDEN, num_heads=4, head_dim=6, state_size=8, n_groups=2, **kw)
    # grouped value heads (HV = 2H) and head_dim not a power of two
    return cls(hidden_size=HIDDEN, num_heads=2, head_dim=6, num_v_heads=4, **kw)


@pytest.mark.parametrize("cls", DELTA + [Mamba2])
def test_recurrent_shapes_and_gradients(cls):
    layer = make(cls, backend="reference")
    x = torch.randn(2, 5, HIDDEN, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # Every parameter but the low-rank gate bias (its gradient is real but tiny) moves.
        if "bias" not in name:
            assert p.grad.abs().sum() > 0, f"{cls.__name__}.{name} gets no gradient"


@pytest.mark.parametrize("cls", DELTA + [Mamba2])
def test_decode_state_matches_full_forward(cls):
    layer = make(cls, backend="reference")
    x = torch.randn(2, 9, HIDDEN)
    full = layer(x)
    state = RecurrentState()
    pieces = [layer(x[:, :4], cache=state)] + [layer(x[:, t:t + 1], cache=state) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert state.recurrent_state.dtype == torch.float32


@pytest.mark.parametrize("cls", DELTA + [Mamba2])
def test_left_padding_does_not_touch_the_state(cls):
    layer = make(cls, backend="reference")
    x = torch.randn(1, 6, HIDDEN)
    junk = 100 * torch.randn(1, 3, HIDDEN)  # large, so any leak shows
    mask = torch.tensor([[False] * 3 + [True] * 6])
    s_pad, s_ref = RecurrentState(), RecurrentState()
    y_pad = layer(torch.cat([junk, x], 1), token_mask=mask, cache=s_pad)
    y_ref = layer(x, cache=s_ref)
    torch.testing.assert_close(y_pad[:, 3:], y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_pad.recurrent_state, s_ref.recurrent_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", DELTA + [Mamba2])
def test_packed_equals_separate(cls):
    layer = make(cls, backend="reference")
    a, b = torch.randn(1, 4, HIDDEN), torch.randn(1, 7, HIDDEN)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    packed = layer(torch.cat([a, b], 1), cu_seqlens=cu)
    torch.testing.assert_close(packed, torch.cat([layer(a), layer(b)], 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("neg_eigval, high", [(False, 1.0), (True, 2.0)])
def test_gate_ranges(neg_eigval, high):
    x = 5 * torch.randn(2, 7, HIDDEN)  # large inputs push the gates to their limits
    gates = make(GatedDeltaNet2, neg_eigval=neg_eigval).gates(x)
    assert gates["g"].dtype == torch.float32 and (gates["g"] <= 0).all()
    assert gates["g"].shape == gates["b"].shape == (2, 7, 2, 6) and gates["w"].shape == (2, 7, 4, 6)
    assert (gates["b"] >= 0).all() and (gates["b"] <= high).all() and gates["b"].max() > 0.9 * high / 2
    assert (gates["w"] >= 0).all() and (gates["w"] <= 1).all()
    for cls in (KimiDeltaAttention, GatedDeltaNet, DeltaNet):
        beta = make(cls, neg_eigval=neg_eigval).gates(x)["beta"]
        assert beta.shape == (2, 7, 4) and (beta >= 0).all() and (beta <= high).all()
    assert make(GatedDeltaNet).gates(x)["g"].shape == (2, 7, 4)
    assert (make(GatedLinearAttention).gates(x)["g"] <= 0).all()


@pytest.mark.parametrize("cls", [GatedDeltaNet2, KimiDeltaAttention, GatedDeltaNet, Mamba2])
def test_decay_init_and_no_weight_decay_tags(cls):
    layer = make(cls)
    A = layer.A_log.exp()
    assert (A >= 1).all() and (A <= 16).all()
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert (dt >= 1e-4 - 1e-7).all() and (dt <= 0.1 + 1e-6).all()
    # log-uniform over [1e-3, 0.1]: the median sits near 1e-2
    assert 10 ** -2.8 < dt.median() < 10 ** -1.2
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay
    if cls is Mamba2:
        assert layer.D._no_weight_decay
    assert all(m.weight._no_weight_decay for m in layer.modules() if isinstance(m, (RMSNorm, GatedRMSNorm)))


@pytest.mark.parametrize("gate", ["elementwise", "headwise", None])
@pytest.mark.parametrize("window", [None, 3])
def test_attention_decode_and_window_cache(gate, window):
    torch.manual_seed(0)
    attn = GatedAttention(
        hidden_size=HIDDEN, num_heads=4, num_kv_heads=2, head_dim=6, gate=gate, window=window
    )
    if gate is not None:
        assert attn.in_widths["gate"] == (24 if gate == "elementwise" else 4)
    x = torch.randn(2, 9, HIDDEN, requires_grad=True)
    pos = torch.arange(9)[None].expand(2, 9)
    full, probs = attn(x, position_ids=pos, output_attentions=True)
    assert probs.shape == (2, 4, 9, 9)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 9))
    full.sum().backward()
    assert torch.isfinite(x.grad).all()
    state = KVState(window=window)
    pieces = []
    for t0, t1 in [(0, 4), (4, 5), (5, 6), (6, 9)]:
        y, _ = attn(x[:, t0:t1], position_ids=pos[:, t0:t1], cache=state)
        pieces.append(y)
        if window is not None:
            assert state.key.shape[1] <= window
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_attention_left_padding():
    torch.manual_seed(0)
    attn = GatedAttention(hidden_size=HIDDEN, num_heads=4, num_kv_heads=1, head_dim=6, window=4)
    x = torch.randn(1, 6, HIDDEN)
    padded = torch.cat([100 * torch.randn(1, 3, HIDDEN), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    pos_pad = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4, 5]])
    y_pad, p_pad = attn(padded, position_ids=pos_pad, token_mask=mask, output_attentions=True)
    y_ref, p_ref = attn(x, position_ids=torch.arange(6)[None], output_attentions=True)
    torch.testing.assert_close(y_pad[:, 3:], y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_pad[:, :, 3:, 3:], p_ref, atol=1e-6, rtol=1e-5)
    assert (p_pad[:, :, :, :3] == 0).all()


def test_mlp_and_norms():
    x = torch.randn(2, 3, HIDDEN, requires_grad=True)
    assert MLP(hidden_size=HIDDEN, intermediate_size=40)(x).shape == x.shape
    y = RMSNorm(HIDDEN)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-4, rtol=1e-4)
    z = torch.randn(2, 3, HIDDEN)
    gated = GatedRMSNorm(HIDDEN, activation="sigmoid")(x, z)
    torch.testing.assert_close(gated, y * torch.sigmoid(z))
    with pytest.raises(ValueError, match="activation"):
        GatedRMSNorm(HIDDEN, activation="relu")


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="num_v_heads"):
        GatedDeltaNet2(hidden_size=HIDDEN, num_heads=2, head_dim=6, num_v_heads=3)
    with pytest.raises(ValueError, match="gate must be one of"):
        GatedAttention(hidden_size=HIDDEN, num_heads=4, head_dim=6, gate="everywhere")
    with pytest.raises(ValueError, match="num_kv_heads"):
        GatedAttention(hidden_size=HIDDEN, num_heads=4, head_dim=6, num_kv_heads=3)
    assert math.isfinite(make(Mamba2).A_log.sum().item())


def test_sliding_window_cache_survives_buffer_compaction():
    # 150 single-token steps with window 5: the window's view reaches the buffer's end (64 spare
    # slots) twice and is copied to a fresh buffer; decoding must still match the full forward.
    torch.manual_seed(0)
    attn = GatedAttention(hidden_size=HIDDEN, num_heads=2, num_kv_heads=1, head_dim=6, window=5)
    x = torch.randn(2, 150, HIDDEN)
    pos = torch.arange(150)[None].expand(2, 150)
    with torch.no_grad():
        full, _ = attn(x, position_ids=pos)
        state = KVState(window=5)
        steps = [attn(x[:, :7], position_ids=pos[:, :7], cache=state)[0]]
        for t in range(7, 150):
            steps.append(attn(x[:, t:t + 1], position_ids=pos[:, t:t + 1], cache=state)[0])
            assert state.key.shape[1] == 5
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


# The separate projections each layer had before they were fused into `in_proj`, in row order.
LEGACY_SLICES = {
    GatedDeltaNet2: ["qkv_proj", "f_proj.0", "b_proj", "w_proj", "out_gate.0"],
    KimiDeltaAttention: ["qkv_proj", "f_proj.0", "beta_proj", "out_gate.0"],
    GatedDeltaNet: ["qkv_proj", "a_proj", "beta_proj", "out_gate"],
    DeltaNet: ["qkv_proj", "beta_proj", "out_gate"],
    GatedLinearAttention: ["qkv_proj", "f_proj.0", "out_gate"],
    GatedAttention: ["q_proj", "k_proj", "v_proj", "gate_proj"],
}
LEGACY_RENAMES = {"f_up_proj.": "f_proj.1.", "out_gate_up_proj.": "out_gate.1."}


def legacy_state_dict(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``layer``'s weights in the layout written before the input projections were fused."""
    state = {}
    for key, value in layer.state_dict().items():
        if key == "in_proj.weight":
            rows = value.split(list(layer.in_widths.values()), dim=0)
            state.update({f"{name}.weight": w.clone() for name, w in zip(LEGACY_SLICES[type(layer)], rows)})
            continue
        for new, old in LEGACY_RENAMES.items():
            key = old + key[len(new):] if key.startswith(new) else key
        state[key] = value.clone()
    return state


@pytest.mark.parametrize("cls", DELTA + [GatedAttention])
def test_fused_projections_load_the_old_layout(cls):
    if cls is GatedAttention:
        make_layer = lambda: GatedAttention(hidden_size=HIDDEN, num_heads=4, num_kv_heads=2, head_dim=6)  # noqa: E731
    else:
        make_layer = lambda: make(cls, backend="reference")  # noqa: E731
    layer = make_layer()
    old = legacy_state_dict(layer)
    assert "in_proj.weight" not in old and len(old) > len(layer.state_dict())
    torch.manual_seed(1)  # different weights, overwritten by the load
    fresh = make_layer()
    fresh.load_state_dict(old, strict=True)
    for key, value in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.randn(2, 5, HIDDEN)
    if cls is GatedAttention:
        pos = torch.arange(5)[None]
        assert torch.equal(fresh(x, position_ids=pos)[0], layer(x, position_ids=pos)[0])
    else:
        assert torch.equal(fresh(x), layer(x))
    # the new layout loads untouched
    fresh.load_state_dict(layer.state_dict(), strict=True)


@pytest.mark.parametrize("cls", [GatedDeltaNet2, GatedDeltaNet, GatedLinearAttention])
def test_fused_projection_slices_keep_their_init_and_weight_decay(cls):
    layer = make(cls)
    # nn.Linear's default init depends on fan_in only, the same hidden_size for every slice
    bound = 1 / math.sqrt(HIDDEN)
    assert layer.in_proj.weight.abs().max() <= bound
    assert list(layer.in_widths)[0] == "qkv" and list(layer.in_widths)[-1] == "out_gate"
    assert layer.in_proj.out_features == sum(layer.in_widths.values())
    assert not getattr(layer.in_proj.weight, "_no_weight_decay", False)
