"""Gated softmax attention: causal, sliding-window, grouped-query and packed (varlen).

``o = softmax(scale · q kᵀ + mask) v ⊙ sigmoid(gate)`` — the output gate G1 of the Gated
Attention paper, applied to each head's output before the output projection.

Positions. Keys sit at positions ``0 … S−1``. With ``causal=True`` the ``T`` queries are the *last*
``T`` positions (query ``i`` is at ``S − T + i``), so prefill (``T == S``), chunked prefill and
decoding against a KV cache (``T < S``) all use one convention. Query at position ``p`` sees key
``s`` when

* ``causal``: ``s ≤ p``;
* ``window=W``: also ``s > p − W`` — ``W`` keys including itself (the Mistral / Hugging Face
  ``sliding_window`` convention; ``W = 1`` attends only to itself);
* ``cu_seqlens``: also ``s`` in the same packed sequence as ``p`` (``T == S``).

Backends, picked per call:

* torch SDPA when no window and no packing is left (``enable_gqa`` where torch has it);
* FlexAttention on CUDA for windows and packed sequences;
* an exact masked path elsewhere (the CPU): float32 (float64) softmax over query chunks, each
  against only the keys it can see, so memory is ``O(chunk · span)`` instead of ``O(T · S)``.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .spec import _check_tensor, _fmt, check_cu_seqlens, check_scale, state_dtype_for

__all__ = ["gated_attention", "attention_weights"]

Tensor = torch.Tensor

# Score elements per query chunk of the masked path (fp32: 64 MiB).
_CHUNK_BUDGET = 1 << 24
_MIN_CHUNK, _MAX_CHUNK = 16, 1024
# enable_gqa arrived in torch 2.5; older torch gets explicitly repeated heads.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass
class _Attention:
    """Validated arguments. ``offset`` is the position of query 0 (``S − T`` if causal, else 0)."""

    q: Tensor
    k: Tensor
    v: Tensor | None
    gate: Tensor | None
    causal: bool
    window: int | None
    scale: float
    cu_seqlens: Tensor | None

    @property
    def offset(self) -> int:
        return self.k.shape[1] - self.q.shape[1] if self.causal else 0


def gated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor | None = None,
    *,
    causal: bool = True,
    window: int | None = None,
    scale: float | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Softmax attention with an optional sigmoid output gate, sliding window, GQA and packing.

    ``o = softmax(scale · q kᵀ + mask) v``, then ``o ⊙ sigmoid(gate)``. See the module docstring
    for the exact mask (queries are the last ``T`` of the ``S`` key positions when causal).

    Args:
        q: ``[B, T, Hq, D]``.
        k: ``[B, S, Hkv, D]`` with ``Hq % Hkv == 0`` (grouped-query attention).
        v: ``[B, S, Hkv, Dv]`` (usually ``Dv == D``). q, k, v share dtype and device.
        gate: logits of the output gate, ``[B, T, Hq]`` (headwise) or ``[B, T, Hq, Dv]``
            (elementwise), or ``None`` (no gate); any float dtype. The op applies the sigmoid
            (in float32) and multiplies each head's output by it.
        causal: mask future keys; needs ``S ≥ T``. Default ``True``.
        window: sliding window ``W ≥ 1``: query at ``p`` sees keys in ``(p − W, p]``. Needs
            ``causal=True``. Default ``None`` (no window).
        scale: multiplies ``q kᵀ``; default ``D ** -0.5``.
        cu_seqlens: ``[N+1]`` int offsets packing N sequences into batch 1 (``B == 1``,
            ``T == S``); no token attends across sequences.

    Returns:
        ``o``: ``[B, T, Hq, Dv]`` in q's dtype.

    Example (two packed sequences of 100 and 156 tokens, window 64)::

        cu = torch.tensor([0, 100, 256], dtype=torch.int32)
        o = ops.gated_attention(q, k, v, gate, window=64, cu_seqlens=cu)   # q, k, v: [1, 256, H, D]
    """
    _check_tensor("v", v)  # _validate also serves attention_weights, which has no v
    a = _validate(q, k, v, gate, causal=causal, window=window, scale=scale, cu_seqlens=cu_seqlens)
    if a.q.shape[1] == 0:
        return q.new_empty(*q.shape[:3], v.shape[3])
    a = _simplify(a)
    o = None
    if a.window is None and a.cu_seqlens is None:
        o = _sdpa(a)
    elif a.q.device.type == "cuda":
        o = _flex(a)
    if o is None:
        o = _masked(a)
    return _apply_gate(o, a.gate, q.dtype)


def attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = True,
    window: int | None = None,
    scale: float | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """The explicit softmax probabilities of :func:`gated_attention` (for diagnostics).

    Row ``[b, h, i]`` is query ``i``'s distribution over the ``S`` keys, exactly 0 where masked.
    Used for e.g. the attention-sink share (``weights[..., 0].mean()``). Memory is ``O(T · S)``.

    Args:
        q: ``[B, T, Hq, D]``. k: ``[B, S, Hkv, D]``.
        causal, window, scale, cu_seqlens: as in :func:`gated_attention`.

    Returns:
        ``[B, Hq, T, S]``, float32 (float64 for float64 inputs).
    """
    a = _validate(q, k, None, None, causal=causal, window=window, scale=scale, cu_seqlens=cu_seqlens)
    B, T, Hq, _ = q.shape
    S = k.shape[1]
    qpos = torch.arange(T, device=q.device) + a.offset
    kpos = torch.arange(S, device=q.device)
    seq = _sequence_ids(a.cu_seqlens, S)
    mask = _mask(qpos, kpos, a, seq, seq)
    p = _probs(a.q, a.k, mask, a.scale)  # [B, Hkv, G, T, S]
    return p.reshape(B, Hq, T, S)


def _validate(
    q: object,
    k: object,
    v: object | None,
    gate: object | None,
    *,
    causal: object,
    window: object,
    scale: object,
    cu_seqlens: object,
) -> _Attention:
    """Check every argument once; raise TypeError/ValueError naming it and the shapes."""
    q, k, v = _check_qkv(q, k, v)
    T, D, S = q.shape[1], q.shape[3], k.shape[1]
    if gate is not None:
        assert v is not None
        gate = _check_gate(gate, q, v)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and S < T:
        raise ValueError(
            f"causal attention puts the T={T} queries at the last T of the S={S} key positions, so it "
            f"needs S >= T (q {_fmt(q)}, k {_fmt(k)})"
        )
    window = _check_window(window, causal)
    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, q, name="q")
        if S != T:
            raise ValueError(
                f"cu_seqlens needs as many keys as queries, got T={T}, S={S} (q {_fmt(q)}, k {_fmt(k)})"
            )
    scale = check_scale(scale, default=D**-0.5)
    return _Attention(q, k, v, gate, causal, window, scale, cu_seqlens)


