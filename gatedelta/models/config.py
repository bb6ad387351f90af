"""``GatedDeltaConfig``: one typed config for every hybrid layout, validated on construction."""

from __future__ import annotations

from transformers import PretrainedConfig

MIXERS = ("attn", "swa", "gdn", "kda", "gdn2", "deltanet", "mamba2", "gla")
RECURRENT_MIXERS = ("gdn", "kda", "gdn2", "deltanet", "mamba2", "gla")
ATTN_GATES = ("elementwise", "headwise", None)


class GatedDeltaConfig(PretrainedConfig):
    """Configuration of :class:`gatedelta.models.GatedDeltaForCausalLM`.

    The model is ``num_layers`` blocks; block ``i`` is ``layer_pattern[i % len(layer_pattern)]``
    followed by a SwiGLU MLP, each with a pre-RMSNorm and a residual.

    Args:
        vocab_size: tokens in the vocabulary.
        hidden_size: model width.
        num_layers: blocks (a multiple of ``len(layer_pattern)``).
        num_heads: q/k heads of the delta mixers and query heads of attention.
        head_dim: per-head width (``K = V``).
        num_v_heads: value heads of the delta mixers (grouped value attention); default ``num_heads``.
        num_kv_heads: key/value heads of attention (GQA); default ``num_heads``.
        layer_pattern: mixer names from ``MIXERS``: ``attn`` (full attention), ``swa`` (sliding
            window), ``gdn``, ``kda``, ``gdn2``, ``deltanet``, ``mamba2``, ``gla``.
        window: tokens seen by ``swa`` layers (including the current one).
        attn_gate: G1 output gate of attention: ``"elementwise"``, ``"headwise"`` or ``None``.
        intermediate_size: MLP width.
        conv_size: short-conv kernel of the recurrent mixers.
        neg_eigval: erase gates in ``[0, 2]`` (negative eigenvalues) instead of ``[0, 1]``.
        rope_theta: RoPE base of attention layers.
        norm_eps: RMSNorm epsilon.
        mamba_num_heads, mamba_head_dim, mamba_state_size, mamba_n_groups: Mamba2 shape; the inner
            width ``mamba_num_heads · mamba_head_dim`` defaults to ``2 · hidden_size`` (expand 2).
        tie_word_embeddings: share the input embedding and the LM head.
        initializer_range: std of the normal init of linear and embedding weights.
        backend: recurrent-op backend override (``None``: ``ops`` dispatch).
    """

    model_type = "gatedelta"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Hugging Face code (generate, cache helpers) reads these standard names.
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_layers: int = 24,
        num_heads: int = 16,
        head_dim: int = 128,
        num_v_heads: int | None = None,
        num_kv_heads: int | None = None,
        layer_pattern: list[str] | tuple[str, ...] = ("gdn2", "swa"),
        window: int | None = 2048,
        attn_gate: str | None = "elementwise",
        intermediate_size: int = 5632,
        conv_size: int = 4,
        neg_eigval: bool = False,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        mamba_num_heads: int | None = None,
        mamba_head_dim: int = 64,
        mamba_state_size: int = 128,
        mamba_n_groups: int = 1,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        backend: str | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_v_heads = num_heads if num_v_heads is None else num_v_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.layer_pattern = list(layer_pattern)
        self.window = window
        self.attn_gate = attn_gate
        self.intermediate_size = intermediate_size
        self.conv_size = conv_size
        self.neg_eigval = neg_eigval
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.mamba_head_dim = mamba_head_dim
        # expand 2, as in Mamba2: inner width = 2 · hidden
        self.mamba_num_heads = (2 * hidden_size) // mamba_head_dim if mamba_num_heads is None \
            else mamba_num_heads
        self.mamba_state_size = mamba_state_size
        self.mamba_n_groups = mamba_n_groups
        self.initializer_range = initializer_range
        self.backend = backend
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
            eos_token_id=eos_token_id, **kwargs,
        )
        self.validate_fields()

    @property
    def mixer_types(self) -> list[str]:
        """Mixer name of each block (the pattern repeated to ``num_layers``)."""
        p = self.layer_pattern
        return [p[i % len(p)] for i in range(self.num_layers)]

    def validate_fields(self) -> None:
        """Raise ``ValueError`` naming the field, its value and the valid choices."""

        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "num_v_heads",
                     "num_kv_heads", "intermediate_size", "conv_size", "mamba_num_heads", "mamba_head_dim",
                     "mamba_state_size", "mamba_n_groups"):
            positive(name)
        if not self.layer_pattern:
            raise ValueError(f"layer_pattern must list at least one mixer from {MIXERS}, got []")
        for i, name in enumerate(self.layer_pattern):
            if name not in MIXERS:
                raise ValueError(f"layer_pattern[{i}] = {name!r} is not a mixer; valid choices: {MIXERS}")
        if self.num_layers % len(self.layer_pattern) != 0:
            raise ValueError(
                f"num_layers={self.num_layers} must be a multiple of len(layer_pattern)="
                f"{len(self.layer_pattern)} (layer_pattern={self.layer_pattern})"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} "
                f"(valid choices: divisors of {self.hidden_size})"
            )
        if self.num_v_heads % self.num_heads != 0:
            raise ValueError(
                f"num_v_heads={self.num_v_heads} must be a multiple of num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                f"(valid choices: divisors of {self.num_heads})"
            )
        if self.mamba_num_heads % self.mamba_n_groups != 0:
            raise ValueError(
                f"mamba_n_groups={self.mamba_n_groups} must divide mamba_num_heads={self.mamba_num_heads}"
            )
        if self.head_dim > 256 or self.mamba_state_size > 256:
            raise ValueError(
                f"head_dim={self.head_dim} and mamba_state_size={self.mamba_state_size} must be <= 256 "
                "(the largest head the kernels support)"
            )
        for name in ("rope_theta", "norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.neg_eigval, bool):
            raise ValueError(f"neg_eigval must be True or False, got {self.neg_eigval!r}")
        if self.head_dim % 2 != 0 and {"attn", "swa"} & set(self.layer_pattern):
            raise ValueError(f"head_dim={self.head_dim} must be even: attention layers apply RoPE")
        if self.attn_gate not in ATTN_GATES:
            raise ValueError(f"attn_gate must be one of {ATTN_GATES}, got {self.attn_gate!r}")
        if "swa" in self.layer_pattern:
            if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
                raise ValueError(
                    f"window must be a positive int when layer_pattern has 'swa', got {self.window!r}"
                )
        elif self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"window must be a positive int or None, got {self.window!r}")
        if self.backend not in (None, "triton", "torch", "reference"):
            raise ValueError(
                f"backend must be one of (None, 'triton', 'torch', 'reference'), got {self.backend!r}"
            )
