"""The delta-rule token mixers: Gated DeltaNet-2, Kimi Delta Attention, Gated DeltaNet, DeltaNet.

All four share one skeleton (:class:`DeltaLayer`) and differ only in their gates:

    x ─ in_proj ─┬─ qkv ─ short conv + SiLU ─ q, k (L2-normalised in the op), v
                 ├─ gate slices ─ g (log-decay), erase, write                  ─┐
                 └─ out-gate slice                                              │
    op(q, k, v, gates, state) ─ o ─ RMSNorm(o) ⊙ act(out gate) ─ o_proj

Every projection of ``x`` (q, k, v, the gates' inputs, the output gate's) is one slice of a single
``in_proj`` GEMM. Each slice is initialised as the separate layer it replaces was (all are plain
linear maps of ``x`` with the same init), and a load hook turns the old separate weights
(``qkv_proj``, ``b_proj``, ``f_proj.0``, …) into ``in_proj`` so older checkpoints still load.

| layer              | op                | decay g             | erase        | write        | out gate |
|--------------------|-------------------|---------------------|--------------|--------------|----------|
| GatedDeltaNet2     | ``ops.gdn2``       | per key channel     | b per channel| w per channel| sigmoid  |
| KimiDeltaAttention | ``ops.kda``        | per key channel     | β per head   | β per head   | sigmoid  |
| GatedDeltaNet      | ``ops.gdn``        | per head            | β per head   | β per head   | SiLU     |
| DeltaNet           | ``ops.delta_rule`` | —                   | β per head   | β per head   | SiLU     |
| GatedLinearAttention | ``ops.gla``      | per key channel     | —            | 1            | SiLU     |

Log-decays are ``g = −exp(A_log) · softplus(f(x) + dt_bias)`` in float32, with ``f`` low-rank for the
channel-wise forms. ``neg_eigval=True`` lets the erase gate reach 2 (state tracking via negative
eigenvalues of ``I − b k kᵀ``).

Padding: a ``token_mask`` (``False`` at padding) zeroes the conv input, ``k`` and ``g`` at padded
positions, so a padded token neither writes, erases nor decays the state: left-padded rows end in
the same state as their unpadded sequences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import ops
from .conv import ShortConvolution
from .fused import register_legacy_split
from .gates import CopyFn, a_log_init, dt_bias_init, no_weight_decay, plain_copy, residual_out
from .norm import GatedRMSNorm
from .state import RecurrentState, freeze_padding

Tensor = torch.Tensor


class DeltaLayer(nn.Module):
    """Shared skeleton; subclasses set ``op``, ``out_activation`` and build/compute their gates.

    Args:
        hidden_size: model width.
        num_heads: q/k heads ``H``.
        head_dim: ``K = V`` per head.
        num_v_heads: value heads ``HV`` (a multiple of ``H``; grouped value attention). Default ``H``.
        conv_size: short-conv kernel ``W``.
        neg_eigval: erase gate in ``[0, 2]`` instead of ``[0, 1]``.
        norm_eps: epsilon of the output RMSNorm.
        backend: op backend override (``None``: ``ops`` default dispatch).
        layer_idx: position in the model (for error messages and the cache).

    Shapes: ``x [B, T, hidden_size] -> [B, T, hidden_size]``; state ``[B or N, HV, K, K]`` float32.
    """

    op: Callable[..., tuple[Tensor, Tensor | None]]
    out_activation: str = "silu"
    low_rank_out_gate: bool = False
    qk_l2norm: bool = True

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        num_v_heads: int | None = None,
        conv_size: int = 4,
        neg_eigval: bool = False,
        norm_eps: float = 1e-6,
        backend: str | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        num_v_heads = num_heads if num_v_heads is None else num_v_heads
        if num_v_heads % num_heads != 0:
            raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of num_heads={num_heads}")
        self.hidden_size, self.num_heads, self.num_v_heads = hidden_size, num_heads, num_v_heads
        self.head_dim, self.neg_eigval = head_dim, neg_eigval
        self.backend, self.layer_idx = backend, layer_idx
        self.key_dim = num_heads * head_dim
        self.value_dim = num_v_heads * head_dim

        # Every projection of x in one GEMM: q, k, v (one conv call), the gates' inputs, the
        # output gate (low-rank: its first factor). `in_widths` names the slices in order.
        qkv_dim = 2 * self.key_dim + self.value_dim
        self.in_widths: dict[str, int] = {"qkv": qkv_dim, **self.build_gates()}
        if self.low_rank_out_gate:
            self.in_widths["out_gate"] = head_dim
            self.out_gate_up_proj = nn.Linear(head_dim, self.value_dim, bias=True)
            no_weight_decay(self.out_gate_up_proj.bias)
        else:
            self.in_widths["out_gate"] = self.value_dim
        self.in_proj = nn.Linear(hidden_size, sum(self.in_widths.values()), bias=False)
        self.conv = ShortConvolution(dim=qkv_dim, kernel_size=conv_size)
        register_legacy_split(self, "in_proj", self._legacy_names(), renames=self.legacy_renames)
        self.o_norm = GatedRMSNorm(head_dim, activation=self.out_activation, eps=norm_eps)
        self.o_proj = residual_out(nn.Linear(self.value_dim, hidden_size, bias=False))
        self.reset_parameters()

    # Where each in_proj slice lived before the projections were fused (the load hook reads them),
    # and the modules that were renamed with it.
    legacy_slices: dict[str, str] = {"qkv": "qkv_proj", "f": "f_proj.0", "b": "b_proj", "w": "w_proj",
                                     "beta": "beta_proj", "a": "a_proj"}
    legacy_renames: dict[str, str] = {"f_proj.1.": "f_up_proj.", "out_gate.1.": "out_gate_up_proj."}

    # -- variant hooks ----------------------------------------------------------------------------
    def build_gates(self) -> dict[str, int]:
        """Create the gate parameters (and any second low-rank factor); return the widths of the
        gates' ``in_proj`` slices by name, in order."""
        raise NotImplementedError

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        """Gate tensors for ``op`` by keyword (``g`` float32 log-decay, ``b``/``w``/``beta``) from
        the named ``in_proj`` slices ``parts[name] [B, T, width]``."""
        raise NotImplementedError

    def project(self, x: Tensor) -> dict[str, Tensor]:
        """``x [B, T, hidden_size]`` through ``in_proj``, split into its named slices (views)."""
        return dict(zip(self.in_widths, self.in_proj(x).split(list(self.in_widths.values()), dim=-1)))

    def gates(self, x: Tensor) -> dict[str, Tensor]:
        """Gate tensors for ``op`` straight from ``x [B, T, hidden_size]`` (see :meth:`gates_from`)."""
        return self.gates_from(self.project(x))

    def _legacy_names(self) -> list[str]:
        out_gate = "out_gate.0" if self.low_rank_out_gate else "out_gate"
        return [out_gate if name == "out_gate" else self.legacy_slices[name] for name in self.in_widths]

    def reset_parameters(self, *, copy: CopyFn = plain_copy) -> None:
        """Paper init of the decay parameters (``A_log``, ``dt_bias``) and the conv kernel.

        ``copy(dst, src)`` writes the values; the model passes a copy that skips loaded weights.
        """
        if hasattr(self, "A_log"):
            copy(self.A_log, a_log_init(self.A_log.numel()))
            copy(self.dt_bias, dt_bias_init(self.dt_bias.numel()))
        self.conv.reset_parameters(copy=copy)

    # -- shared helpers ---------------------------------------------------------------------------
    def _build_channel_decay(self) -> dict[str, int]:
        """Per-key-channel log-decay parameters (GDN-2, KDA): a low-rank projection ``f`` (rank =
        head_dim, as in KDA: the decay needs few degrees of freedom; its first factor is in_proj's
        ``"f"`` slice), ``A_log`` per q/k head and ``dt_bias`` per key channel; read by :meth:`_decay`."""
        self.f_up_proj = nn.Linear(self.head_dim, self.key_dim, bias=False)  # after in_proj's "f" slice
        self.A_log = no_weight_decay(nn.Parameter(torch.zeros(self.num_heads)))
        self.dt_bias = no_weight_decay(nn.Parameter(torch.zeros(self.key_dim)))
        return {"f": self.head_dim}

    def _decay(self, raw: Tensor, heads: int) -> Tensor:
        """``−exp(A_log) · softplus(raw + dt_bias)`` in float32.

        ``raw [B, T, heads·C]`` → ``[B, T, heads, C]`` (``[B, T, heads]`` when ``C = 1``).
        """
        B, T, n = raw.shape
        # A half-precision `raw` plus a float32 bias is promoted exactly to float32: no separate
        # upcast of the full [B, T, n] tensor. (float64 is rounded to float32, as the spec asks.)
        if raw.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raw = raw.float()
        dt = nn.functional.softplus(raw + self.dt_bias.float())
        # The sign goes on the [heads] vector, not on the full tensor (−a·b is exactly −(a·b)).
        neg_A = -self.A_log.float().exp()
        if n == heads:
            return neg_A * dt
        return neg_A[:, None] * dt.view(B, T, heads, n // heads)

    def _erase_scale(self) -> float:
        return 2.0 if self.neg_eigval else 1.0

    def _erase(self, logits: Tensor) -> Tensor:
        """Erase gate ``sigmoid(logits)``, times 2 with ``neg_eigval`` (no multiply by 1 otherwise)."""
        gate = torch.sigmoid(logits)
        return gate * 2.0 if self.neg_eigval else gate

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        *,
        token_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: RecurrentState | None = None,
    ) -> Tensor:
        """Mix tokens.

        Args:
            x: ``[B, T, hidden_size]``.
            token_mask: ``[B, T]`` bool, ``False`` at padding, or ``None``.
            cu_seqlens: ``[N+1]`` offsets of packed sequences (``B = 1``).
            cache: decoding state, read as the initial state and replaced by the final one.

        Returns:
            ``[B, T, hidden_size]``.
        """
        B, T, _ = x.shape
        H, HV, D = self.num_heads, self.num_v_heads, self.head_dim
        parts = self.project(x)
        qkv = parts["qkv"]
        if token_mask is not None:
            qkv = qkv * token_mask[..., None].to(qkv.dtype)
        qkv, conv_state = self.conv(
            qkv,
            initial_state=None if cache is None else cache.conv_state,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
        )
        # The conv returns a [B, D, T]-major view; one copy to token-major rows here lets the q/k
        # L2 norms read whole rows and hands the op q, k in the [B, T, H, K] layout it packs without
        # a copy (and that the custom op's compiled gradients are laid out in).
        qkv = qkv.contiguous()
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k, v = q.view(B, T, H, D), k.view(B, T, H, D), v.view(B, T, HV, D)
        gates = self.gates_from(parts)
        k, g = freeze_padding(token_mask, k, gates.get("g"))
        if g is not None:
            gates["g"] = g
        o, state = type(self).op(
            q, k, v, **gates,
            initial_state=None if cache is None else cache.recurrent_state,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
            qk_l2norm=self.qk_l2norm,
            backend=self.backend,
        )
        if cache is not None:
            cache.conv_state, cache.recurrent_state = conv_state, state
        out_gate = parts["out_gate"]
        if self.low_rank_out_gate:
            out_gate = self.out_gate_up_proj(out_gate)
        o = self.o_norm(o, out_gate.view(B, T, HV, D))
        return self.o_proj(o.reshape(B, T, self.value_dim))