def _check_qkv(q: object, k: object, v: object | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Types, ranks, head counts, dtypes and devices of q, k and v (``v`` may be absent)."""
    named = {"q": _check_tensor("q", q), "k": _check_tensor("k", k)}
    if v is not None:
        named["v"] = _check_tensor("v", v)
    for name, x in named.items():
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dims [B, T or S, heads, dim], got shape {tuple(x.shape)}")
    q, k, v = named["q"], named["k"], named.get("v")
    B, T, Hq, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    shapes = ", ".join(f"{n} {_fmt(x)}" for n, x in named.items())
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k must be [B, S, Hkv, D] with B={B}, D={D} of q, got {shapes}")
    if v is not None and tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"v must be [B, S, Hkv, Dv] matching k's [B, S, Hkv], got {shapes}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q heads Hq={Hq} must be a multiple of k/v heads Hkv={Hkv}, got {shapes}")
    if D == 0 or S == 0 or (v is not None and v.shape[3] == 0):
        raise ValueError(f"empty key length or head dim: {shapes}")
    if len({x.dtype for x in named.values()}) != 1:
        raise TypeError(f"q, k, v must share one dtype, got {shapes}")
    if len({x.device for x in named.values()}) != 1:
        devices = ", ".join(f"{n} on {x.device}" for n, x in named.items())
        raise ValueError(f"q, k, v must be on one device, got {devices}")
    return q, k, v


def _check_gate(gate: object, q: Tensor, v: Tensor) -> Tensor:
    gate = _check_tensor("gate", gate)
    B, T, Hq, _ = q.shape
    Dv = v.shape[3]
    if tuple(gate.shape) not in ((B, T, Hq), (B, T, Hq, Dv)):
        raise ValueError(
            f"gate must be headwise [B, T, Hq] = [{B}, {T}, {Hq}] or elementwise [B, T, Hq, Dv] = "
            f"[{B}, {T}, {Hq}, {Dv}], got {tuple(gate.shape)}"
        )
    if gate.device != q.device:
        raise ValueError(f"gate is on {gate.device} but q is on {q.device}")
    return gate


def _check_window(window: object, causal: bool) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int or None, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be >= 1 (the keys each query sees, itself included), got {window}")
    if not causal:
        raise ValueError(f"window={window} is a causal sliding window; pass causal=True")
    return window


def _simplify(a: _Attention) -> _Attention:
    """Drop what cannot change the result, so more calls reach SDPA.

    With a window the keys before ``S − T − W + 1`` are invisible to every query: slice them off
    (a view). A window as long as the remaining keys is no window; one packed sequence is none.
    A single causal query sees every key (it is the last position).
    """
    T, S = a.q.shape[1], a.k.shape[1]
    k, v, window, causal, cu = a.k, a.v, a.window, a.causal, a.cu_seqlens
    if cu is not None and cu.numel() == 2:
        cu = None
    if window is not None and cu is None:
        lo = max(0, S - T - window + 1)
        k, v, S = k[:, lo:], v[:, lo:], S - lo
        if window >= S:
            window = None
    if causal and T == 1 and window is None and cu is None:
        causal = False
    return _Attention(a.q, k, v, a.gate, causal, window, a.scale, cu)


def _apply_gate(o: Tensor, gate: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``o ⊙ sigmoid(gate)`` computed in float32 (float64), returned in ``dtype``."""
    if gate is None:
        return o.to(dtype)
    cdtype = state_dtype_for(dtype)
    g = torch.sigmoid(gate.to(cdtype))
    if g.ndim == 3:
        g = g.unsqueeze(-1)
    return (o.to(cdtype) * g).to(dtype)


def _sdpa(a: _Attention) -> Tensor:
    """torch SDPA on ``[B, H, T, D]`` views; causal with ``S > T`` uses a lower-right mask."""
    q, k, v = a.q.transpose(1, 2), a.k.transpose(1, 2), a.v.transpose(1, 2)
    T, S = q.shape[2], k.shape[2]
    kwargs: dict = {"scale": a.scale}
    if q.shape[1] != k.shape[1]:
        if _SDPA_GQA:
            kwargs["enable_gqa"] = True
        else:
            G = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    if a.causal and T == S:
        kwargs["is_causal"] = True
    elif a.causal:
        kwargs["attn_mask"] = _lower_right_causal(T, S, q.device)
    if T != S and q.device.type == "cuda" and not torch.compiler.is_compiling():
        # Queries against a longer key cache (decoding, chunked prefill): the key length changes
        # from call to call. On Hopper/Blackwell, torch >= 2.9 with a recent cuDNN prefers the cuDNN
        # SDPA backend, which builds (and caches) one execution graph per shape: milliseconds per
        # new key length, i.e. per layer per decoded token. Flash / memory-efficient attention have
        # no per-shape setup, so cuDNN is left out for these calls (training, T == S, keeps it).
        with _sdpa_without_cudnn():
            o = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return o.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2)


def _sdpa_without_cudnn() -> object:
    """A context in which SDPA picks flash, memory-efficient or math attention, never cuDNN."""
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(_non_cudnn_backends())


@functools.cache
def _non_cudnn_backends() -> list:
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _lower_right_causal(T: int, S: int, device: torch.device) -> object:
    """Causal mask with the queries at the end; SDPA's ``is_causal`` aligns them at the start."""
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        i = torch.arange(T, device=device)[:, None] + (S - T)
        return torch.arange(S, device=device)[None, :] <= i
    return causal_lower_right(T, S)


def _flex(a: _Attention) -> Tensor | None:
    """FlexAttention with a block mask, or ``None`` (after one warning) where it is unavailable."""
    if a.q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    try:
        from torch.nn.attention.flex_attention import flex_attention

        block_mask = _flex_block_mask(a)
        fn = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
        q, k, v = a.q.transpose(1, 2), a.k.transpose(1, 2), a.v.transpose(1, 2)
        o = fn(q, k, v, block_mask=block_mask, scale=a.scale, enable_gqa=q.shape[1] != k.shape[1])
    except Exception as e:  # an old torch, an unsupported head dim, a compile failure
        _warn_once(f"gated_attention: FlexAttention failed ({type(e).__name__}: {e}); using the masked path")
        return None
    return o.transpose(1, 2)


