"""Tiny freshly built models for the evaluation tests.

This folder has no ``__init__.py`` on purpose: as a package it would be named ``evaluate`` and
shadow Hugging Face's ``evaluate``, which lm-eval imports. Helpers are fixtures instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gatedelta.models import GatedDeltaForCausalLM, preset_config


def tiny(pattern: list[str], *, vocab_size: int = 64, attn_gate: str | None = None,
         seed: int = 0) -> GatedDeltaForCausalLM:
    """Two blocks of width 32; ``pattern`` picks the mixers (e.g. ``["gdn", "attn"]``)."""
    torch.manual_seed(seed)
    cfg = preset_config("transformer", "tiny", vocab_size=vocab_size, hidden_size=32, num_heads=2,
                        head_dim=16, intermediate_size=64, num_layers=2, layer_pattern=pattern,
                        attn_gate=attn_gate)
    return GatedDeltaForCausalLM(cfg).eval()


@pytest.fixture
def make_tiny():
    """The :func:`tiny` model builder."""
    return tiny


@pytest.fixture(scope="module")
def saved_hybrid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` directory of an untrained gdn + attention hybrid, vocabulary 64."""
    path = tmp_path_factory.mktemp("hybrid")
    tiny(["gdn", "attn"]).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_bytes_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level (vocabulary 259) untrained attention model with its tokenizer spec saved."""
    from gatedelta.data.tokenizer import ByteTokenizer, save_tokenizer

    path = tmp_path_factory.mktemp("bytes")
    tiny(["attn"], vocab_size=259).save_pretrained(path)
    save_tokenizer(ByteTokenizer(), path)
    return path