class GatedDeltaNet2(DeltaLayer):
    """Gated DeltaNet-2: channel-wise decay, erase ``b`` (per key channel) and write ``w`` (per value
    channel), decoupled. ``b = sigmoid(·)`` (×2 with ``neg_eigval``), ``w = sigmoid(·)``; the decay
    and erase are per q/k head and shared across each value-head group, the write per value head.
    Arguments: see :class:`DeltaLayer`."""

    op = staticmethod(ops.gdn2)
    out_activation = "sigmoid"
    low_rank_out_gate = True

    def build_gates(self) -> dict[str, int]:
        return {**self._build_channel_decay(), "b": self.key_dim, "w": self.value_dim}

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        B, T, _ = parts["b"].shape
        g = self._decay(self.f_up_proj(parts["f"]), self.num_heads)  # [B, T, H, K]
        b = self._erase(parts["b"]).view(B, T, self.num_heads, self.head_dim)
        w = torch.sigmoid(parts["w"]).view(B, T, self.num_v_heads, self.head_dim)
        return {"g": g, "b": b, "w": w}


class KimiDeltaAttention(DeltaLayer):
    """Kimi Delta Attention: channel-wise decay, one β per value head for erase and write.
    Arguments: see :class:`DeltaLayer`."""

    op = staticmethod(ops.kda)
    out_activation = "sigmoid"
    low_rank_out_gate = True

    def build_gates(self) -> dict[str, int]:
        return {**self._build_channel_decay(), "beta": self.num_v_heads}

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        g = self._decay(self.f_up_proj(parts["f"]), self.num_heads)  # [B, T, H, K]
        beta = self._erase(parts["beta"])  # [B, T, HV]
        return {"g": g, "beta": beta}


