"""Causal depthwise short convolution with a carried state, as used before q, k, v projections.

For each channel ``d`` and token ``t`` (width ``W``, history ``x_{<0}`` = the initial state or 0)::

    y_t[d] = act( Σ_{j<W} weight[d, j] · x_{t−(W−1)+j}[d] + bias[d] )

so ``weight[:, W−1]`` multiplies the current token. The state is the last ``W − 1`` inputs,
``[N, D, W−1]`` (oldest first), which is all a decoder needs to continue token by token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import _check_tensor, _fmt, check_cu_seqlens

__all__ = ["short_conv"]

Tensor = torch.Tensor

ACTIVATIONS = ("silu", None)


def short_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    activation: str | None = "silu",
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Causal depthwise convolution over time, optionally followed by SiLU.

    Token ``t`` mixes itself and the ``W − 1`` tokens before it, channel by channel; tokens before
    the start of a sequence come from ``initial_state`` (or are 0). Packed sequences never see
    each other.

    Args:
        x: ``[B, T, D]``.
        weight: ``[D, W]`` (or ``nn.Conv1d(D, D, W, groups=D).weight``'s ``[D, 1, W]``), x's dtype.
        bias: ``[D]`` or ``None``.
        activation: ``"silu"`` (default) or ``None``.
        initial_state: ``[N, D, W−1]``, the ``W − 1`` inputs before each sequence, oldest first;
            N = B, or the number of packed sequences. Cast to x's dtype. Default zeros.
        output_final_state: also return the last ``W − 1`` inputs of each sequence.
        cu_seqlens: ``[N+1]`` int offsets packing N sequences into batch 1 (B must be 1).

    Returns:
        ``(y [B, T, D] in x's dtype, final_state [N, D, W−1] in x's dtype or None)``.

    Decoding: ``y, s = short_conv(x_t, w, initial_state=s, output_final_state=True)`` with
    ``x_t: [B, 1, D]`` gives the same ``y`` as the full sequence.

    Varlen example::

        cu = torch.tensor([0, 5, 12], dtype=torch.int32)
        y, s = ops.short_conv(x, w, cu_seqlens=cu, output_final_state=True)   # x: [1, 12, D]
    """
    x, weight, bias, initial_state, cu_seqlens = _validate(
        x, weight, bias, activation, initial_state, output_final_state, cu_seqlens
    )
    if x.shape[1] == 0:  # conv1d refuses inputs shorter than the kernel
        y, state = x, _empty_history(x, weight, initial_state, cu_seqlens)
    elif cu_seqlens is None:
        y, state = _conv_batched(x, weight, bias, initial_state)
    else:
        y, state = _conv_packed(x, weight, bias, initial_state, cu_seqlens)
    if activation == "silu":
        y = F.silu(y)
    return y, (state if output_final_state else None)


def _empty_history(
    x: Tensor, weight: Tensor, initial_state: Tensor | None, cu_seqlens: Tensor | None
) -> Tensor:
    N = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None:
        return initial_state
    return x.new_zeros(N, x.shape[2], weight.shape[1] - 1)


