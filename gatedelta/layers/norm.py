"""RMS normalisation, plain and gated (the output norm of the recurrent mixers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("silu", "sigmoid")


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    # Statistics in float32: bf16 sums of squares lose the small channels.
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim.

    Args:
        dim: size of the normalised (last) dim.
        eps: added to the mean square.

    Shapes: ``x [..., dim] -> [..., dim]`` in ``x``'s dtype.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.weight._no_weight_decay = True  # a norm gain decayed towards 0 only shrinks the signal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms(x, self.eps) * self.weight.float()).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a multiplicative gate: ``norm(x) * act(z)`` (or ``norm(x * act(z))``).

    Args:
        dim: size of the normalised (last) dim; ``x`` and ``z`` share it.
        activation: ``"silu"`` (Gated DeltaNet, Mamba2) or ``"sigmoid"`` (KDA, Gated DeltaNet-2).
        norm_before_gate: ``True`` normalises ``x`` then gates (the delta layers); ``False`` gates
            first, as Mamba2 does.
        eps: added to the mean square.

    Shapes: ``x, z [..., dim] -> [..., dim]`` in ``x``'s dtype.
    """

    def __init__(self, dim: int, *, activation: str = "silu", norm_before_gate: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.norm_before_gate = norm_before_gate
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.weight._no_weight_decay = True

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        zf = z.float()
        gate = F.silu(zf) if self.activation == "silu" else torch.sigmoid(zf)
        if self.norm_before_gate:
            y = _rms(x, self.eps) * self.weight.float() * gate
        else:
            y = _rms(x.float() * gate, self.eps) * self.weight.float()
        return y.to(x.dtype)
