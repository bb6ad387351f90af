"""Published layouts at four sizes: ``preset_config("gdn2-hybrid", "1.3b")``.

Sizes share the Transformer shapes of the GDN / GDN-2 / KDA papers' 1.3B runs (hidden 2048, 24
blocks, 16 heads of 128, vocab 32000, untied head). At every named size the MLP width of each
preset is set so that its parameter count matches the Transformer baseline's (Llama-style MLP of
``8/3 · hidden`` rounded up to 256): mixers differ in size (a GDN-2 layer has full-rank erase and
write projections, a Mamba2 layer an expanded inner width), and comparisons at equal parameters
are the fair ones. Pass ``intermediate_size=`` to override.

Parameter counts (embeddings and the untied head included; ``print_param_counts()`` recomputes
them) and the matched MLP widths at 125m / 350m / 1.3b:

==================  =======  ============  ============  ==============  ===================
preset              tiny     125m          350m          1.3b            MLP width
==================  =======  ============  ============  ==============  ===================
gdn2-hybrid         132,386  136,532,004   367,752,800   1,364,646,592   1792 / 2304 / 4864
gdn2                149,636  131,877,192   380,506,304   1,364,989,312   1280 / 2048 / 4096
kda                 133,508  131,932,488   368,120,000   1,353,192,832   1792 / 2560 / 5376
gdn                 125,320  134,328,720   380,850,560   1,353,881,344   1792 / 2560 / 4864
mamba2              138,096  136,791,648   374,926,592   1,355,381,248   1536 / 2048 / 4096
gdn-h1              120,228  130,679,880   367,924,928   1,377,966,976   1792 / 2560 / 5376
gdn-h2              172,860  135,076,432   382,841,728   1,357,855,488   1792 / 2560 / 4864
qwen3-next          216,812  134,273,772   380,679,200   1,353,341,248   1792 / 2560 / 4864
kimi-linear         224,998  130,707,126   364,839,824   1,346,533,408   1792 / 2560 / 5376
transformer         115,136  134,108,928   373,873,664   1,364,303,872   2048 / 2816 / 5632
transformer-gated   123,328  134,108,928   380,165,120   1,351,720,960   1792 / 2560 / 4864
==================  =======  ============  ============  ==============  ===================

The 1.3b Transformer is Hugging Face's 1.36B Llama of the anchor plus QK-norm gains.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from .config import GatedDeltaConfig

SIZES = ("tiny", "125m", "350m", "1.3b")


@dataclass(frozen=True)
class Preset:
    """A layout: the mixer pattern and the config fields that go with it."""

    layer_pattern: tuple[str, ...]
    description: str
    fields: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "gdn2-hybrid": Preset(("gdn2", "swa"), "Gated DeltaNet-2 + sliding-window attention (window 2048)",
                          {"window": 2048, "attn_gate": None}),
    "gdn2": Preset(("gdn2",), "pure Gated DeltaNet-2"),
    "kda": Preset(("kda",), "pure Kimi Delta Attention"),
    "gdn": Preset(("gdn",), "pure Gated DeltaNet"),
    "mamba2": Preset(("mamba2",), "pure Mamba2 (each mixer followed by an MLP)"),
    "gdn-h1": Preset(("gdn", "swa"), "Gated DeltaNet H1: GDN + SWA", {"window": 2048, "attn_gate": None}),
    "gdn-h2": Preset(("mamba2", "gdn", "swa"), "Gated DeltaNet H2: Mamba2 + GDN + SWA",
                     {"window": 2048, "attn_gate": None}),
    "qwen3-next": Preset(("gdn", "gdn", "gdn", "attn"), "Qwen3-Next-like: 3 GDN : 1 gated full attention",
                         {"attn_gate": "elementwise"}),
    "kimi-linear": Preset(("kda", "kda", "kda", "attn"), "Kimi-Linear-like: 3 KDA : 1 full attention",
                          {"attn_gate": None}),
    "transformer": Preset(("attn",), "Transformer baseline (Llama-style, QK-norm), no output gate",
                          {"attn_gate": None}),
    "transformer-gated": Preset(("attn",), "Transformer with the elementwise G1 sigmoid output gate",
                                {"attn_gate": "elementwise"}),
}

# hidden, blocks, heads (head_dim 128 except tiny), Transformer MLP width, vocab.
_SIZE_FIELDS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_heads=2, head_dim=32, intermediate_size=128, vocab_size=256,
                 mamba_head_dim=16, mamba_state_size=16, conv_size=4),
    "125m": dict(hidden_size=768, num_layers=12, num_heads=6, head_dim=128, intermediate_size=2048,
                 vocab_size=32000),
    "350m": dict(hidden_size=1024, num_layers=24, num_heads=8, head_dim=128, intermediate_size=2816,
                 vocab_size=32000),
    "1.3b": dict(hidden_size=2048, num_layers=24, num_heads=16, head_dim=128, intermediate_size=5632,
                 vocab_size=32000),
}
_TINY_WINDOW = 16  # short enough that tests exercise the rolling cache within a few dozen tokens
_MLP_MULTIPLE = 256


def preset_config(name: str, size: str = "tiny", **overrides) -> GatedDeltaConfig:
    """The config of preset ``name`` at ``size``, with ``overrides`` applied last.

    Args:
        name: one of ``PRESETS``.
        size: one of ``SIZES``.
        overrides: any :class:`GatedDeltaConfig` field.

    Raises:
        ValueError: unknown ``name`` or ``size`` (the message lists the valid choices).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid choices: {tuple(PRESETS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid choices: {SIZES}")
    known = [p for p in inspect.signature(GatedDeltaConfig.__init__).parameters
             if p not in ("self", "kwargs")]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        # a typo (num_layer=...) would otherwise become a silent extra attribute of the config
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {known}")
    fields = _fields(name, size)
    if size != "tiny" and "intermediate_size" not in overrides and name not in ("transformer",):
        target = count_parameters(GatedDeltaConfig(**_fields("transformer", size)))
        fields["intermediate_size"] = _matched_mlp_width({**fields, **overrides}, target)
    return GatedDeltaConfig(**{**fields, **overrides})


def _fields(name: str, size: str) -> dict:
    preset = PRESETS[name]
    fields = dict(_SIZE_FIELDS[size])
    fields["layer_pattern"] = list(preset.layer_pattern)
    fields["window"] = None
    fields.update(preset.fields)
    if size == "tiny":
        fields["num_layers"] = max(2, len(preset.layer_pattern))
        if fields["window"] is not None:
            fields["window"] = _TINY_WINDOW
    return fields


def count_parameters(config: GatedDeltaConfig) -> int:
    """Parameters of the causal LM built from ``config`` (on the meta device: nothing is allocated)."""
    from .modeling import GatedDeltaForCausalLM

    with torch.device("meta"):
        model = GatedDeltaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def _matched_mlp_width(fields: dict, target: int) -> int:
    """The MLP width (a multiple of 256) whose total parameter count is closest to ``target``."""
    per_unit = 3 * fields["hidden_size"] * fields["num_layers"]  # gate, up and down rows per MLP unit
    base = count_parameters(GatedDeltaConfig(**{**fields, "intermediate_size": 1})) - per_unit
    width = (target - base) / per_unit
    return max(_MLP_MULTIPLE, int(round(width / _MLP_MULTIPLE)) * _MLP_MULTIPLE)


def print_param_counts(sizes: tuple[str, ...] = SIZES) -> dict[str, dict[str, int]]:
    """Print and return ``{preset: {size: parameters}}``."""
    table = {name: {size: count_parameters(preset_config(name, size)) for size in sizes} for name in PRESETS}
    print(f"{'preset':<20}" + "".join(f"{s:>16}" for s in sizes))
    for name, row in table.items():
        print(f"{name:<20}" + "".join(f"{row[s]:>16,}" for s in sizes))
    return table
