"""Per-layer decoding state. The model's cache (``gatedelta.models.cache``) holds one per layer.

Layers read and replace these in place, so a layer never needs to know about the model cache.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    Attributes:
        window: sliding window in tokens, or ``None`` for full attention.
        key, value: ``[B, S, Hkv, D]``.
        mask: ``[B, S]`` bool, ``False`` at padding; ``None`` while every cached token is real.
    """

    window: int | None = None
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def nbytes(self) -> int:
        return _nbytes(self.key, self.value, self.mask)

    def select(self, index: torch.Tensor) -> None:
        self.key, self.value, self.mask = (_select(x, index) for x in (self.key, self.value, self.mask))

    def update(
        self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append ``key, value [B, T, Hkv, D]`` (``mask [B, T]`` or ``None``).

        Returns the keys, values and mask the current queries attend over (past + new); then keeps
        at most the last ``window`` tokens for sliding windows, which covers what any future query
        can see (the op masks a key that falls just outside).
        """
        B, T = key.shape[:2]
        if self.key is not None:
            past_mask = self.mask
            if mask is not None and past_mask is None:
                past_mask = torch.ones(B, self.key.shape[1], dtype=torch.bool, device=key.device)
            if past_mask is not None and mask is None:
                mask = torch.ones(B, T, dtype=torch.bool, device=key.device)
            key = torch.cat([self.key, key], dim=1)
            value = torch.cat([self.value, value], dim=1)
            mask = None if mask is None else torch.cat([past_mask, mask], dim=1)
        keep = key.shape[1] if self.window is None else min(key.shape[1], self.window)
        self.key, self.value = key[:, key.shape[1] - keep:], value[:, key.shape[1] - keep:]
        self.mask = None if mask is None else mask[:, mask.shape[1] - keep:]
        if self.mask is not None and bool(self.mask.all()):
            self.mask = None  # padding has rolled out of the window: back to the fast path
        return key, value, mask
