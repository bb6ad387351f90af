"""Causal depthwise short convolution as a module (weights, init, decoding state)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from .gates import CopyFn, plain_copy


class ShortConvolution(nn.Module):
    """Depthwise causal conv over time with a ``W``-token kernel, then SiLU (``ops.short_conv``).

    Args:
        dim: channels ``D``.
        kernel_size: ``W`` (4 in every paper this library follows).
        bias: add a per-channel bias.
        activation: ``"silu"`` or ``None``.

    Shapes: ``x [B, T, D] -> y [B, T, D]``; decoding state ``[N, D, W-1]``.
    """

    def __init__(self, *, dim: int, kernel_size: int = 4, bias: bool = False,
                 activation: str | None = "silu") -> None:
        super().__init__()
        self.dim, self.kernel_size, self.activation = dim, kernel_size, activation
        self.weight = nn.Parameter(torch.empty(dim, kernel_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, *, copy: CopyFn = plain_copy) -> None:
        """PyTorch's Conv1d default: U(±1/sqrt(fan_in)) with fan_in = W for a depthwise kernel.

        ``copy(dst, src)`` writes the values; the model passes one that skips loaded weights.
        """
        bound = 1.0 / math.sqrt(self.kernel_size)
        copy(self.weight, torch.empty_like(self.weight, device="cpu").uniform_(-bound, bound))
        if self.bias is not None:
            copy(self.bias, torch.zeros_like(self.bias, device="cpu"))

    def forward(
        self,
        x: torch.Tensor,
        *,
        initial_state: torch.Tensor | None = None,
        output_final_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(y [B, T, D], final_state [N, D, W-1] or None)``."""
        # Under autocast x arrives in bf16 while the master weights stay fp32; the op wants one dtype.
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return ops.short_conv(
            x, self.weight.to(x.dtype), bias, activation=self.activation, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
