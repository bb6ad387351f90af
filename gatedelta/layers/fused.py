"""Loading checkpoints written before a layer's projections were fused into one ``nn.Linear``.

A layer that now computes several projections of the same input as slices of one GEMM registers
:func:`register_legacy_split`; ``load_state_dict`` then concatenates the old separate weights
(``[out_i, in]`` each, in slice order) into the fused ``[Σ out_i, in]`` weight before loading, and
renames modules that moved with the change. A state dict in the new layout passes untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def register_legacy_split(
    module: nn.Module, fused: str, parts: Sequence[str], *, renames: Mapping[str, str] | None = None
) -> None:
    """Let ``module.load_state_dict`` read the layout where ``fused`` was the separate ``parts``.

    Args:
        module: the layer owning the fused ``nn.Linear`` (without bias).
        fused: its attribute name, e.g. ``"in_proj"``.
        parts: the old module names whose ``.weight`` rows make up ``fused.weight``, in order
            (e.g. ``["qkv_proj", "f_proj.0", "b_proj"]``).
        renames: old key prefix -> new key prefix for modules that only moved
            (e.g. ``{"f_proj.1.": "f_up_proj."}``).
    """
    renames = dict(renames or {})

    def hook(_module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        upgrade_state_dict(state_dict, prefix, fused, parts, renames)

    module.register_load_state_dict_pre_hook(hook)


def upgrade_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str, fused: str, parts: Sequence[str],
    renames: Mapping[str, str],
) -> None:
    """Rewrite the old-layout keys under ``prefix`` in place (see :func:`register_legacy_split`).

    Only acts when every part is present and the fused weight is not: a partial old layout is left
    for ``load_state_dict`` to report as missing and unexpected keys.
    """
    old = [f"{prefix}{name}.weight" for name in parts]
    if f"{prefix}{fused}.weight" in state_dict or not all(key in state_dict for key in old):
        return
    state_dict[f"{prefix}{fused}.weight"] = torch.cat([state_dict.pop(key) for key in old], dim=0)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for before, after in renames.items():
            if rest.startswith(before):
                state_dict[prefix + after + rest[len(before):]] = state_dict.pop(key)
                break
