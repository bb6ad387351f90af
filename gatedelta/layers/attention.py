"""Gated softmax attention (Gated Attention paper, G1 gate) with QK-norm, RoPE, GQA and a window.

    q, k, v, gate logits = in_proj(x) (one GEMM, split);  q, k = RoPE(RMSNorm_head(q), RMSNorm_head(k))
    o = softmax(q kᵀ · scale + causal/window mask) v          (ops.gated_attention)
    o = o ⊙ sigmoid(gate logits)      head-specific, "elementwise" [Hq·D] or "headwise" [Hq]
    out = o_proj(o)

The gate is computed from the layer input (the pre-normed hidden state), which the paper found best
(G1, after SDPA): it adds a non-linearity between the value and output projections and lets a head
output nothing, which removes attention sinks and massive activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .fused import register_legacy_split
from .gates import residual_out
from .norm import RMSNorm
from .state import KVState

Tensor = torch.Tensor

GATES = ("elementwise", "headwise", None)


def rotary_tables(positions: Tensor, head_dim: int, *, theta: float) -> tuple[Tensor, Tensor]:
    """RoPE ``(cos, sin)`` at ``positions [B or 1, T]``, each ``[B or 1, T, 1, head_dim]`` float32.

    Laid out for :func:`apply_rotary`: ``cos`` repeated over both halves, ``sin`` negated on the
    first half. The model builds them once per forward and every attention layer reuses them
    (they depend only on the positions), instead of each layer recomputing them for q and for k.
    Frequencies are computed on the fly: no buffer to lose on meta-device loading.
    """
    D = head_dim
    inv_freq = theta ** (-torch.arange(0, D, 2, device=positions.device, dtype=torch.float32) / D)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [B, T, D/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, :, None, :], torch.cat([-sin, sin], dim=-1)[:, :, None, :]


def apply_rotary(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate ``x [B, T, H, D]`` (rotate-half form) by :func:`rotary_tables`; float32 math.

    ``x·cos + [x₂, x₁]·[−sin, sin]`` is ``[x₁cos − x₂sin, x₂cos + x₁sin]`` bit for bit, in five
    kernels instead of nine. Half-precision ``x`` is promoted to float32 exactly by the products.
    """
    cos, sin = tables
    xf = x if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else x.float()
    half = x.shape[-1] // 2
    swapped = torch.cat([xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + swapped * sin).to(x.dtype)


def rotary(x: Tensor, positions: Tensor, *, theta: float) -> Tensor:
    """Rotary position embedding (rotate-half form) of ``x [B, T, H, D]`` at ``positions [B or 1, T]``."""
    return apply_rotary(x, rotary_tables(positions, x.shape[-1], theta=theta))


@dataclass(frozen=True)
class KeyPadding:
    """Padding of the keys, read on the host once per model forward and shared by all attention layers.

    Attributes:
        lead: leading pad tokens of each row, counted over the whole sequence so far (past + new).
        total: length of the whole sequence so far (past + new tokens).

    A layer whose cache holds the last ``S`` of those ``total`` tokens finds row ``b``'s first real
    key at ``max(0, lead[b] − (total − S))``: no per-layer look at the mask, so no host sync.
    """

    lead: tuple[int, ...]
    total: int


def _attention_weights(q: Tensor, k: Tensor, **kwargs) -> Tensor:
    """Softmax probabilities ``[B, Hq, T, S]`` (diagnostics only; imported on first use)."""
    from ..ops.attention import attention_weights

    return attention_weights(q, k, scale=None, **kwargs)


class GatedAttention(nn.Module):
    """Multi-head softmax attention with a sigmoid output gate.

    Args:
        hidden_size: model width.
        num_heads: query heads ``Hq``.
        head_dim: ``D``.
        num_kv_heads: key/value heads ``Hkv`` (``Hq % Hkv == 0``; GQA). Default ``Hq``.
        gate: ``"elementwise"``, ``"headwise"`` or ``None`` (plain attention).
        window: sliding window in tokens (``None``: full causal attention).
        rope_theta: RoPE base.
        qk_norm: RMSNorm per head on q and k before RoPE.
        norm_eps: epsilon of the QK norms.
        layer_idx: position in the model.

    Shapes: ``x [B, T, hidden_size] -> [B, T, hidden_size]``; KV cache ``[B, S, Hkv, D]``.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        num_kv_heads: int | None = None,
        gate: str | None = "elementwise",
        window: int | None = None,
        rope_theta: float = 10000.0,
        qk_norm: bool = True,
        norm_eps: float = 1e-6,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of tokens or None, got {window}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.gate, self.window, self.rope_theta, self.layer_idx = gate, window, rope_theta, layer_idx
        # q, k, v and the gate logits are slices of one GEMM of x (each initialised as the separate
        # projection it replaces); older checkpoints with q_proj/k_proj/v_proj/gate_proj still load.
        self.in_widths: dict[str, int] = {
            "q": num_heads * head_dim, "k": num_kv_heads * head_dim, "v": num_kv_heads * head_dim
        }
        if gate is not None:
            self.in_widths["gate"] = num_heads * head_dim if gate == "elementwise" else num_heads
        self.in_proj = nn.Linear(hidden_size, sum(self.in_widths.values()), bias=False)
        register_legacy_split(self, "in_proj", [f"{name}_proj" for name in self.in_widths])
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.o_proj = residual_out(nn.Linear(num_heads * head_dim, hidden_size, bias=False))

    def forward(
        self,
        x: Tensor,
        *,
        position_ids: Tensor,
        token_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: KVState | None = None,
        output_attentions: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        padding: KeyPadding | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x: ``[B, T, hidden_size]``.
            position_ids: ``[B or 1, T]`` RoPE positions (restarting per packed sequence).
            token_mask: ``[B, T]`` bool, ``False`` at padding, or ``None``. Padding must be leading
                (left padding) or trailing; padded keys are never attended to.
            cu_seqlens: ``[N+1]`` packed-sequence offsets (``B = 1``).
            cache: KV cache; the new keys/values are appended and the queries are the last ``T``.
            output_attentions: also return the softmax probabilities ``[B, Hq, T, S]``.
            rope: :func:`rotary_tables` of ``position_ids`` (the model passes them, built once for
                all layers); computed here when ``None``.
            padding: the model's :class:`KeyPadding` (then ``token_mask`` is not read here and the
                cache keeps no mask); ``None``: padding comes from ``token_mask`` and the cache's mask.

        Returns:
            ``(out [B, T, hidden_size], probs [B, Hq, T, S] or None)``.
        """
        B, T, _ = x.shape
        Hq, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if rope is None:
            rope = rotary_tables(position_ids, D, theta=self.rope_theta)
        parts = dict(zip(self.in_widths, self.in_proj(x).split(list(self.in_widths.values()), dim=-1)))
        q = apply_rotary(self.q_norm(parts["q"].view(B, T, Hq, D)), rope)
        k = apply_rotary(self.k_norm(parts["k"].view(B, T, Hkv, D)), rope)
        v = parts["v"].view(B, T, Hkv, D)
        gate = None
        if self.gate == "elementwise":
            gate = parts["gate"].view(B, T, Hq, D)
        elif self.gate == "headwise":
            gate = parts["gate"]
        if padding is not None:
            if cache is not None:
                k, v, _ = cache.update(k, v, None)
            S = k.shape[1]
            first = [max(0, lead - (padding.total - S)) for lead in padding.lead]
            o, probs = self._attend_rows(q, k, v, gate, first, output_attentions)
            return self.o_proj(o.reshape(B, T, Hq * D)), probs
        key_mask = token_mask
        if cache is not None:
            k, v, key_mask = cache.update(k, v, token_mask)
        if key_mask is not None and bool(key_mask.all()):
            key_mask = None
        if key_mask is None:
            o = ops.gated_attention(q, k, v, gate, causal=True, window=self.window, cu_seqlens=cu_seqlens)
            probs = None
            if output_attentions:
                probs = _attention_weights(q, k, causal=True, window=self.window, cu_seqlens=cu_seqlens)
        else:
            o, probs = self._attend_padded(q, k, v, gate, key_mask, output_attentions)
        return self.o_proj(o.reshape(B, T, Hq * D)), probs

    def prepare_compiled(self, T: int, device: torch.device, cu_seqlens: Tensor | None = None) -> None:
        """Build, eagerly, what a compiled training forward of ``T`` tokens would otherwise trace
        into its graph and rebuild at every call: the sliding window's FlexAttention block mask
        (CUDA, unpacked; see :func:`gatedelta.ops.attention.cached_block_mask`). The models'
        blocks call it before their compiled :meth:`~gatedelta.models.modeling.Block.mix`."""
        if self.window is not None and self.window < T and cu_seqlens is None and device.type == "cuda":
            from ..ops.attention import cached_block_mask

            cached_block_mask(T, T, causal=True, window=self.window, device=device)

    def _attend_padded(
        self, q: Tensor, k: Tensor, v: Tensor, gate: Tensor | None, key_mask: Tensor, output_attentions: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Padding given as a key mask (a layer used on its own): read it on the host, then
        :meth:`_attend_rows`. The model reads its mask once per forward instead (``padding``)."""
        S = k.shape[1]
        real = key_mask.sum(dim=1)
        lead = (~key_mask).long().cumprod(dim=1).sum(dim=1)  # leading pads per row
        trail = (~key_mask).flip(1).long().cumprod(dim=1).sum(dim=1)
        if bool(((lead + real + trail != S) & (real > 0)).any()):
            raise ValueError(PADDING_LAYOUT_ERROR)
        return self._attend_rows(q, k, v, gate, lead.tolist(), output_attentions)

    def _attend_rows(
        self, q: Tensor, k: Tensor, v: Tensor, gate: Tensor | None, first: list[int], output_attentions: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Row by row, attend only from the first real key ``first[b]`` on.

        ``ops.gated_attention`` has no key-padding mask, but its ``S ≥ T`` form (queries are the last
        ``T`` key positions) is exactly what a left-padded row needs once its leading pads are cut
        off. Trailing pads need nothing: causality already hides them from every real query. Used only
        for padded batches (generation), so the loop over rows costs little.
        """
        B, T = q.shape[:2]
        S = k.shape[1]
        if max(first) == 0:  # right padding only (or the pads left the window): causality hides them
            o = ops.gated_attention(q, k, v, gate, causal=True, window=self.window)
            probs = None
            if output_attentions:
                probs = _attention_weights(q, k, causal=True, window=self.window, cu_seqlens=None)
            return o, probs
        o = torch.zeros_like(q)
        probs = q.new_zeros(B, self.num_heads, T, S, dtype=torch.float32) if output_attentions else None
        for b, s0 in enumerate(first):
            n_keys = S - s0
            t0 = max(0, T - n_keys)  # queries before t0 are themselves padding
            if n_keys <= 0 or t0 == T:
                continue
            qb, kb, vb = q[b:b + 1, t0:], k[b:b + 1, s0:], v[b:b + 1, s0:]
            gb = None if gate is None else gate[b:b + 1, t0:]
            o[b:b + 1, t0:] = ops.gated_attention(qb, kb, vb, gb, causal=True, window=self.window)
            if probs is not None:
                pb = _attention_weights(qb, kb, causal=True, window=self.window, cu_seqlens=None)
                probs[b, :, t0:, s0:] = pb[0].float()
        return o, probs


PADDING_LAYOUT_ERROR = (
    "attention_mask must pad only at the start (left padding) or the end of each row; "
    "for several sequences in one row, pack them with cu_seqlens instead"
)
