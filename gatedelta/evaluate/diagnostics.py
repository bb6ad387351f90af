"""Diagnostics from the Gated Attention paper (Qiu et al., 2025): attention sinks and massive activations.

* **Attention-sink share**: the mean attention probability that queries put on the *first* token.
  Softmax must spend its mass somewhere; ungated attention learns to dump it on token 0. The paper
  reports that a sigmoid gate after SDPA (G1) removes most of that mass.
* **Massive activations**: the largest hidden-state magnitude per layer. Sinks come with a few huge
  residual-stream values; gating keeps them small.

Both are pure functions of tensors the model already returns (``output_attentions=True``,
``output_hidden_states=True``), so the measurement is testable on hand-built inputs.
"""

from __future__ import annotations

from typing import Any

import torch


def sink_share(attn: torch.Tensor, *, skip_first_query: bool = True) -> torch.Tensor:
    """First-token attention share per head.

    Args:
        attn: attention probabilities ``[B, H, T, S]`` (rows sum to 1; key 0 is the first token).
        skip_first_query: leave out query 0, which causally can only attend to itself (share 1 by
            construction, not a learned sink).

    Returns:
        ``[H]`` float32: ``mean_{b, t} attn[b, h, t, 0]`` over the queries kept.
    """
    if attn.ndim != 4:
        raise ValueError(f"attn must be [B, H, T, S], got shape {tuple(attn.shape)}")
    first = attn[..., 0].float()                      # (B, H, T)
    if skip_first_query and first.shape[-1] > 1:
        first = first[..., 1:]
    return first.mean(dim=(0, 2))


def max_activation(hidden: torch.Tensor) -> tuple[float, float]:
    """``(max |h|, median |h|)`` of one hidden state ``[B, T, D]`` (the ratio flags massive values)."""
    a = hidden.detach().float().abs()
    return float(a.max()), float(a.median())


@torch.no_grad()
def diagnose(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, Any]:
    """Sink share per attention layer and head, and the largest activation per layer.

    Args:
        model: a causal LM whose forward accepts ``output_attentions`` / ``output_hidden_states``
            and returns ``.attentions`` (one entry per layer: ``[B, H, T, S]`` for attention layers,
            ``None`` for recurrent ones) and ``.hidden_states`` (embeddings, then each layer).
        input_ids: ``[B, T]`` int64.

    Returns:
        ``{"sink_share": {layer: [H floats]}, "sink_share_mean": {layer: float},
        "max_activation": [per hidden state], "median_activation": [...], "layer_types": [...]}``
        where layer indices are 0-based and hidden state 0 is the embedding output.
    """
    was_training = model.training
    model.eval()
    out = model(input_ids=input_ids, output_attentions=True, output_hidden_states=True)
    model.train(was_training)
    sinks: dict[int, list[float]] = {}
    for i, a in enumerate(out.attentions or ()):
        if a is not None:
            sinks[i] = sink_share(a).tolist()
    maxes, medians = zip(*(max_activation(h) for h in out.hidden_states)) if out.hidden_states else ((), ())
    layer_types = list(getattr(model.config, "mixer_types", None) or [])
    return {
        "sink_share": sinks,
        "sink_share_mean": {i: sum(v) / len(v) for i, v in sinks.items()},
        "max_activation": list(maxes),
        "median_activation": list(medians),
        "layer_types": layer_types,
        "tokens": int(input_ids.numel()),
    }