class GatedDeltaNet(DeltaLayer):
    """Gated DeltaNet: one log-decay and one β per value head. Arguments: see :class:`DeltaLayer`."""

    op = staticmethod(ops.gdn)

    def build_gates(self) -> dict[str, int]:
        self.A_log = no_weight_decay(nn.Parameter(torch.zeros(self.num_v_heads)))
        self.dt_bias = no_weight_decay(nn.Parameter(torch.zeros(self.num_v_heads)))
        return {"a": self.num_v_heads, "beta": self.num_v_heads}

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        g = self._decay(parts["a"], self.num_v_heads)  # [B, T, HV]
        beta = self._erase(parts["beta"])
        return {"g": g, "beta": beta}


class DeltaNet(DeltaLayer):
    """DeltaNet: no decay, one β per value head. Arguments: see :class:`DeltaLayer`."""

    op = staticmethod(ops.delta_rule)

    def build_gates(self) -> dict[str, int]:
        return {"beta": self.num_v_heads}

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"beta": self._erase(parts["beta"])}


class GatedLinearAttention(DeltaLayer):
    """Gated linear attention (GLA): channel-wise decay ``g = logsigmoid(f(x)) / 16`` from a low-rank
    ``f``, no erase; q and k are not L2-normalised (the decay alone bounds the state).
    Arguments: see :class:`DeltaLayer` (``neg_eigval`` has no effect: there is no erase)."""

    op = staticmethod(ops.gla)
    qk_l2norm = False
    # GLA's temperature: logsigmoid(·)/16 keeps the initial decay close to 1 (long memory).
    gate_normalizer = 16.0

    def build_gates(self) -> dict[str, int]:
        self.f_up_proj = nn.Linear(16, self.key_dim, bias=True)  # after in_proj's rank-16 "f" slice
        return {"f": 16}

    def gates_from(self, parts: dict[str, Tensor]) -> dict[str, Tensor]:
        B, T, _ = parts["f"].shape
        g = nn.functional.logsigmoid(self.f_up_proj(parts["f"]).float()) / self.gate_normalizer
        return {"g": g.view(B, T, self.num_heads, self.head_dim)}
