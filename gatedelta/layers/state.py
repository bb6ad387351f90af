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

    Full attention appends into buffers that grow by 1/8 (at least 256 tokens) when full, so a
    decode step writes one token instead of copying the whole cache; ``key``/``value`` are views of
    the filled part. A sliding window keeps only the last ``window`` tokens (a small copy per step).

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

    def nbytes(self) -> int:
        """Bytes of the cached tokens (a full-attention buffer's spare room is not counted)."""
        return _nbytes(self.key, self.value, self.mask)

    def select(self, index: torch.Tensor) -> None:
        self.key, self.value, self.mask = (_select(x, index) for x in (self.key, self.value, self.mask))
        self._key_buf, self._value_buf = self.key, self.value

    def update(
        self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append ``key, value [B, T, Hkv, D]`` (``mask [B, T]`` or ``None``).

        Returns the keys, values and mask the current queries attend over (past + new); then keeps
        at most the last ``window`` tokens for sliding windows, which covers what any future query
        can see (the op masks a key that falls just outside).
        """
        B, T = key.shape[:2]
        S = 0 if self.key is None else self.key.shape[1]
        if S and (mask is not None or self.mask is not None):
            past = self.mask if self.mask is not None else key.new_ones(B, S, dtype=torch.bool)
            new = mask if mask is not None else key.new_ones(B, T, dtype=torch.bool)
            mask = torch.cat([past, new], dim=1)
        if self.window is None:
            self._append(key, value)
            key, value = self.key, self.value
            self.mask = mask
        else:
            if S:
                key, value = torch.cat([self.key, key], dim=1), torch.cat([self.value, value], dim=1)
            keep = min(key.shape[1], self.window)
            self.key, self.value = key[:, key.shape[1] - keep:], value[:, key.shape[1] - keep:]
            self.mask = None if mask is None else mask[:, mask.shape[1] - keep:]
        if self.mask is not None and bool(self.mask.all()):
            self.mask = None  # padding has rolled out of the window: back to the fast path
        return key, value, mask

    def _append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        S = 0 if self.key is None else self.key.shape[1]
        need = S + key.shape[1]
        if self._key_buf is None or self._key_buf.shape[1] < need:
            capacity = need + max(256, need // 8)
            shape = (key.shape[0], capacity, *key.shape[2:])
            kbuf, vbuf = key.new_empty(shape), value.new_empty(shape)
            if S:
                kbuf[:, :S], vbuf[:, :S] = self.key, self.value
            self._key_buf, self._value_buf = kbuf, vbuf
        self._key_buf[:, S:need] = key
        self._value_buf[:, S:need] = value
        self.key, self.value = self._key_buf[:, :need], self._value_buf[:, :need]


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

