"""RMS normalisation, plain and gated (the output norm of the recurrent mixers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("silu", "sigmoid")


# F.rms_norm (torch >= 2.4) is one dispatcher call, and one fused kernel on CUDA in recent torch,
# instead of the eight of the written-out form; it accumulates in float32 for half inputs and
# rounds once at the end, which is the written-out form's arithmetic.
_rms_norm = getattr(F, "rms_norm", None)


def _rms_scaled(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` in float32 (or x's dtype when wider); statistics never in bf16/fp16,
    whose sums of squares lose the small channels. ``weight`` must already have that dtype."""
    if _rms_norm is not None:
        return _rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


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
        w = self.weight
        if w.dtype == x.dtype and _rms_norm is not None:
            # One call; half inputs are accumulated in float32 inside and rounded once.
            return _rms_norm(x, (x.shape[-1],), w, self.eps)
        # Mixed dtypes (autocast: bf16 activations, float32 weights): in float32, rounded once.
        return _rms_scaled(x.float(), w.float(), self.eps).to(x.dtype)


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
        # Everything in float32 (float64 stays float64), rounded once at the end.
        cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        zf = z.to(cdtype)
        gate = F.silu(zf) if self.activation == "silu" else torch.sigmoid(zf)
        w = self.weight.to(cdtype)
        if self.norm_before_gate:
            y = _rms_scaled(x.to(cdtype), w, self.eps) * gate
        else:
            y = _rms_scaled(x.to(cdtype) * gate, w, self.eps)
        return y.to(x.dtype)
