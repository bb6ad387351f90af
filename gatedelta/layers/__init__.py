"""Token mixers and the blocks around them, as ``nn.Module``s over :mod:`gatedelta.ops`.

Recurrent mixers (``GatedDeltaNet2``, ``KimiDeltaAttention``, ``GatedDeltaNet``, ``DeltaNet``,
``GatedLinearAttention``, ``Mamba2``) take ``forward(x, *, token_mask, cu_seqlens, cache)`` with a
:class:`RecurrentState` cache; ``GatedAttention`` takes ``position_ids`` too and a :class:`KVState`.
"""

from __future__ import annotations

from .attention import GatedAttention, rotary
from .conv import ShortConvolution
from .delta import (
    DeltaLayer,
    DeltaNet,
    GatedDeltaNet,
    GatedDeltaNet2,
    GatedLinearAttention,
    KimiDeltaAttention,
)
from .mamba2 import Mamba2
from .mlp import MLP
from .norm import GatedRMSNorm, RMSNorm
from .state import KVState, RecurrentState

__all__ = [
    "GatedDeltaNet2", "KimiDeltaAttention", "GatedDeltaNet", "DeltaNet", "GatedLinearAttention",
    "DeltaLayer", "Mamba2", "GatedAttention", "MLP", "RMSNorm", "GatedRMSNorm", "ShortConvolution",
    "RecurrentState", "KVState", "rotary",
]
