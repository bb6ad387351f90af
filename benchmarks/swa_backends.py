"""Sliding-window attention backends on the GPU: FlexAttention (what ``ops.gated_attention`` runs for
a window shorter than the sequence) against FlashAttention-2's own sliding window
(``aten._flash_attention_forward`` with ``window_size_left``), and SDPA causal for the same work.

    python benchmarks/swa_backends.py --out swa.json          # on a GPU, ~1 minute

Shapes of the 1.3B hybrid's ``swa`` layers: 16 heads of 128, window 2048, bf16, 16,384 tokens as
B = 1, T = 16384 and B = 8, T = 2048 (where the window covers the sequence: plain causal).
Forward + backward, median of ``triton.testing.do_bench``; the FA-2 path's output and gradients
are compared with FlexAttention's.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton.testing
from layer_split import write_rows  # the sibling script (run as python3 benchmarks/swa_backends.py)

from gatedelta import ops


def fa2_window(q, k, v, window: int) -> torch.Tensor:
    T = q.shape[1]
    return torch.ops.aten._flash_attention_forward(
        q, k, v, None, None, T, T, 0.0, True, False, window_size_left=window - 1, window_size_right=0
    )[0]


def flex_window(q, k, v, window: int) -> torch.Tensor:
    return ops.gated_attention(q, k, v, None, window=window)


def sdpa_causal(q, k, v, window: int) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)


def time_backend(fn, q, k, v, do, window: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms), medians."""

    def step() -> None:
        torch.autograd.grad(fn(q, k, v, window), (q, k, v), do)

    def forward() -> None:
        with torch.no_grad():
            fn(q, k, v, window)

    return (triton.testing.do_bench(forward, warmup=5, rep=40, return_mode="median"),
            triton.testing.do_bench(step, warmup=5, rep=40, return_mode="median"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--window", type=int, default=2048)
    args = p.parse_args()
    rows = []
    W = args.window
    for B, T in ((1, 16384), (8, 2048)):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, T, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        results = {}
        for name, fn in (("flex", flex_window), ("fa2_window", fa2_window), ("sdpa_causal", sdpa_causal)):
            if name == "sdpa_causal" and T > W:
                continue
            try:
                o = fn(q, k, v, W)
                grads = torch.autograd.grad(o, (q, k, v), do)
                results[name] = (o.float(), [g.float() for g in grads])
                fwd, ms = time_backend(fn, q, k, v, do, W)
                row = {"backend": name, "B": B, "T": T, "fwd_ms": round(fwd, 3), "fwd_bwd_ms": round(ms, 3)}
            except Exception as e:  # an op or argument this torch lacks
                row = {"backend": name, "B": B, "T": T, "error": f"{type(e).__name__}: {e}"[:300]}
            if name != "flex" and name in results and "flex" in results:
                ref_o, ref_g = results["flex"]
                o_, g_ = results[name]
                rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
                row["rel_vs_flex"] = [round(rel(a, b), 6) for a, b in zip([o_, *g_], [ref_o, *ref_g])]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        write_rows(args.out, rows)


if __name__ == "__main__":
    main()
