"""Initial values of the decay parameters shared by the recurrent layers (Mamba2 / GDN papers).

``A_log ~ log U(1, 16)`` sets per-head decay rates ``A = exp(A_log)``; ``dt_bias`` is the inverse
softplus of ``dt ~ log-uniform [1e-3, 0.1]`` so that ``softplus(0 + dt_bias) = dt`` at init. Neither
takes weight decay: decaying them towards 0 would pull every head to the same time scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

CopyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter so the trainer's optimizer groups skip weight decay for it."""
    p._no_weight_decay = True
    return p


def residual_out(layer: nn.Linear) -> nn.Linear:
    """Tag a projection that writes into the residual stream; the model scales its init by depth."""
    layer.residual_out = True
    return layer


def a_log_init(n: int, *, low: float = 1.0, high: float = 16.0) -> torch.Tensor:
    """``log U(low, high)``, ``[n]`` float32."""
    return torch.empty(n, dtype=torch.float32).uniform_(low, high).log()


def dt_bias_init(
    n: int, *, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4
) -> torch.Tensor:
    """Inverse softplus of ``dt ~ log-uniform [dt_min, dt_max]``, ``[n]`` float32."""
    log_dt = torch.rand(n, dtype=torch.float32) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=dt_floor)
    # softplus⁻¹(dt) = dt + log(1 − exp(−dt)), written with expm1 to stay exact for small dt.
    return dt + torch.log(-torch.expm1(-dt))


def plain_copy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return dst.copy_(src)
