"""Hugging Face-compatible hybrid causal LMs over :mod:`gatedelta.layers`."""

from __future__ import annotations

from .cache import HybridCache
from .compile import COMPILE_MODES, compile_for_training
from .config import MIXERS, RECURRENT_MIXERS, GatedDeltaConfig
from .modeling import GatedDeltaForCausalLM, GatedDeltaModel, GatedDeltaPreTrainedModel
from .presets import PRESETS, SIZES, preset_config

__all__ = [
    "GatedDeltaConfig", "GatedDeltaModel", "GatedDeltaForCausalLM", "GatedDeltaPreTrainedModel",
    "HybridCache", "compile_for_training", "COMPILE_MODES",
    "MIXERS", "RECURRENT_MIXERS", "PRESETS", "SIZES", "preset_config", "register_auto",
]


def register_auto() -> None:
    """Register ``model_type="gatedelta"`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.

    Idempotent: ``import gatedelta`` calls it, and calling it again is harmless.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(GatedDeltaConfig.model_type, GatedDeltaConfig, exist_ok=True)
    AutoModel.register(GatedDeltaConfig, GatedDeltaModel, exist_ok=True)
    AutoModelForCausalLM.register(GatedDeltaConfig, GatedDeltaForCausalLM, exist_ok=True)
