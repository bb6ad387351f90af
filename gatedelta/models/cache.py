"""The hybrid decoding cache: one per-layer state, whatever the mixer.

* recurrent mixers (gdn, kda, gdn2, deltanet, gla, mamba2): :class:`RecurrentState`, the short-conv
  tail ``[B, D, W-1]`` and the float32 matrix state ``[B, HV, K, V]``: constant in the context length;
* ``attn``: :class:`KVState`, keys and values ``[B, S, Hkv, D]`` growing with the context;
* ``swa``: a rolling :class:`KVState` that keeps at most ``window`` tokens.

It subclasses ``transformers.Cache`` so ``generate()`` treats it as a cache (``get_seq_length``,
beam reordering, ``num_return_sequences`` expansion), but it owns its per-layer states instead of
HF's cache layers: HF's layer classes assume K/V for every layer or conv/recurrent pairs with a
fixed layout, while each mixer here keeps its own state and shapes.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..layers.state import KVState, RecurrentState
from .config import GatedDeltaConfig


class HybridCache(Cache):
    """Per-layer decoding state for a :class:`GatedDeltaConfig` model.

    Args:
        config: the model's config (its ``mixer_types`` and ``window``).

    Attributes:
        layers: one :class:`RecurrentState` or :class:`KVState` per block.
        key_mask: ``[B, seen_tokens]`` bool, ``False`` at padding, or ``None`` while no token is
            padded. The model keeps it once for all layers (the attention layers' caches keep none).
    """

    is_compileable = False

    def __init__(self, config: GatedDeltaConfig) -> None:
        layers: list[RecurrentState | KVState] = []
        for kind in config.mixer_types:
            if kind == "attn":
                layers.append(KVState(window=None))
            elif kind == "swa":
                layers.append(KVState(window=config.window))
            else:
                layers.append(RecurrentState())
        super().__init__(layers=layers)
        self.seen_tokens = 0
        self.key_mask: torch.Tensor | None = None

    # -- what generate() asks ----------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (padding included), the offset of the next input token."""
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def is_croppable(self) -> bool:
        # A recurrent state cannot be rolled back token by token.
        return False

    @property
    def is_initialized(self) -> bool:
        return self.seen_tokens > 0

    @property
    def is_sliding(self) -> list[bool]:
        return [isinstance(s, KVState) and s.window is not None for s in self.layers]

    @property
    def is_linear(self) -> list[bool]:
        return [isinstance(s, RecurrentState) for s in self.layers]

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for state in self.layers:
            state.select(beam_idx)
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, beam_idx.to(self.key_mask.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for state in self.layers:
            ref = state.recurrent_state if isinstance(state, RecurrentState) else state.key
            if ref is not None:
                state.select(torch.arange(ref.shape[0], device=ref.device).repeat_interleave(repeats))
        if self.key_mask is not None:
            self.key_mask = self.key_mask.repeat_interleave(repeats, dim=0)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("HybridCache holds recurrent states, which cannot be cropped")

    def reset(self) -> None:
        for i, state in enumerate(self.layers):
            self.layers[i] = KVState(window=state.window) if isinstance(state, KVState) else RecurrentState()
        self.seen_tokens = 0
        self.key_mask = None

    def update(self, *args, **kwargs):
        raise NotImplementedError("layers update their own state in HybridCache.layers[i]")

    # -- memory -------------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes held by every layer's state (conv tails, recurrent states, keys, values, masks)."""
        return sum(self.nbytes_by_kind().values())

    def nbytes_by_kind(self) -> dict[str, int]:
        """Bytes split into ``recurrent`` and ``kv`` (full and sliding attention)."""
        out = {"recurrent": 0, "kv": 0}
        for state in self.layers:
            out["recurrent" if isinstance(state, RecurrentState) else "kv"] += state.nbytes()
        if self.key_mask is not None:  # the padding mask of the attention keys, shared by all layers
            out["kv"] += self.key_mask.numel() * self.key_mask.element_size()
        return out