def _flex_block_mask(a: _Attention) -> object:
    T, S = a.q.shape[1], a.k.shape[1]
    if a.cu_seqlens is None:
        return cached_block_mask(T, S, causal=a.causal, window=a.window, device=a.q.device)
    if torch.compiler.is_compiling():  # reading the offsets on the host would break the graph
        return _build_block_mask(T, S, a.offset, a.causal, a.window, _sequence_ids(a.cu_seqlens, S))
    return packed_block_mask(T, S, a.cu_seqlens, causal=a.causal, window=a.window)


# FlexAttention block masks by (T, S, offset, causal, window, device), oldest evicted first. A plain
# dict rather than functools.lru_cache: Dynamo traces *through* an lru_cache (rebuilding the mask,
# an O(T·S) vmap, inside every compiled graph at every call), whereas a mask found in this dict
# enters a compiled graph as its eight index tensors.
_BLOCK_MASKS: dict[tuple, object] = {}
_BLOCK_MASKS_MAX = 16


def cached_block_mask(
    T: int, S: int, *, causal: bool = True, window: int | None = None, device: torch.device | str = "cuda"
) -> object:
    """The FlexAttention block mask that :func:`gated_attention` uses for unpacked ``T`` queries
    against ``S`` keys (after its key slicing: ``S == T`` in training), built once and reused by
    every layer and step with the same shapes.

    Call it eagerly before a compiled region that runs windowed attention (the models' blocks do,
    see :meth:`gatedelta.layers.GatedAttention.prepare_compiled`): inside the region the mask is
    then read, not rebuilt. Built inside a compiled region it is correct but traced into the graph
    and not kept.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # one key for "cuda" and "cuda:0"
        device = torch.device("cuda", torch.cuda.current_device())
    offset = S - T if causal else 0
    key = (T, S, offset, causal, window, device)
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        mask = _build_block_mask(T, S, offset, causal, window, None, device)
        if not torch.compiler.is_compiling():
            if len(_BLOCK_MASKS) >= _BLOCK_MASKS_MAX:
                _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
            _BLOCK_MASKS[key] = mask
    return mask


# Packed-sequence masks, keyed by the offsets' values: every attention layer of one model forward
# gets the same cu_seqlens, so one mask serves them all (and the next step's, for a fixed packing).
_PACKED_MASKS: dict[tuple, object] = {}
_PACKED_MASKS_MAX = 4


def packed_block_mask(
    T: int, S: int, cu_seqlens: Tensor, *, causal: bool = True, window: int | None = None
) -> object:
    """The FlexAttention block mask of :func:`gated_attention` for packed sequences (``cu_seqlens
    [N+1]``, ``T`` queries against ``S`` keys), built once per distinct packing and reused: a model
    forward asks for it once per attention layer. Reads the offsets on the host (one sync, like
    the recurrent kernels' own chunk bookkeeping); a compiled caller builds it in its graph
    instead (see :func:`cached_block_mask`)."""
    device = cu_seqlens.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    offset = S - T if causal else 0
    key = (T, S, offset, causal, window, device, tuple(cu_seqlens.tolist()))
    mask = _PACKED_MASKS.get(key)
    if mask is None:
        mask = _build_block_mask(T, S, offset, causal, window, _sequence_ids(cu_seqlens, S))
        if len(_PACKED_MASKS) >= _PACKED_MASKS_MAX:
            _PACKED_MASKS.pop(next(iter(_PACKED_MASKS)))
        _PACKED_MASKS[key] = mask
    return mask


def _build_block_mask(
    T: int,
    S: int,
    offset: int,
    causal: bool,
    window: int | None,
    seq: Tensor | None,
    device: torch.device | None = None,
) -> object:
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    mods = []
    if causal:
        mods.append(lambda b, h, qi, kj: kj <= qi + offset)
    if window is not None:
        mods.append(lambda b, h, qi, kj: kj > qi + offset - window)
    if seq is not None:
        mods.append(lambda b, h, qi, kj: seq[qi] == seq[kj])
        device = seq.device
    assert mods, "the SDPA path handles the unmasked case"
    return create_block_mask(and_masks(*mods), None, None, T, S, device=device)


@functools.cache
def _compiled_flex():
    # Eager flex_attention materialises the scores; compiled, it is a fused kernel.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _masked(a: _Attention) -> Tensor:
    """Attention chunk by chunk of queries, each against the contiguous span of keys it can see.

    Returns ``[B, T, Hq, Dv]`` in float32 (float64 for float64 inputs). With gradients on, each
    chunk is recomputed in the backward pass so saved memory stays ``O(chunk · span)`` per chunk.
    """
    B, T, Hq, _ = a.q.shape
    S = a.k.shape[1]
    device = a.q.device
    seq = _sequence_ids(a.cu_seqlens, S)
    cu_host = None if a.cu_seqlens is None else a.cu_seqlens.tolist()
    chunk = _chunk_size(B * Hq, T, S, a.window)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (a.q, a.k, a.v))
    outs = []
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        lo, hi = _key_span(t0, t1, a, cu_host)
        qpos = torch.arange(t0, t1, device=device) + a.offset
        kpos = torch.arange(lo, hi, device=device)
        mask = _mask(qpos, kpos, a, _slice(seq, t0, t1), _slice(seq, lo, hi))
        args = (a.q[:, t0:t1], a.k[:, lo:hi], a.v[:, lo:hi], mask, a.scale)
        if needs_grad and chunk < T:
            outs.append(checkpoint(_attend, *args, use_reentrant=False))
        else:
            outs.append(_attend(*args))
    return torch.cat(outs, dim=1)


def _chunk_size(heads: int, T: int, S: int, window: int | None) -> int:
    span = S if window is None else min(S, window + _MAX_CHUNK)
    chunk = _CHUNK_BUDGET // max(1, heads * span)
    return max(_MIN_CHUNK, min(_MAX_CHUNK, chunk, T))


def _key_span(t0: int, t1: int, a: _Attention, cu_host: list[int] | None) -> tuple[int, int]:
    """Keys ``[lo, hi)`` visible to some query in ``[t0, t1)``.

    The first visible key and the last visible key never decrease with the query index, so the
    first query fixes ``lo`` and the last one fixes ``hi``.
    """
    lo, hi = 0, a.k.shape[1]
    first, last = t0 + a.offset, t1 - 1 + a.offset
    if a.causal:
        hi = last + 1
    if a.window is not None:
        lo = max(lo, first - a.window + 1)
    if cu_host is not None:
        lo = max(lo, cu_host[bisect.bisect_right(cu_host, t0) - 1])
        hi = min(hi, cu_host[bisect.bisect_right(cu_host, t1 - 1)])
    return lo, hi


def _sequence_ids(cu_seqlens: Tensor | None, length: int) -> Tensor | None:
    """Packed-sequence index of each position (empty sequences own none)."""
    if cu_seqlens is None:
        return None
    pos = torch.arange(length, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64), pos, right=True)


def _slice(x: Tensor | None, start: int, end: int) -> Tensor | None:
    return None if x is None else x[start:end]


def _mask(
    qpos: Tensor, kpos: Tensor, a: _Attention, qseq: Tensor | None, kseq: Tensor | None
) -> Tensor | None:
    """``[Tq, Sk]`` bool, True where query position ``qpos`` may see key position ``kpos``."""
    conds = []
    if a.causal:
        conds.append(kpos[None, :] <= qpos[:, None])
    if a.window is not None:
        conds.append(kpos[None, :] > qpos[:, None] - a.window)
    if qseq is not None:
        conds.append(kseq[None, :] == qseq[:, None])
    if not conds:
        return None
    mask = conds[0]
    for c in conds[1:]:
        mask = mask & c
    return mask


def _probs(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Softmax over keys, ``[B, Hkv, G, Tq, Sk]``, in float32 (float64); G query heads per kv head.

    Grouped heads are a reshape of q, never a repeat of k.
    """
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    cdtype = state_dtype_for(q.dtype)
    qg = q.to(cdtype).reshape(B, Tq, Hkv, Hq // Hkv, D)
    scores = torch.einsum("btngd,bsnd->bngts", qg, k.to(cdtype)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """One query chunk: ``[B, Tq, Hq, Dv]`` in float32 (float64)."""
    p = _probs(q, k, mask, scale)
    o = torch.einsum("bngts,bsnd->btngd", p, v.to(p.dtype))
    return o.reshape(q.shape[0], q.shape[1], q.shape[2], v.shape[3])
