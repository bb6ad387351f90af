"""Attention-sink share and massive-activation measurements: exact on hand-built inputs, and on
tiny models trained briefly with and without the G1 output gate."""

from __future__ import annotations

import math

import pytest
import torch

from gatedelta.data.tasks import make_task
from gatedelta.demo import uniform_sink_share
from gatedelta.evaluate.diagnostics import diagnose, max_activation, sink_share


def _causal_uniform(T: int) -> torch.Tensor:
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)


def test_sink_share_hand_built_pattern() -> None:
    T = 4
    head0 = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                          [0.5, 0.5, 0.0, 0.0],
                          [0.2, 0.4, 0.4, 0.0],
                          [0.1, 0.3, 0.3, 0.3]])
    head1 = _causal_uniform(T)                              # 1/(t+1) on token 0
    head2 = torch.zeros(T, T)
    head2[:, 0] = 1.0                                       # a perfect sink
    attn = torch.stack([head0, head1, head2]).unsqueeze(0).repeat(2, 1, 1, 1)   # (B=2, H=3, T, T)
    got = sink_share(attn)
    want = torch.tensor([(0.5 + 0.2 + 0.1) / 3, (1 / 2 + 1 / 3 + 1 / 4) / 3, 1.0])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # with query 0 included, each head gains a 1.0 term
    with_q0 = sink_share(attn, skip_first_query=False)
    torch.testing.assert_close(with_q0, (want * 3 + 1) / 4, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="B, H, T, S"):
        sink_share(attn[0])


def test_max_activation_hand_built() -> None:
    h = torch.full((2, 5, 8), 0.5)
    h[1, 3, 6] = -37.5                                      # one massive value, negative
    peak, median = max_activation(h)
    assert peak == 37.5 and median == 0.5


def test_diagnose_reports_attention_layers_only(make_tiny) -> None:
    model = make_tiny(["gdn", "attn"])
    x = torch.randint(0, 64, (3, 17))
    d = diagnose(model, x)
    assert list(d["sink_share"]) == [1]                     # layer 0 is recurrent: no attention map
    assert len(d["sink_share"][1]) == 2                     # one share per head
    assert all(0.0 <= s <= 1.0 for s in d["sink_share"][1])
    assert len(d["max_activation"]) == 3                    # embeddings + 2 blocks
    assert d["layer_types"] == ["gdn", "attn"]
    # the measurement agrees with the probabilities the model returns
    out = model(input_ids=x, output_attentions=True)
    torch.testing.assert_close(torch.tensor(d["sink_share"][1]), out.attentions[1][:, :, 1:, 0].mean((0, 2)))


def _train_briefly(tiny, gate: str | None, steps: int = 30) -> torch.nn.Module:
    model = tiny(["attn", "attn"], attn_gate=gate).train()
    task = make_task("niah", vocab_size=64, seq_len=48)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = task.sample(8, g)
        loss = model(input_ids=b["input_ids"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_sink_share_with_and_without_g1_gate(make_tiny, capsys: pytest.CaptureFixture[str]) -> None:
    x = make_task("niah", vocab_size=64, seq_len=64).sample(8, torch.Generator().manual_seed(1))["input_ids"]
    shares = {}
    for name, gate in (("ungated", None), ("G1 elementwise", "elementwise")):
        d = diagnose(_train_briefly(make_tiny, gate), x)
        assert set(d["sink_share"]) == {0, 1}
        shares[name] = d["sink_share_mean"]
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in d["sink_share_mean"].values())
        assert all(math.isfinite(v) for v in d["max_activation"])
    with capsys.disabled():  # the numbers themselves are the point of this test: show them
        print("\nsink share per layer after 30 steps:",
              {k: {i: round(v, 3) for i, v in s.items()} for k, s in shares.items()},
              f"(uniform causal attention: {uniform_sink_share(64):.3f})")