def _conv_batched(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One ``conv1d(groups=D)`` over ``[history ‖ x]`` per batch row."""
    B, T, D = x.shape
    W = weight.shape[1]
    if initial_state is None:  # zero history: one pad kernel instead of zeros + cat
        xp = F.pad(x.transpose(1, 2), (W - 1, 0))  # (B, D, W−1+T)
    else:
        xp = torch.cat([initial_state, x.transpose(1, 2)], dim=2)
    if T == 1:
        # a decode step: one window per channel; a product and a sum cost far less host time
        # than a conv1d call (which goes through the cuDNN / oneDNN convolution setup)
        y = (xp * weight).sum(-1, keepdim=True)  # (B, D, 1)
        if bias is not None:
            y = y + bias[:, None]
    else:
        y = F.conv1d(xp, weight.unsqueeze(1), bias, groups=D)  # (B, D, T)
    return y.transpose(1, 2), xp[:, :, T:]


def _conv_packed(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None, cu_seqlens: Tensor
) -> tuple[Tensor, Tensor]:
    """Packed sequences: give each its own ``W − 1`` history slots, then one ``conv1d``.

    The stream becomes ``[h_0 ‖ x_0 ‖ h_1 ‖ x_1 ‖ …]`` (one gather, no loop over tokens), so no
    window that produces a kept output crosses a sequence boundary. Outputs whose window would
    straddle two sequences are computed and dropped.
    """
    _, T, D = x.shape
    W = weight.shape[1]
    N = cu_seqlens.numel() - 1
    device = x.device
    cu = cu_seqlens.to(torch.int64)
    tokens = torch.arange(T, device=device)
    seq = torch.searchsorted(cu[1:], tokens, right=True)  # sequence of each token
    slots = torch.arange(W - 1, device=device)
    seq_idx = torch.arange(N, device=device)

    # Padded positions: sequence n starts at cu[n] + n·(W−1); its history fills the first W−1.
    token_pos = tokens + (seq + 1) * (W - 1)
    hist_pos = (cu[:-1] + seq_idx * (W - 1))[:, None] + slots  # (N, W−1)
    history = initial_state if initial_state is not None else x.new_zeros(N, D, W - 1)
    # Source rows: N·(W−1) history rows, then the T tokens.
    source = torch.cat([history.transpose(1, 2).reshape(N * (W - 1), D), x[0]], dim=0)
    gather = torch.empty(T + N * (W - 1), dtype=torch.int64, device=device)
    gather[hist_pos.reshape(-1)] = torch.arange(N * (W - 1), device=device)
    gather[token_pos] = tokens + N * (W - 1)
    xp = source[gather].t().unsqueeze(0)  # (1, D, T + N·(W−1))

    y = F.conv1d(xp, weight.unsqueeze(1), bias, groups=D)[0]  # output i ends at padded i + W − 1
    y = y[:, token_pos - (W - 1)].t().unsqueeze(0)
    # Final state of sequence n: the W−1 padded positions before the next sequence's history.
    last = (cu[1:] + seq_idx * (W - 1))[:, None] + slots  # (N, W−1)
    state = xp[0][:, last].permute(1, 0, 2)  # (N, D, W−1)
    return y, state


def _validate(
    x: object,
    weight: object,
    bias: object,
    activation: object,
    initial_state: object,
    output_final_state: object,
    cu_seqlens: object,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Check the arguments; raise TypeError/ValueError naming the bad one and the shapes."""
    x = _check_tensor("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must have 3 dims [B, T, D], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    weight = _check_weight(weight, x)
    W = weight.shape[1]
    if bias is not None:
        bias = _check_tensor("bias", bias)
        if tuple(bias.shape) != (D,):
            raise ValueError(f"bias must be [D] = [{D}], got {tuple(bias.shape)} (x {_fmt(x)})")
        _same_dtype_device("bias", bias, x)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")
    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, x, name="x")
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None:
        initial_state = _check_tensor("initial_state", initial_state)
        if tuple(initial_state.shape) != (N, D, W - 1):
            raise ValueError(
                f"initial_state must be [N, D, W-1] = [{N}, {D}, {W - 1}], got {tuple(initial_state.shape)}"
                + ("" if cu_seqlens is None else f" (N = {N} packed sequences)")
            )
        if initial_state.device != x.device:
            raise ValueError(f"initial_state is on {initial_state.device} but x is on {x.device}")
        initial_state = initial_state.to(x.dtype)
    return x, weight, bias, initial_state, cu_seqlens


def _check_weight(weight: object, x: Tensor) -> Tensor:
    """``[D, W]``, or the ``[D, 1, W]`` of ``nn.Conv1d(groups=D)``, returned as ``[D, W]``."""
    weight = _check_tensor("weight", weight)
    D = x.shape[2]
    if weight.ndim == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if weight.ndim != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        raise ValueError(
            f"weight must be [D, W] = [{D}, W] with W >= 1, got {tuple(weight.shape)} (x {_fmt(x)})"
        )
    _same_dtype_device("weight", weight, x)
    return weight


def _same_dtype_device(name: str, t: Tensor, x: Tensor) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
