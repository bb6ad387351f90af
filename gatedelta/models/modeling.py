"""Hybrid causal language model: embedding → blocks (mixer + MLP, pre-norm, residual) → norm → head.

Padding, packing and positions, decided once here and handed to every block:

* ``attention_mask [B, S_past + T]`` (1 = token, 0 = padding; left padding for generation) becomes a
  ``token_mask [B, T]`` for the new tokens; recurrent mixers zero a padded token's contribution,
  attention never attends to a padded key.
* ``cu_seqlens [N+1]`` packs N sequences into ``input_ids [1, total]``: mixers keep them apart and
  RoPE positions restart at each sequence start.
* ``position_ids`` default to the count of real tokens before each position (what ``generate``
  passes for left-padded batches), so padded and unpadded rows see the same positions.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers import (
    MLP,
    DeltaLayer,
    DeltaNet,
    GatedAttention,
    GatedDeltaNet,
    GatedDeltaNet2,
    GatedLinearAttention,
    GatedRMSNorm,
    KimiDeltaAttention,
    Mamba2,
    RMSNorm,
    ShortConvolution,
)
from ..layers.attention import PADDING_LAYOUT_ERROR, KeyPadding, rotary_tables
from .cache import HybridCache
from .config import GatedDeltaConfig

Tensor = torch.Tensor

_DELTA_MIXERS = {
    "gdn2": GatedDeltaNet2,
    "kda": KimiDeltaAttention,
    "gdn": GatedDeltaNet,
    "deltanet": DeltaNet,
    "gla": GatedLinearAttention,
}


def build_mixer(config: GatedDeltaConfig, kind: str, layer_idx: int) -> nn.Module:
    """The token mixer named ``kind`` with its shape taken from ``config``."""
    if kind in ("attn", "swa"):
        return GatedAttention(
            hidden_size=config.hidden_size, num_heads=config.num_heads, head_dim=config.head_dim,
            num_kv_heads=config.num_kv_heads, gate=config.attn_gate,
            window=config.window if kind == "swa" else None, rope_theta=config.rope_theta,
            norm_eps=config.norm_eps, layer_idx=layer_idx,
        )
    if kind == "mamba2":
        return Mamba2(
            hidden_size=config.hidden_size, num_heads=config.mamba_num_heads, head_dim=config.mamba_head_dim,
            state_size=config.mamba_state_size, n_groups=config.mamba_n_groups, conv_size=config.conv_size,
            norm_eps=config.norm_eps, backend=config.backend, layer_idx=layer_idx,
        )
    return _DELTA_MIXERS[kind](
        hidden_size=config.hidden_size, num_heads=config.num_heads, head_dim=config.head_dim,
        num_v_heads=config.num_v_heads, conv_size=config.conv_size, neg_eigval=config.neg_eigval,
        norm_eps=config.norm_eps, backend=config.backend, layer_idx=layer_idx,
    )


class Block(GradientCheckpointingLayer):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))``.

    ``model.gradient_checkpointing_enable()`` recomputes each block in the backward pass
    (``GradientCheckpointingLayer``; ``x`` is positional so the checkpoint sees it).
    """

    # Set by :func:`gatedelta.models.compile_for_training`: ``torch.compile(Block.mix)``, one function
    # shared by every block (Dynamo keeps one compiled graph per block kind and input shape).
    compiled_mix: Callable[..., tuple[Tensor, Tensor | None]] | None = None

    def __init__(self, config: GatedDeltaConfig, layer_idx: int) -> None:
        super().__init__()
        self.kind = config.mixer_types[layer_idx]
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = build_mixer(config, self.kind, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size)

    def forward(
        self,
        x: Tensor,
        *,
        position_ids: Tensor,
        token_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        cache: object | None,
        output_attentions: bool,
        rope: tuple[Tensor, Tensor] | None = None,
        padding: KeyPadding | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, T, hidden_size] -> (x', attention probs or None)``; arguments as :meth:`mix`.

        Training calls (no cache, no probabilities, no padded keys) take the compiled :meth:`mix`
        when :func:`~gatedelta.models.compile_for_training` set one. Evaluation and decoding stay
        eager: a decode step's growing KV cache would recompile at every token.
        """
        kwargs = dict(position_ids=position_ids, token_mask=token_mask, cu_seqlens=cu_seqlens, cache=cache,
                      output_attentions=output_attentions, rope=rope, padding=padding)
        compiled = self.compiled_mix
        plain = cache is None and padding is None and not output_attentions
        if compiled is not None and self.training and plain:
            if isinstance(self.mixer, GatedAttention):
                self.mixer.prepare_compiled(x.shape[1], x.device, cu_seqlens)
            return compiled(self, x, **kwargs)
        return self.mix(x, **kwargs)

    def mix(
        self,
        x: Tensor,
        *,
        position_ids: Tensor,
        token_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        cache: object | None,
        output_attentions: bool,
        rope: tuple[Tensor, Tensor] | None = None,
        padding: KeyPadding | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The block itself: pre-norm mixer and MLP, each added to the residual stream."""
        h = self.mixer_norm(x)
        probs = None
        if isinstance(self.mixer, GatedAttention):
            h, probs = self.mixer(
                h, position_ids=position_ids, token_mask=token_mask, cu_seqlens=cu_seqlens, cache=cache,
                output_attentions=output_attentions, rope=rope, padding=padding,
            )
        else:
            h = self.mixer(h, token_mask=token_mask, cu_seqlens=cu_seqlens, cache=cache)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, probs


class GatedDeltaPreTrainedModel(PreTrainedModel):
    config_class = GatedDeltaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    # Recurrent states cannot be rolled back (no assisted generation), and generate() must not build
    # its own DynamicCache: see ``_prepare_cache_for_generation``.
    _is_stateful = True
    # Decay parameters stay float32 when a checkpoint is loaded in bf16/fp16: dt_bias ≈ −4.6 has a
    # bf16 step of 0.03, which would move every head's time scale by ~3%.
    _keep_in_fp32_modules_strict = ["A_log", "dt_bias"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: object, *args: object, **kwargs: object):
        """Hugging Face's ``from_pretrained``, which also reads checkpoints written before the
        layers' input projections were fused (``qkv_proj``, ``b_proj``, ``q_proj``, … instead of one
        ``in_proj``; see :mod:`gatedelta.layers.fused`).

        transformers' loader never calls ``load_state_dict``, so it reports those old keys as
        unexpected and initialises ``in_proj`` at random; they are then read again and loaded
        through ``load_state_dict``, whose hooks fuse them. The returned loading info (with
        ``output_loading_info=True``) lists what is still missing or unexpected after that.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        if info.get("unexpected_keys") and any(".mixer." in k for k in info["unexpected_keys"]):
            state = _read_safetensors(pretrained_model_name_or_path, kwargs)
            result = model.load_state_dict(state, strict=False)
            info["missing_keys"] = set(info.get("missing_keys", ())) & set(result.missing_keys)
            info["unexpected_keys"] = set(result.unexpected_keys)
            if info["missing_keys"] or info["unexpected_keys"]:
                missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
                raise ValueError(f"{pretrained_model_name_or_path}: weights still missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]} after reading the old layout")
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every init choice, in one place (tensors already loaded from a checkpoint are skipped):

        * ``nn.Linear`` and ``nn.Embedding`` weights: normal(0, ``initializer_range``); biases 0
          (the low-rank output-gate bias of GDN-2/KDA included: gate sigmoid(0) = 0.5 at init).
        * Projections back into the residual stream (tagged ``residual_out`` by the layers: mixers'
          ``o_proj`` / ``out_proj``, the MLP's ``down_proj``): std ``initializer_range /
          sqrt(2 · num_layers)`` (GPT-2 / nanoGPT): each block adds two residual branches, so the
          residual stream's variance stays O(1) with depth.
        * RMSNorm gains (plain and gated): 1.
        * ``A_log ~ log U(1, 16)`` and ``dt_bias = softplus⁻¹(log-uniform [1e-3, 0.1])``
          (Mamba2 / Gated DeltaNet papers); Mamba2's skip ``D = 1``. No weight decay on these.
        * Short-conv kernels: U(±1/sqrt(W)), PyTorch's Conv1d default for a depthwise kernel.
        """
        # Called by Hugging Face once per module that owns parameters directly (leaves first).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "residual_out", False):
                std = std / (2 * self.config.num_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (RMSNorm, GatedRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, (Mamba2, DeltaLayer, ShortConvolution)):
            module.reset_parameters(copy=init.copy_)


def _read_safetensors(path: object, kwargs: dict) -> dict[str, Tensor]:
    """Every tensor of a ``save_pretrained`` checkpoint (a directory or a Hub id), on the CPU."""
    from pathlib import Path

    from safetensors.torch import load_file

    local = Path(str(path))
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        local = Path(snapshot_download(str(path), allow_patterns=["*.safetensors", "*.json"], **hub))
    state: dict[str, Tensor] = {}
    for file in sorted(local.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


class GatedDeltaModel(GatedDeltaPreTrainedModel):
    """The backbone: embeddings, blocks, final norm. Returns hidden states ``[B, T, hidden_size]``."""

    def __init__(self, config: GatedDeltaConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: HybridCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """See :meth:`GatedDeltaForCausalLM.forward`; returns ``last_hidden_state`` after the final norm."""
        past_key_values = _cache_argument(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and inputs_embeds [B, T, hidden_size]")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = (not self.training) if use_cache is None else use_cache
        if cu_seqlens is not None:
            if past_key_values is not None:
                raise ValueError("cu_seqlens (packed sequences) cannot be combined with past_key_values")
            if B != 1:
                raise ValueError(f"cu_seqlens packs sequences into batch 1, got input of batch {B}")
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = HybridCache(self.config)
        past = 0 if past_key_values is None else past_key_values.get_seq_length()

        # Padding and positions are decided here once per forward (at most one host sync, to read
        # the padding layout) and shared by every block, so no layer reads a mask on its own.
        token_mask, padding, key_mask = _padding(attention_mask, past_key_values, B=B, T=T, past=past)
        if position_ids is None:
            position_ids = _positions(attention_mask, cu_seqlens, B=B, T=T, past=past, device=x.device)
        rope = None
        if any(isinstance(block.mixer, GatedAttention) for block in self.layers):
            rope = rotary_tables(position_ids, self.config.head_dim, theta=self.config.rope_theta)

        all_hidden = [x] if output_hidden_states else None
        all_probs = [] if output_attentions else None
        for i, block in enumerate(self.layers):
            cache = None if past_key_values is None else past_key_values.layers[i]
            x, probs = block(
                x, position_ids=position_ids, token_mask=token_mask, cu_seqlens=cu_seqlens, cache=cache,
                output_attentions=output_attentions, rope=rope, padding=padding,
            )
            if all_hidden is not None:
                all_hidden.append(x)
            if all_probs is not None:
                all_probs.append(probs)
        if past_key_values is not None:
            past_key_values.seen_tokens += T
            past_key_values.key_mask = key_mask
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(x),
            **{_OUTPUT_CACHE_FIELD: past_key_values if use_cache else None},
            hidden_states=None if all_hidden is None else tuple(all_hidden),
            attentions=None if all_probs is None else tuple(all_probs),
        )


# The cache field of the output classes: ``cache`` in transformers 5.2x, ``past_key_values``
# before. Writing and reading it under its own name avoids the deprecation path (and its warning).
_OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
)


def output_cache(out: object) -> HybridCache | None:
    """The cache of a model output, under whichever name the installed transformers uses."""
    return getattr(out, _OUTPUT_CACHE_FIELD)


# The name under which GenerationMixin passes the cache between steps.
_GENERATION_CACHE_KEY = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


def _cache_argument(past_key_values: HybridCache | None, kwargs: dict) -> HybridCache | None:
    """Recent transformers (5.x) hand the cache to ``forward`` as ``cache=`` (``past_key_values`` is
    its deprecated name); accept either, so ``generate()`` keeps decoding from its cache."""
    cache = kwargs.pop("cache", None)
    return cache if past_key_values is None else past_key_values


def _padding(
    attention_mask: Tensor | None, cache: HybridCache | None, *, B: int, T: int, past: int
) -> tuple[Tensor | None, KeyPadding | None, Tensor | None]:
    """Padding of one forward, read once for every layer.

    Returns ``(token_mask, padding, key_mask)``: ``token_mask [B, T]`` bool for the new tokens
    (``None`` when none is padded) for the recurrent mixers; the attention layers' host-side
    :class:`KeyPadding` (``None`` when no key is padded); the mask of every token so far
    ``[B, past + T]`` for the cache to remember (``None`` when none is padded).

    Everything the layers need comes from one small device-to-host copy (leading, real and trailing
    tokens per row): one sync per forward, where reading the mask in each attention layer cost
    several per layer.
    """
    past_mask = None if cache is None or past == 0 else cache.key_mask
    if attention_mask is None and past_mask is None:
        return None, None, None
    if attention_mask is not None:
        shape_ok = attention_mask.ndim == 2 and attention_mask.shape[0] == B
        if not shape_ok or attention_mask.shape[1] not in (T, past + T):
            raise ValueError(
                f"attention_mask must be [B, past + T] = [{B}, {past + T}] (or [{B}, {T}]) of 0/1, "
                f"got {tuple(attention_mask.shape)}"
            )
    if attention_mask is not None and attention_mask.shape[1] == past + T:
        full = attention_mask.bool()
    else:
        new = (attention_mask[:, -T:].bool() if attention_mask is not None
               else torch.ones(B, T, dtype=torch.bool, device=past_mask.device))
        if past:
            old = past_mask if past_mask is not None else new.new_ones(B, past)
            full = torch.cat([old.to(new.device), new], dim=1)
        else:
            full = new
    total = full.shape[1]
    pad = ~full
    lead = pad.long().cumprod(dim=1).sum(dim=1)
    trail = pad.flip(1).long().cumprod(dim=1).sum(dim=1)
    real = full.sum(dim=1)
    new_real = full[:, total - T:].sum(dim=1)
    stats = torch.stack([lead, real, trail, new_real], dim=1).tolist()  # the one host sync
    if all(r == total for _, r, _, _ in stats):
        return None, None, None
    token_mask = None if all(n == T for *_, n in stats) else full[:, total - T:]
    if any(lo + r + tr != total and r > 0 for lo, r, tr, _ in stats):
        raise ValueError(PADDING_LAYOUT_ERROR)
    return token_mask, KeyPadding(lead=tuple(lo for lo, *_ in stats), total=total), full


def _positions(
    attention_mask: Tensor | None, cu_seqlens: Tensor | None, *, B: int, T: int, past: int,
    device: torch.device,
) -> Tensor:
    """RoPE positions ``[B or 1, T]``: real tokens before each position; restarting per packed sequence."""
    if cu_seqlens is not None:
        idx = torch.arange(T, device=device)
        starts = cu_seqlens.to(device=device, dtype=torch.long)
        seq = torch.searchsorted(starts[1:], idx, right=True)
        return (idx - starts[seq])[None]
    if attention_mask is not None and attention_mask.shape[1] == past + T:
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)[:, -T:]
    return (torch.arange(T, device=device) + past)[None].expand(B, T)


class GatedDeltaForCausalLM(GatedDeltaPreTrainedModel, GenerationMixin):
    """Causal LM over :class:`GatedDeltaModel` with a linear head (tied to the embedding if asked)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: GatedDeltaConfig) -> None:
        super().__init__(config)
        self.model = GatedDeltaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: HybridCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        logits_to_keep: int | Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Next-token logits (and loss).

        Args:
            input_ids: ``[B, T]`` token ids (or ``inputs_embeds [B, T, hidden_size]``).
            attention_mask: ``[B, S_past + T]`` 1/0, 0 at padding (left padding for generation).
            position_ids: ``[B or 1, T]`` RoPE positions; default from the mask / cache / packing.
            past_key_values: a :class:`HybridCache`, updated in place; created when ``use_cache``.
            labels: ``[B, T]`` target ids, shifted inside (``labels[:, 1:]`` scores ``logits[:, :-1]``);
                ``-100`` is ignored, and so is the boundary between packed sequences.
            use_cache: return the cache (default: ``True`` in eval mode, ``False`` in training).
            cu_seqlens: ``[N+1]`` offsets of packed sequences in ``input_ids [1, total]``.
            output_attentions: per block, attention probabilities ``[B, Hq, T, S]`` (``None`` for
                recurrent blocks).
            output_hidden_states: the embedding output and each block's output (``num_layers + 1``).
            logits_to_keep: compute logits for the last ``n`` positions only (0: all), or for the
                given indices (a 1-D tensor).

        Returns:
            ``CausalLMOutputWithPast(loss, logits [B, T', vocab] float32, past_key_values,
            hidden_states, attentions)``.
        """
        past_key_values = _cache_argument(past_key_values, kwargs)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            cu_seqlens=cu_seqlens, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h).float()
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, cu_seqlens=cu_seqlens)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_OUTPUT_CACHE_FIELD: output_cache(out)},
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return result if return_dict else result.to_tuple()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        """generate(): start from a fresh :class:`HybridCache` unless the caller passed one.

        The cache goes under the name this transformers version's generation loop uses (``cache``
        since 5.2x, ``past_key_values`` before), so no deprecation path copies it under both."""
        given = model_kwargs.get("cache") or model_kwargs.get("past_key_values")
        if given is None and generation_config.use_cache is not False:
            model_kwargs[_GENERATION_CACHE_KEY] = HybridCache(self.config)


def causal_lm_loss(logits: Tensor, labels: Tensor, *, cu_seqlens: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``, ignoring ``-100``.

    With ``cu_seqlens`` the last token of one packed sequence does not predict the first of the next.
    """
    if logits.shape[1] != labels.shape[1]:
        raise ValueError(
            f"labels [B, T] must cover every logit position; got logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)} (use logits_to_keep=0 when training)"
        )
    target = labels[:, 1:].clone()
    if cu_seqlens is not None:
        ends = cu_seqlens[1:-1].to(device=target.device, dtype=torch.long) - 1
        target[0, ends[(ends >= 0) & (ends < target.shape[1])]] = -100
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, target.reshape(-1), ignore_index=-100)
