"""Where the 1.3B GDN-2 hybrid's training time goes between T = 2k and T = 16k (same tokens).

    python benchmarks/layer_split.py --out split.json          # on a GPU, ~1 minute

Times forward + backward (bf16 autocast, eager, median of ``triton.testing.do_bench``) of one
``gdn2`` mixer and one ``swa`` mixer of the 1.3B preset, and their bare ops, at B = 8, T = 2048
and B = 1, T = 16384 (16,384 tokens each, as ``gatedelta bench models`` runs them). For the
attention it adds FlexAttention with a plain causal block mask at T = 2048, the work SDPA's flash
kernel does there, so the two kernels' speed on the same work can be compared.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton.testing

from gatedelta import ops
from gatedelta.models.modeling import build_mixer
from gatedelta.models.presets import preset_config
from gatedelta.ops.attention import _compiled_flex, cached_block_mask

SHAPES = ((8, 2048), (1, 16384))


def write_rows(path: str, rows: list[dict]) -> None:
    """The rows as JSON with the GPU's name and torch's version (also used by swa_backends.py)."""
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f,
                  indent=1)


def fwd_bwd_ms(fn, *args, leaves: list[torch.Tensor]) -> float:
    """Median ms of ``fn(*args).backward(grad)``; ``leaves`` get their gradients cleared."""
    grad = torch.randn_like(fn(*args))

    def step() -> None:
        fn(*args).backward(grad)

    return triton.testing.do_bench(step, warmup=5, rep=40, grad_to_none=leaves, return_mode="median")


def run_layer(layer: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = layer(x) if positions is None else layer(x, position_ids=positions)
    return (out[0] if isinstance(out, tuple) else out).float()


def gdn2_op(q, k, v, g, b, w) -> torch.Tensor:
    return ops.gdn2(q, k, v, g, b, w, backend="triton")[0]


def swa_op(q, k, v, window: int) -> torch.Tensor:
    return ops.gated_attention(q, k, v, None, window=window)


def flex_op(q, k, v, block_mask) -> torch.Tensor:
    return _compiled_flex()(q, k, v, block_mask=block_mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dev, bf = torch.device("cuda"), torch.bfloat16
    cfg = preset_config("gdn2-hybrid", "1.3b")
    rows = []

    def record(name: str, B: int, T: int, ms: float) -> None:
        rows.append({"what": name, "B": B, "T": T, "ms": round(ms, 3)})
        print(json.dumps(rows[-1]), flush=True)

    for kind in ("gdn2", "swa"):
        layer = build_mixer(cfg, kind, 0).to(dev)
        for B, T in SHAPES:
            x = torch.randn(B, T, cfg.hidden_size, device=dev, requires_grad=True)
            pos = torch.arange(T, device=dev).expand(B, T) if kind == "swa" else None
            leaves = [x, *layer.parameters()]
            record(f"{kind} layer", B, T, fwd_bwd_ms(run_layer, layer, x, pos, leaves=leaves))
        del layer
    H, D = cfg.num_heads, cfg.head_dim
    for B, T in SHAPES:
        q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=bf, requires_grad=True) for _ in range(3))
        g = F.logsigmoid(torch.randn(B, T, H, D, device=dev)).requires_grad_()
        b, w = (torch.rand(B, T, H, D, device=dev, dtype=bf, requires_grad=True) for _ in range(2))
        qn, kn = (F.normalize(t.detach().float(), dim=-1).to(bf).requires_grad_() for t in (q, k))
        gates = (qn, kn, v, g, b, w)
        record("ops.gdn2", B, T, fwd_bwd_ms(gdn2_op, *gates, leaves=list(gates)))
        record("ops.gated_attention window 2048", B, T,
               fwd_bwd_ms(swa_op, q, k, v, cfg.window, leaves=[q, k, v]))
        if T == 2048:
            mask = cached_block_mask(T, T, causal=True, window=None, device=dev)
            qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
            record("flex causal (no window)", B, T,
                   fwd_bwd_ms(flex_op, qt, kt, vt, mask, leaves=[qt, kt, vt]))
    if args.out:
        write_rows(args.out, rows)


if __name__ == "__main__":
    main()
