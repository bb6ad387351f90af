"""gatedelta: gated linear-recurrent token mixers and gated attention, with hybrid LMs around them."""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401


def _register_auto_classes() -> None:
    """Register the config and causal LM with transformers' Auto classes, when both are present."""
    try:
        from .models import register_auto
    except ImportError:  # transformers is an optional extra
        return
    register_auto()


_register_auto_classes()
