"""Per-layer decoding state. The model's cache (``gatedelta.models.cache``) holds one per layer.

Layers read and replace these in place, so a layer never needs to know about the model cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _nbytes(*xs: torch.Tensor | None) -> int:
    return sum(x.numel() * x.element_size() for x in xs if x is not None)


def _select(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.index_select(0, index.to(x.device))


@dataclass
class RecurrentState:
    """State of a recurrent mixer: the short-conv tail and the fp32 matrix state.

    Attributes:
        conv_state: ``[B, D, W-1]``, the last ``W-1`` conv inputs (``None`` before the first call).
        recurrent_state: ``[B, HV, K, V]`` float32.
    """

    conv_state: torch.Tensor | None = None
    recurrent_state: torch.Tensor | None = None

    def nbytes(self) -> int:
        return _nbytes(self.conv_state, self.recurrent_state)

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder batch rows (beam search, ``num_return_sequences``)."""
        self.conv_state = _select(self.conv_state, index)
        self.recurrent_state = _select(self.recurrent_state, index)


@dataclass
class KVState:
    """Key/value cache of an attention layer; rolling (bounded by ``window``) when ``window`` is set.

    Keys and values live in preallocated buffers ``[B, capacity, Hkv, D]`` and ``key``/``value`` are
    views of the filled part, so a decode step writes one token instead of copying the cache:

    * full attention: the buffer grows by 1/8 (at least 256 tokens) when full;
    * sliding window: the last ``window`` tokens are a moving view into a buffer with
      ``max(64, window // 4)`` spare slots; only when the view reaches the end are they copied to
      the front of a fresh buffer (one copy of the window per that many tokens, instead of one per
      token).

    Attributes:
        window: sliding window in tokens, or ``None`` for full attention.
        key, value: ``[B, S, Hkv, D]``.
        mask: ``[B, S]`` bool, ``False`` at padding; ``None`` while every cached token is real.
    """

    window: int | None = None
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    _key_buf: torch.Tensor | None = field(default=None, repr=False)
    _value_buf: torch.Tensor | None = field(default=None, repr=False)
    _start: int = field(default=0, repr=False)  # buffer index of key[:, 0]

    def nbytes(self) -> int:
        """Bytes of the cached tokens (a buffer's spare room is not counted)."""
        return _nbytes(self.key, self.value, self.mask)

    def select(self, index: torch.Tensor) -> None:
        self.key, self.value, self.mask = (_select(x, index) for x in (self.key, self.value, self.mask))
        self._key_buf, self._value_buf, self._start = self.key, self.value, 0

    def update(
        self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append ``key, value [B, T, Hkv, D]`` (``mask [B, T]`` or ``None``).

        Returns the keys, values and mask the current queries attend over (past + new); then keeps
        at most the last ``window`` tokens for sliding windows, which covers what any future query
        can see (the op masks a key that falls just outside).

        The model passes ``mask=None`` and tracks padding itself (once per forward for all layers);
        a mask given here is kept per layer, which costs a host sync per call.
        """
        B, T = key.shape[:2]
        S = 0 if self.key is None else self.key.shape[1]
        if S and (mask is not None or self.mask is not None):
            past = self.mask if self.mask is not None else key.new_ones(B, S, dtype=torch.bool)
            new = mask if mask is not None else key.new_ones(B, T, dtype=torch.bool)
            mask = torch.cat([past, new], dim=1)
        key, value = self._append(key, value)
        if self.window is None:
            self.mask = mask
        else:
            self.mask = None if mask is None else mask[:, max(0, mask.shape[1] - self.window):]
        if self.mask is not None and bool(self.mask.all()):
            self.mask = None  # padding has rolled out of the window: back to the fast path
        return key, value, mask

    def _append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens; return past + new keys and values (views where possible)."""
        S = 0 if self.key is None else self.key.shape[1]
        T = key.shape[1]
        end = self._start + S
        buf = self._key_buf
        fits = (
            buf is not None and buf.shape[1] >= end + T and buf.shape[0] == key.shape[0]
            and buf.dtype == key.dtype and buf.device == key.device
        )
        if fits:
            self._key_buf[:, end:end + T] = key
            self._value_buf[:, end:end + T] = value
            all_k, all_v = self._key_buf[:, self._start:end + T], self._value_buf[:, self._start:end + T]
            self._keep(end + T, S + T)
            return all_k, all_v
        if self.window is None:
            # Grow: copy the past once into a larger buffer, then write the new tokens after it.
            need = S + T
            kbuf, vbuf = self._new_buffers(key, value, need + max(256, need // 8))
            if S:
                kbuf[:, :S], vbuf[:, :S] = self.key, self.value
            kbuf[:, S:need], vbuf[:, S:need] = key, value
            self._key_buf, self._value_buf, self._start = kbuf, vbuf, 0
            self.key, self.value = kbuf[:, :need], vbuf[:, :need]
            return self.key, self.value
        # Sliding window without room: the queries need past + new in one piece (a concatenation,
        # or the new tokens alone on the first call); only the last `window` go to a fresh buffer,
        # so a long prefill leaves no reference to its full-length keys behind.
        all_k = key if S == 0 else torch.cat([self.key, key], dim=1)
        all_v = value if S == 0 else torch.cat([self.value, value], dim=1)
        keep = min(all_k.shape[1], self.window)
        kbuf, vbuf = self._new_buffers(key, value, keep + max(64, self.window // 4))
        kbuf[:, :keep], vbuf[:, :keep] = all_k[:, all_k.shape[1] - keep:], all_v[:, all_v.shape[1] - keep:]
        self._key_buf, self._value_buf, self._start = kbuf, vbuf, 0
        self.key, self.value = kbuf[:, :keep], vbuf[:, :keep]
        return all_k, all_v

    def _keep(self, end: int, filled: int) -> None:
        """Point ``key``/``value`` at the last ``min(filled, window)`` buffer slots before ``end``."""
        keep = filled if self.window is None else min(filled, self.window)
        self._start = end - keep
        self.key, self.value = self._key_buf[:, self._start:end], self._value_buf[:, self._start:end]

    @staticmethod
    def _new_buffers(
        key: torch.Tensor, value: torch.Tensor, capacity: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (key.new_empty(key.shape[0], capacity, *key.shape[2:]),
                value.new_empty(value.shape[0], capacity, *value.shape[2:]))


def freeze_padding(
    token_mask: torch.Tensor | None, k: torch.Tensor, g: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make padded tokens leave the recurrent state untouched: no write (``k = 0``), no decay (``g = 0``).

    token_mask: ``[B, T]`` bool (``False`` at padding) or ``None``; k: ``[B, T, H, K]``;
    g: ``[B, T, HV]`` or ``[B, T, HV, K]`` log-decay, or ``None``. ``where`` rather than a product,
    since g may hold ``-inf``.
    """
    if token_mask is None:
        return k, g
    k = k * token_mask[..., None, None].to(k.dtype)
    if g is not None:
        m = token_mask.view(*token_mask.shape, *([1] * (g.ndim - 2)))
        g = torch.where(m, g, torch.zeros((), dtype=g.dtype, device=g.device))
    return k, g

