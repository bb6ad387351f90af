"""Gate forms and input validation shared by every backend.

Every public op in :mod:`gatedelta.ops` is one instance of the general recurrence (DESIGN §1)

    S_t = (I - k_t e_tᵀ) D_t S_{t-1} + k_t z_tᵀ,     o_t = S_tᵀ (scale · q_t)

with ``D_t = Diag(exp(g_t))``, ``e_t = b_t ⊙ k_t`` and ``z_t = w_t ⊙ v_t``. This module turns the
user's arguments into one normalised :class:`Recurrence` that backends consume. It is the only place
that checks user input, so every backend sees the same guarantees:

* ``q, k``: ``[B, T, H, K]``, ``v``: ``[B, T, HV, V]`` with ``HV % H == 0``; same dtype and device.
* ``g``: ``None`` (no decay), ``[B, T, HV]`` (per head) or ``[B, T, HV, K]`` (per key channel),
  float32 (float64 when the inputs are float64).
* ``b``: ``None`` (no erase), ``[B, T, HV]`` or ``[B, T, HV, K]``.
* ``w``: ``None`` (write 1), ``[B, T, HV]`` or ``[B, T, HV, V]``.
* Gates given with ``H`` heads are expanded to ``HV`` (shared across each value-head group).
* ``initial_state``: ``None`` or ``[N, HV, K, V]`` in the state dtype; ``N = B`` or the number of
  packed sequences.

The form of each gate is read from its rank, so backends specialise on ``g.ndim`` etc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MAX_HEAD_DIM = 256
BACKENDS = ("triton", "torch", "reference")


@dataclass
class Recurrence:
    """Normalised inputs of the general recurrence. Shapes as in the module docstring."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None
    b: torch.Tensor | None
    w: torch.Tensor | None
    scale: float
    initial_state: torch.Tensor | None
    output_final_state: bool
    cu_seqlens: torch.Tensor | None

    @property
    def num_sequences(self) -> int:
        return self.q.shape[0] if self.cu_seqlens is None else self.cu_seqlens.numel() - 1

    @property
    def state_dtype(self) -> torch.dtype:
        return state_dtype_for(self.v.dtype)

    def sequences(self) -> list[tuple[int, int, int]]:
        """``(batch_row, start, end)`` of each sequence, in state order."""
        T = self.q.shape[1]
        if self.cu_seqlens is None:
            return [(i, 0, T) for i in range(self.q.shape[0])]
        bounds = self.cu_seqlens.tolist()
        return [(0, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states are float32, or float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fmt(x: torch.Tensor | None) -> str:
    return "None" if x is None else f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"


def _check_tensor(name: str, x: object, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _expand_heads(name: str, x: torch.Tensor, H: int, HV: int) -> torch.Tensor:
    """A gate given with H heads is shared across each group of HV // H value heads."""
    if x.shape[2] == HV:
        return x
    if x.shape[2] == H:
        return x.repeat_interleave(HV // H, dim=2)
    raise ValueError(f"{name} has {x.shape[2]} heads (shape {_fmt(x)}); expected HV={HV} or H={H}")


def _check_gate(
    name: str,
    x: object,
    *,
    B: int,
    T: int,
    H: int,
    HV: int,
    channels: int | None,
    channel_name: str,
    allow_head: bool = True,
    allow_channel: bool = True,
    device: torch.device,
) -> torch.Tensor:
    x = _check_tensor(name, x)
    ok_rank = (x.ndim == 3 and allow_head) or (x.ndim == 4 and allow_channel)
    if (not ok_rank or tuple(x.shape[:2]) != (B, T) or x.shape[2] not in (H, HV)
            or (x.ndim == 4 and x.shape[3] != channels)):
        # the message is built only here: validation runs on every decode step
        forms = []
        if allow_head:
            forms.append(f"[B, T, HV or H] = [{B}, {T}, {HV} or {H}]")
        if allow_channel:
            forms.append(f"[B, T, HV or H, {channel_name}] = [{B}, {T}, {HV} or {H}, {channels}]")
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {' or '.join(forms)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}")
    return _expand_heads(name, x, H, HV)


def validate(
    q: object,
    k: object,
    v: object,
    *,
    g: object = None,
    b: object = None,
    w: object = None,
    g_forms: tuple[str, ...] = ("head", "channel"),
    b_forms: tuple[str, ...] = ("head", "channel"),
    w_forms: tuple[str, ...] = ("head", "channel"),
    gate_names: tuple[str, str, str] = ("g", "b", "w"),
    scale: float | None = None,
    initial_state: object = None,
    output_final_state: bool = False,
    cu_seqlens: object = None,
) -> Recurrence:
    """Check the user's arguments and return the normalised :class:`Recurrence`.

    Raises ``TypeError`` for wrong types/dtypes and ``ValueError`` for wrong shapes, devices or
    values, each naming the argument and the shapes involved.
    """
    q = _check_tensor("q", q)
    k = _check_tensor("k", k)
    v = _check_tensor("v", v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dims [B, T, heads, dim], got shape {tuple(x.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, T, H, K], got q {_fmt(q)} and k {_fmt(k)}")
    B, T, H, K = q.shape
    if tuple(v.shape[:2]) != (B, T):
        raise ValueError(f"v must be [B, T, HV, V] with B, T = {B}, {T} of q, got v {_fmt(v)}")
    HV, V = v.shape[2], v.shape[3]
    if HV % H != 0:
        raise ValueError(f"v heads HV={HV} must be a multiple of q/k heads H={H} (q {_fmt(q)}, v {_fmt(v)})")
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"head dims K={K}, V={V} exceed the supported maximum {MAX_HEAD_DIM}")
    if K == 0 or V == 0 or H == 0:
        raise ValueError(f"empty head dimension: q {_fmt(q)}, v {_fmt(v)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    device = q.device
    sdtype = state_dtype_for(v.dtype)
    common = dict(B=B, T=T, H=H, HV=HV, device=device)

    g_name, b_name, w_name = gate_names
    if g is not None:
        g = _check_gate(
            g_name, g, channels=K, channel_name="K", allow_head="head" in g_forms,
            allow_channel="channel" in g_forms, **common,
        )
        if g.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{g_name} (log-decay) must be float32 (or float64), got {g.dtype}; "
                f"compute it in float32: log-decays near 0 lose their precision in {g.dtype}"
            )
        g = g.to(sdtype)
        if g.device.type == "cpu" and not _compiling():
            # A value check needs a device sync on GPUs; on the CPU it is cheap and catches a sign
            # error (g > 0 grows the state without bound) before it becomes a NaN far away.
            # One read-only pass: amax propagates NaN, and NaN compares False, so `amax <= 0` rules
            # out both NaN and g > 0 (~20x cheaper than `(g <= 0).all()`, which writes a mask).
            if g.numel() and not bool(g.amax() <= 0):
                raise ValueError(
                    f"{g_name} must be a log-decay in [-inf, 0] with no NaN; got max {g.max().item():.4g}"
                    f" (did you pass a decay instead of its log, or forget a minus sign?)"
                )
    if b is not None:
        b = _check_gate(
            b_name, b, channels=K, channel_name="K", allow_head="head" in b_forms,
            allow_channel="channel" in b_forms, **common,
        )
    if w is not None:
        w = _check_gate(
            w_name, w, channels=V, channel_name="V", allow_head="head" in w_forms,
            allow_channel="channel" in w_forms, **common,
        )

    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, q, name="q")
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1

    if initial_state is not None:
        initial_state = _check_tensor("initial_state", initial_state)
        if tuple(initial_state.shape) != (N, HV, K, V):
            raise ValueError(
                f"initial_state must be [N, HV, K, V] = [{N}, {HV}, {K}, {V}], "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.device != device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {device}")
        if initial_state.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"initial_state must be float32 (float64 for float64 inputs), got {initial_state.dtype}"
            )
        initial_state = initial_state.to(sdtype)

    scale = check_scale(scale, default=K**-0.5)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")

    return Recurrence(q, k, v, g, b, w, scale, initial_state, output_final_state, cu_seqlens)


def check_cu_seqlens(cu_seqlens: object, x: torch.Tensor, *, name: str) -> torch.Tensor:
    """Check packed-sequence offsets against the packed input ``x`` (``[1, T, ...]``).

    Args:
        cu_seqlens: ``[N+1]`` int32/int64 offsets, 0 first, ``T`` last, non-decreasing.
        x: the packed input whose dim 0 must be 1 and dim 1 is ``T``.
        name: how ``x`` is called in error messages.

    Returns:
        ``cu_seqlens`` on ``x``'s device.
    """
    cu_seqlens = _check_tensor("cu_seqlens", cu_seqlens, floating=False)
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [N+1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
    B, T = x.shape[0], x.shape[1]
    if B != 1:
        raise ValueError(f"cu_seqlens packs sequences into batch 1, but {name} has B={B} ({name} {_fmt(x)})")
    cu_host = [0, T] if _compiling() or _capturing(cu_seqlens) else cu_seqlens.tolist()
    if cu_host[0] != 0 or cu_host[-1] != T:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_host[0]} ... {cu_host[-1]}")
    if any(a > b_ for a, b_ in zip(cu_host[:-1], cu_host[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_host}")
    return cu_seqlens.to(x.device)


def check_scale(scale: object, *, default: float) -> float:
    """``scale`` as a float: ``default`` for ``None``, else a positive finite Python number."""
    if scale is None:
        return float(default)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python number, got {type(scale).__name__}")
    if not (scale > 0 and scale < float("inf")):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    return float(scale)


def _compiling() -> bool:
    """Value checks read tensor data; under torch.compile tracing there is none to read."""
    return torch.compiler.is_compiling()


def _capturing(x: torch.Tensor) -> bool:
    """Reading a CUDA tensor on the host syncs the device, which CUDA graph capture forbids."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``backend=None`` means ``GATEDELTA_BACKEND`` if set, else triton on CUDA, else torch."""
    if backend is None:
        backend = os.environ.get("GATEDELTA_BACKEND") or None
    if backend is None:
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x²) + eps)`` along the last dim, computed in float32 (or float64)."""
    xf = x.to(state_dtype_for(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
