"""The channel mixer that follows every token mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gates import residual_out


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``.

    Args:
        hidden_size: model width.
        intermediate_size: width of the gated hidden layer.

    Shapes: ``x [B, T, hidden_size] -> [B, T, hidden_size]``.
    """

    def __init__(self, *, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        # gate and up share one matmul: one GEMM instead of two on the hot path.
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = residual_out(nn.Linear(intermediate_size, hidden_size, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
