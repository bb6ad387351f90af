"""Functional token mixers: ``(q, k, v, gates, state) -> (o, state)``.

Every op below is one row of DESIGN §1's table, i.e. one instance of

    S_t = (I − k_t e_tᵀ) Diag(exp(g_t)) S_{t−1} + k_t z_tᵀ,    o_t = S_tᵀ (scale · q_t)

with erase ``e_t = b_t ⊙ k_t`` and write ``z_t = w_t ⊙ v_t``. They share one signature order,
one validation (:func:`gatedelta.ops.spec.validate`) and one dispatch over the backends
``"reference"`` (token by token, the spec), ``"torch"`` (chunkwise WY in pure PyTorch, any device)
and ``"triton"`` (fused GPU kernels).

Common keyword arguments (all ops):
    scale: multiplies q; default ``K ** -0.5``.
    initial_state: ``[N, HV, K, V]`` float32 (float64 for float64 inputs); N = B, or the number of
        packed sequences with ``cu_seqlens``.
    output_final_state: also return the state after the last token (else ``None``).
    cu_seqlens: ``[N+1]`` int offsets packing N sequences into batch 1 (B must be 1).
    qk_l2norm: L2-normalise q and k over K first (as Gated DeltaNet layers do).
    backend: ``None`` (``GATEDELTA_BACKEND`` if set, else triton on CUDA, else torch),
        ``"triton"``, ``"torch"`` or ``"reference"``.

Shapes: ``q, k: [B, T, H, K]``, ``v: [B, T, HV, V]`` with ``HV % H == 0`` (grouped value heads).
A gate given with ``H`` heads is shared across each group of ``HV // H`` value heads.
Returns ``o: [B, T, HV, V]`` in ``v``'s dtype and the final state or ``None``.

Varlen example::

    cu = torch.tensor([0, 100, 356], dtype=torch.int32)
    o, S = ops.gdn(q, k, v, g, beta, cu_seqlens=cu, output_final_state=True)   # S: [2, HV, K, V]
"""

from __future__ import annotations

import torch

from . import reference
from .spec import Recurrence, l2norm, resolve_backend, validate

__all__ = [
    "gdn2", "kda", "gdn", "delta_rule", "gla", "ssd", "linear_attn", "recurrence",
    "gated_attention", "short_conv",
]

Tensor = torch.Tensor


def _run(r: Recurrence, qk_l2norm: bool, backend: str | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(qk_l2norm, bool):
        raise TypeError(f"qk_l2norm must be a bool, got {type(qk_l2norm).__name__}")
    name = resolve_backend(backend, r.q.device)
    if name == "triton" and r.q.device.type != "cuda":
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' needs CUDA tensors (q is on {r.q.device}); use backend='torch' "
                "or set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter"
            )
    if qk_l2norm:
        r.q, r.k = l2norm(r.q), l2norm(r.k)
    if name == "triton":
        # its kernels choose their own precision; autocast does not reach them
        from . import triton as triton_backend

        return triton_backend.recurrence(r)
    # The torch backends choose their own precision (fp32 states, fp32 or better products);
    # autocast would otherwise run the chunked path's matmuls and triangular solve in bf16.
    with torch.autocast(r.q.device.type, enabled=False):
        if name == "reference":
            return reference.recurrence(r)
        from . import chunked

        return chunked.recurrence(r)


def recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    b: Tensor | None = None,
    w: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The general recurrence with every gate optional (each ``None`` or per head / per channel).

    Args:
        g: log-decay, ``[B, T, HV]`` or ``[B, T, HV, K]``, float32, in ``[-inf, 0]``.
        b: erase gate, ``[B, T, HV]`` or ``[B, T, HV, K]``; ``None`` means no delta term.
        w: write gate, ``[B, T, HV]`` or ``[B, T, HV, V]``; ``None`` means 1.
    """
    r = validate(q, k, v, g=g, b=b, w=w, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def gdn2(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    b: Tensor,
    w: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated DeltaNet-2: channel-wise decay, erase and write gates, decoupled.

    ``S_t = (I − k_t (b_t⊙k_t)ᵀ) Diag(exp(g_t)) S_{t−1} + k_t (w_t⊙v_t)ᵀ``.

    Args:
        q, k: ``[B, T, H, K]``. v: ``[B, T, HV, V]``.
        g: log-decay ``[B, T, HV, K]`` (or ``[B, T, HV]``), float32, ≤ 0.
        b: erase gate ``[B, T, HV, K]`` (or per head), in [0, 1] ([0, 2] for negative eigenvalues).
        w: write gate ``[B, T, HV, V]`` (or per head).
        Other keywords: see :mod:`gatedelta.ops`.

    Returns:
        ``(o [B, T, HV, V], final_state [N, HV, K, V] or None)``.
    """
    r = validate(q, k, v, g=g, b=b, w=w, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def kda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Kimi Delta Attention: channel-wise decay, one β per head for erase and write.

    ``S_t = (I − β_t k_t k_tᵀ) Diag(exp(g_t)) S_{t−1} + β_t k_t v_tᵀ``.

    Args:
        g: ``[B, T, HV, K]`` float32 log-decay. beta: ``[B, T, HV]``.
        Other arguments: see :func:`gdn2`.
    """
    r = validate(q, k, v, g=g, b=beta, w=beta, g_forms=("channel",), b_forms=("head",),
                 w_forms=("head",), gate_names=("g", "beta", "beta"), scale=scale,
                 initial_state=initial_state, output_final_state=output_final_state,
                 cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def gdn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated DeltaNet: one log-decay and one β per head.

    ``S_t = (I − β_t k_t k_tᵀ) exp(g_t) S_{t−1} + β_t k_t v_tᵀ``.

    Args:
        g: ``[B, T, HV]`` float32 log-decay. beta: ``[B, T, HV]``.
        Other arguments: see :func:`gdn2`.
    """
    r = validate(q, k, v, g=g, b=beta, w=beta, g_forms=("head",), b_forms=("head",),
                 w_forms=("head",), gate_names=("g", "beta", "beta"), scale=scale,
                 initial_state=initial_state, output_final_state=output_final_state,
                 cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """DeltaNet: ``S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`` (no decay).

    Args:
        beta: ``[B, T, HV]``. Other arguments: see :func:`gdn2`.
    """
    r = validate(q, k, v, b=beta, w=beta, b_forms=("head",), w_forms=("head",),
                 gate_names=("g", "beta", "beta"), scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    w: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated linear attention: ``S_t = Diag(exp(g_t)) S_{t−1} + k_t (w_t⊙v_t)ᵀ``.

    Args:
        g: ``[B, T, HV, K]`` float32 log-decay. w: optional write scale, ``[B, T, HV]`` or
        ``[B, T, HV, V]``. Other arguments: see :func:`gdn2`.
    """
    r = validate(q, k, v, g=g, w=w, g_forms=("channel",), scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def ssd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    w: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Mamba2's state-space dual: ``S_t = exp(g_t) S_{t−1} + w_t k_t v_tᵀ`` (scalar decay per head).

    In Mamba2 terms q = C, k = B, v = x, ``g = dt · A`` and ``w = dt``; pass ``scale=1.0`` for
    Mamba2's unscaled readout.

    Args:
        g: ``[B, T, HV]`` float32 log-decay. w: optional ``[B, T, HV]`` write scale.
        Other arguments: see :func:`gdn2`.
    """
    r = validate(q, k, v, g=g, w=w, g_forms=("head",), w_forms=("head",), scale=scale,
                 initial_state=initial_state, output_final_state=output_final_state,
                 cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def linear_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Causal linear attention: ``S_t = S_{t−1} + k_t v_tᵀ``. Arguments: see :func:`gdn2`."""
    r = validate(q, k, v, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run(r, qk_l2norm, backend)


def __getattr__(name: str):
    # attention and conv are imported lazily so `import gatedelta.ops` stays light.
    if name == "gated_attention":
        from .attention import gated_attention

        return gated_attention
    if name == "short_conv":
        from .conv import short_conv

        return short_conv
    raise AttributeError(name)
