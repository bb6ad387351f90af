"""Mamba2 token mixer through the state-space dual (``ops.ssd``).

    x ─ in_proj ─ z, xBC, dt
    xBC ─ short conv + SiLU ─ x (values), B (keys), C (queries)
    dt = softplus(dt + dt_bias);  g = −exp(A_log)·dt     (per head, float32)
    y = ssd(q=C, k=B, v=x, g, w=dt, scale=1) + D ⊙ x
    out_proj(RMSNorm(y ⊙ SiLU(z)))

In the terms of DESIGN §1 the state update is ``S_t = exp(g_t) S_{t−1} + dt_t B_t x_tᵀ`` and the
readout ``y_t = S_tᵀ C_t``; B and C have ``n_groups`` heads shared across the value heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .conv import ShortConvolution
from .gates import CopyFn, a_log_init, dt_bias_init, no_weight_decay, plain_copy, residual_out
from .norm import GatedRMSNorm
from .state import RecurrentState, freeze_padding

Tensor = torch.Tensor


class Mamba2(nn.Module):
    """Mamba2 layer.

    Args:
        hidden_size: model width.
        num_heads: value heads ``HV``; the inner width is ``HV · head_dim``.
        head_dim: ``P``, channels per value head.
        state_size: ``N``, the key size of B and C.
        n_groups: heads of B and C (``HV % n_groups == 0``).
        conv_size: short-conv kernel.
        norm_eps: epsilon of the gated output norm.
        backend: op backend override.
        layer_idx: position in the model.

    Shapes: ``x [B, T, hidden_size] -> [B, T, hidden_size]``; state ``[B or N, HV, N, P]`` float32.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        head_dim: int = 64,
        state_size: int = 128,
        n_groups: int = 1,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
        backend: str | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads % n_groups != 0:
            raise ValueError(f"num_heads={num_heads} must be a multiple of n_groups={n_groups}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.state_size, self.n_groups = state_size, n_groups
        self.backend, self.layer_idx = backend, layer_idx
        self.inner = num_heads * head_dim
        self.bc_dim = n_groups * state_size
        conv_dim = self.inner + 2 * self.bc_dim
        self.in_proj = nn.Linear(hidden_size, self.inner + conv_dim + num_heads, bias=False)
        self.conv = ShortConvolution(dim=conv_dim, kernel_size=conv_size)
        self.A_log = no_weight_decay(nn.Parameter(torch.zeros(num_heads)))
        self.dt_bias = no_weight_decay(nn.Parameter(torch.zeros(num_heads)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(num_heads)))
        self.norm = GatedRMSNorm(self.inner, activation="silu", norm_before_gate=False, eps=norm_eps)
        self.out_proj = residual_out(nn.Linear(self.inner, hidden_size, bias=False))
        self.reset_parameters()

    def reset_parameters(self, *, copy: CopyFn = plain_copy) -> None:
        """``A_log ~ log U(1, 16)``, ``dt_bias = softplus⁻¹(log-uniform [1e-3, 0.1])``, ``D = 1``."""
        copy(self.A_log, a_log_init(self.num_heads))
        copy(self.dt_bias, dt_bias_init(self.num_heads))
        copy(self.D, torch.ones(self.num_heads))
        self.conv.reset_parameters(copy=copy)

    def forward(
        self,
        x: Tensor,
        *,
        token_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> Tensor:
        """Mix tokens. Arguments as :meth:`gatedelta.layers.delta.DeltaLayer.forward`."""
        Bsz, T, _ = x.shape
        HV, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.state_size
        z, xbc, dt = self.in_proj(x).split([self.inner, self.inner + 2 * self.bc_dim, HV], dim=-1)
        if token_mask is not None:
            xbc = xbc * token_mask[..., None].to(xbc.dtype)
        xbc, conv_state = self.conv(
            xbc,
            initial_state=None if cache is None else cache.conv_state,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
        )
        # Token-major rows (the conv returns a [B, D, T]-major view): see DeltaLayer.forward.
        xv, Bk, Cq = xbc.contiguous().split([self.inner, self.bc_dim, self.bc_dim], dim=-1)
        xv, Bk, Cq = xv.view(Bsz, T, HV, P), Bk.view(Bsz, T, G, N), Cq.view(Bsz, T, G, N)
        # bf16 dt + a float32 bias is promoted exactly: no separate upcast of dt.
        dt = dt if dt.dtype in (torch.bfloat16, torch.float16, torch.float32) else dt.float()
        dt = nn.functional.softplus(dt + self.dt_bias.float())  # [B, T, HV]
        g = -self.A_log.float().exp() * dt
        Bk, g = freeze_padding(token_mask, Bk, g)
        y, state = ops.ssd(
            Cq, Bk, xv, g, dt,
            scale=1.0,
            initial_state=None if cache is None else cache.recurrent_state,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
            backend=self.backend,
        )
        if cache is not None:
            cache.conv_state, cache.recurrent_state = conv_state, state
        y = y + xv * self.D.to(xv.dtype)[:, None]
        y = self.norm(y.reshape(Bsz, T, self.inner), z)
        return self.out_proj(y)
