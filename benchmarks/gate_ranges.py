"""How often a GDN-2 layer's chunks take the Triton kernels' midpoint path (``TUNING["anchor_range"]``).

The pair products of a chunk go through one per-channel midpoint when its log-decay spans at
most R in every channel of a 32-channel tile (max − min of the chunk-local cumulative log-decay);
otherwise through the dyadic split (six products instead of one). This script builds the 1.3B
preset's GDN-2 mixer (hidden 2048, 16 heads of 128) with the models' initialisation (linear
weights normal(0, 0.02), ``A_log`` and ``dt_bias`` as in the papers), feeds it unit-RMS inputs and
prints the fraction of (chunk, head, tile) at or below each R:

    python benchmarks/gate_ranges.py            # CPU, a few seconds
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from gatedelta.layers.delta import GatedDeltaNet2

CHUNK, TILE = 64, 32


def tile_ranges(g: torch.Tensor) -> torch.Tensor:
    """``g [B, T, H, K]`` (T a multiple of 64) -> the largest 64-row range per 32-channel tile."""
    B, T, H, K = g.shape
    span = -g.float().view(B, T // CHUNK, CHUNK, H, K)[:, :, 1:].sum(2)  # G_first − G_last per channel
    return span.view(B, T // CHUNK, H, K // TILE, TILE).amax(-1).flatten()


class _GatesOnly(GatedDeltaNet2):
    """The GDN-2 mixer up to its op: the op call keeps the log-decays and stops the forward."""

    seen: list[torch.Tensor] = []

    @staticmethod
    def op(q, k, v, g, *rest, **kw):
        _GatesOnly.seen.append(g.detach())
        raise StopIteration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--ranges", type=float, nargs="*", default=[80, 100, 120, 160])
    args = ap.parse_args()
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        layer = _GatesOnly(hidden_size=2048, num_heads=16, head_dim=128, backend="torch")
        with torch.no_grad():
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        try:
            with torch.no_grad():
                layer(torch.randn(1, args.T, 2048))
        except StopIteration:
            pass
    span = torch.cat([tile_ranges(g) for g in _GatesOnly.seen])
    print(f"GDN-2 mixer at init, T = {args.T}, {args.seeds} seeds, {span.numel()} tiles")
    q = span.quantile(torch.tensor([0.5, 0.9, 0.99])).tolist()
    print("tile range quantiles 50/90/99 %:", [round(x, 1) for x in q])
    for r in args.ranges:
        print(f"  range <= {r:5.0f}: {(span <= r).float().mean().item():.3f} of tiles")


if __name__ == "__main__":
    main()
