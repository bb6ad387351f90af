"""Perplexity on held-out text: non-overlapping windows, mean next-token NLL over every predicted token."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokens: torch.Tensor, *, seq_len: int, batch_size: int = 8,
               max_windows: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Perplexity of ``model`` on a token stream.

    Args:
        tokens: ``[N]`` int64, the held-out text already tokenized.
        seq_len: window length; the stream is cut into ``N // seq_len`` non-overlapping windows
            (the tail is dropped) and each window predicts its last ``seq_len - 1`` tokens.
        max_windows: evaluate at most this many windows (from the start).

    Returns:
        ``{"ppl", "nll" (nats/token), "bits_per_token", "tokens" (predicted), "windows", "seq_len"}``.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"{tokens.numel()} tokens do not fill one window of seq_len={seq_len}")
    windows = tokens[: n * seq_len].view(n, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in tqdm(range(0, n, batch_size), desc="ppl", disable=not progress):
        x = windows[i:i + batch_size].to(device)                          # (b, T)
        logits = model(input_ids=x).logits[:, :-1].float()                # (b, T-1, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    model.train(was_training)
    nll = total / count
    return {"ppl": math.exp(nll), "nll": nll, "bits_per_token": nll / math.log(2), "tokens": count,
            "windows": n, "seq_len": seq_len}
