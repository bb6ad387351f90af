"""Model-level invariants (issue 4): cached decoding == full forward for every preset with a
left-padded batch, packing == separate sequences, prefill in pieces, save/load, Auto classes,
constant decode memory, config validation and generate()."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import gatedelta  # noqa: F401  (registers the Auto classes)
from gatedelta.models import (
    PRESETS,
    SIZES,
    GatedDeltaConfig,
    GatedDeltaForCausalLM,
    HybridCache,
    preset_config,
)
from gatedelta.models.presets import count_parameters


def tiny_model(name: str, **overrides) -> GatedDeltaForCausalLM:
    torch.manual_seed(0)
    return GatedDeltaForCausalLM(preset_config(name, "tiny", **overrides)).eval()


def set_backend(model: torch.nn.Module, backend: str | None) -> None:
    """Point every recurrent layer at one ops backend."""
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend


def left_padded_batch(T: int = 21, vocab: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :9] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(PRESETS))
def test_cached_decode_equals_full_forward_left_padded(name):
    model = tiny_model(name)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        # full forward on the default (chunked torch) path; decode token by token on the reference
        # recurrence: the two backends check each other through the whole model
        full = model(ids, attention_mask=mask, use_cache=False).logits
        set_backend(model, "reference")
        cache = HybridCache(model.config)
        steps = [model(ids[:, :5], attention_mask=mask[:, :5], past_key_values=cache).logits]
        for t in range(5, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache).logits)
    decoded = torch.cat(steps, 1)
    real = mask.bool()
    torch.testing.assert_close(decoded[real], full[real], atol=1e-4, rtol=0)
    # and a padded row gives its unpadded sequence's logits
    with torch.no_grad():
        alone = model(ids[2:, 9:], use_cache=False).logits
    torch.testing.assert_close(full[2, 9:], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gdn2-hybrid", "gdn-h2", "qwen3-next", "transformer-gated"])
def test_packed_equals_separate_sequences(name):
    model = tiny_model(name)
    lengths = [7, 20, 1, 13]  # 20 > the tiny window of 16
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 256, (1, n), generator=g) for n in lengths]
    cu = torch.tensor([0, 7, 27, 28, 41], dtype=torch.int32)
    with torch.no_grad():
        packed = model(torch.cat(seqs, 1), cu_seqlens=cu).logits
        separate = torch.cat([model(s, use_cache=False).logits for s in seqs], 1)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gdn2-hybrid", "gdn-h2"])
def test_prefill_in_pieces_equals_prefill_at_once(name):
    model = tiny_model(name)
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole_cache = HybridCache(model.config)
        whole = model(ids, past_key_values=whole_cache).logits
        cache = HybridCache(model.config)
        pieces = torch.cat([model(ids[:, a:b], past_key_values=cache).logits
                            for a, b in [(0, 11), (11, 12), (12, 30)]], 1)
        # and both caches continue identically
        nxt = ids[:, :1]
        a = model(nxt, past_key_values=whole_cache).logits
        b = model(nxt, past_key_values=cache).logits
    torch.testing.assert_close(pieces, whole, atol=1e-4, rtol=0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert cache.get_seq_length() == 31


def test_save_load_identical_logits(tmp_path):
    model = tiny_model("gdn-h2", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GatedDeltaForCausalLM)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), n


def _legacy_layout(model: GatedDeltaForCausalLM) -> dict[str, torch.Tensor]:
    """The model's weights as checkpoints wrote them before the input projections were fused:
    each mixer's ``in_proj`` rows back under the separate projections' names."""
    legacy = {"gdn2": ["qkv_proj", "f_proj.0", "b_proj", "w_proj", "out_gate.0"],
              "kda": ["qkv_proj", "f_proj.0", "beta_proj", "out_gate.0"],
              "gdn": ["qkv_proj", "a_proj", "beta_proj", "out_gate"],
              "attn": ["q_proj", "k_proj", "v_proj", "gate_proj"], "swa": ["q_proj", "k_proj", "v_proj"]}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, block in enumerate(model.model.layers):
        prefix = f"model.layers.{i}.mixer."
        if block.kind not in legacy:
            continue
        rows = state.pop(prefix + "in_proj.weight").split(list(block.mixer.in_widths.values()))
        state.update({f"{prefix}{name}.weight": w for name, w in zip(legacy[block.kind], rows)})
        for new, old in (("f_up_proj.", "f_proj.1."), ("out_gate_up_proj.", "out_gate.1.")):
            for key in [k for k in state if k.startswith(prefix + new)]:
                state[prefix + old + key[len(prefix + new):]] = state.pop(key)
    return state


@pytest.mark.parametrize("name", ["gdn2-hybrid", "kimi-linear", "qwen3-next"])
def test_old_checkpoint_layout_loads_to_identical_logits(name, tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(name)
    old = _legacy_layout(model)
    assert not any("in_proj" in k for k in old if ".mixer." in k and "mamba" not in k)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        want = model(ids).logits
    # load_state_dict: the layers' pre-hooks fuse the old weights
    fresh = GatedDeltaForCausalLM(model.config).eval()
    fresh.load_state_dict(old, strict=True)
    # from_pretrained of a directory in the old layout (transformers' loader bypasses the hooks)
    model.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in old.items() if k != "lm_head.weight" or not
               model.config.tie_word_embeddings}, str(tmp_path / "model.safetensors"))
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, want)
        assert torch.equal(loaded.eval()(ids).logits, want)


@pytest.mark.parametrize("name", list(PRESETS))
def test_auto_classes_build_every_preset(name):
    config = preset_config(name, "tiny")
    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    rebuilt = AutoConfig.for_model("gatedelta", **fields)
    assert rebuilt.layer_pattern == config.layer_pattern and rebuilt.window == config.window
    model = AutoModelForCausalLM.from_config(rebuilt)
    assert isinstance(model, GatedDeltaForCausalLM)
    assert [b.kind for b in model.model.layers] == config.mixer_types


def _memory_model(name: str, **overrides) -> GatedDeltaForCausalLM:
    """A preset at toy width, so that 4k tokens of prefill and decode stay quick on a CPU."""
    small = dict(vocab_size=32, hidden_size=16, num_heads=1, head_dim=16, intermediate_size=16,
                 mamba_head_dim=8, mamba_state_size=8)
    torch.manual_seed(0)
    return GatedDeltaForCausalLM(preset_config(name, "tiny", **{**small, **overrides})).eval()


def _cache_bytes_after(model: GatedDeltaForCausalLM, lengths: list[int]) -> list[int]:
    g = torch.Generator().manual_seed(4)
    cache, out, seen = HybridCache(model.config), [], 0
    with torch.no_grad():
        for n in lengths:
            model(torch.randint(0, 32, (1, n - seen), generator=g), past_key_values=cache, logits_to_keep=1)
            for _ in range(2):  # a few decode steps after each prefill
                model(torch.randint(0, 32, (1, 1), generator=g), past_key_values=cache, logits_to_keep=1)
            seen = n + 2
            out.append(cache.nbytes())
    return out


@pytest.mark.parametrize("name", ["gdn2", "kda", "gdn", "mamba2"])
def test_recurrent_presets_cache_bytes_do_not_grow(name):
    model = _memory_model(name, num_layers=1)
    small, large = _cache_bytes_after(model, [1000, 4000])
    assert small == large > 0


def test_swa_cache_bounded_by_window():
    model = _memory_model("gdn2-hybrid", window=64)
    cache_small, cache_large = _cache_bytes_after(model, [1000, 4000])
    assert cache_small == cache_large
    cache = HybridCache(model.config)
    with torch.no_grad():
        model(torch.randint(0, 32, (1, 300)), past_key_values=cache)
    kv = cache.layers[1]
    assert kv.key.shape[1] <= 64 and kv.value.shape[1] <= 64
    # while full attention grows with the context
    a, b = _cache_bytes_after(_memory_model("transformer"), [100, 400])
    assert b > a


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"layer_pattern": ["gdn2", "lstm"]}, r"layer_pattern\[1\] = 'lstm'.*valid choices.*'gdn2'"),
        ({"hidden_size": 100, "num_heads": 16}, r"num_heads=16 must divide hidden_size=100"),
        ({"num_kv_heads": 3}, r"num_kv_heads=3 .*num_heads=16"),
        ({"num_v_heads": 24}, r"num_v_heads=24 must be a multiple of num_heads=16"),
        ({"attn_gate": "sigmoid"}, r"attn_gate must be one of \('elementwise', 'headwise', None\)"),
        ({"layer_pattern": ["gdn2", "swa"], "window": 0}, r"window must be a positive int"),
        ({"num_layers": 5, "layer_pattern": ["gdn", "swa"]},
         r"num_layers=5 must be a multiple of len\(layer_pattern\)"),
        ({"layer_pattern": []}, r"layer_pattern must list at least one mixer"),
        ({"backend": "cuda"}, r"backend must be one of"),
        ({"head_dim": 512}, r"head_dim=512"),
        ({"rope_theta": -1.0}, r"rope_theta must be a positive number"),
    ],
)
def test_bad_configs_name_the_field_and_choices(fields, match):
    with pytest.raises(ValueError, match=match):
        GatedDeltaConfig(**fields)


def test_presets_unknown_names_and_param_counts():
    with pytest.raises(ValueError, match=r"unknown preset 'llama'; valid choices: \('gdn2-hybrid'"):
        preset_config("llama")
    sizes = r"\('tiny', '125m', '350m', '1.3b'\)"
    with pytest.raises(ValueError, match=r"unknown size '7b'; valid choices: " + sizes):
        preset_config("gdn2", "7b")
    c = preset_config("gdn2-hybrid", "1.3b")
    assert (c.hidden_size, c.num_heads, c.head_dim, c.window) == (2048, 16, 128, 2048)
    assert preset_config("gdn2", "tiny", neg_eigval=True).neg_eigval
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['num_layer'\]; valid fields: .*"):
        preset_config("gdn2", num_layer=4)
    # 1.3B presets land within 6% of 1.3B parameters (MLP width matched to the Transformer's)
    for name in ("gdn2-hybrid", "transformer", "mamba2"):
        assert abs(count_parameters(preset_config(name, "1.3b")) / 1.3e9 - 1) < 0.06, name
    assert SIZES == ("tiny", "125m", "350m", "1.3b")


def test_generate_greedy_and_sampling_left_padded():
    model = tiny_model("gdn2-hybrid", pad_token_id=0, eos_token_id=None)
    set_backend(model, "reference")  # short sequences: the token-by-token path is the quick one here
    ids, mask = left_padded_batch(T=10)
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        greedy = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        # the most padded row continues exactly as its unpadded prompt does on its own
        alone = model.generate(ids[2:, 9:], max_new_tokens=8, do_sample=False)
        assert greedy[2, 10:].tolist() == alone[0, -8:].tolist()
        torch.manual_seed(0)
        sampled = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, top_k=50,
                                 num_return_sequences=2)
        assert sampled.shape == (6, 13) and torch.equal(sampled[::2, :10], ids)
        beams = model.generate(ids, attention_mask=mask, max_new_tokens=2, num_beams=2, do_sample=False)
        assert beams.shape == (3, 12)


def test_loss_shift_ignore_and_packing_boundary():
    model = tiny_model("gdn-h1")
    ids = torch.randint(0, 256, (1, 12))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    logits = out.logits[0, :-1]
    keep = labels[0, 1:] != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[0, 1:][keep])
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    cu = torch.tensor([0, 4, 12], dtype=torch.int32)
    packed = model(ids, labels=ids, cu_seqlens=cu).loss
    a = model(ids[:, :4], labels=ids[:, :4]).loss
    b = model(ids[:, 4:], labels=ids[:, 4:]).loss
    torch.testing.assert_close(packed, (3 * a + 7 * b) / 10, atol=1e-5, rtol=1e-5)


def test_diagnostic_outputs_and_logits_to_keep():
    model = tiny_model("qwen3-next")
    ids, mask = left_padded_batch(T=8)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        last = model(ids, attention_mask=mask, logits_to_keep=1).logits
    kinds = model.config.mixer_types
    assert len(out.attentions) == len(kinds) and len(out.hidden_states) == len(kinds) + 1
    for kind, probs in zip(kinds, out.attentions):
        if kind == "attn":
            assert probs.shape == (3, 2, 8, 8)
            real = mask.bool()[:, None, :, None].expand_as(probs)
            torch.testing.assert_close(probs.sum(-1)[real[..., 0]], torch.ones(int(real[..., 0].sum())))
        else:
            assert probs is None
    assert all(h.shape == (3, 8, 64) for h in out.hidden_states)
    torch.testing.assert_close(last, out.logits[:, -1:])


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model("gdn-h1").train()
    ids = torch.randint(0, 256, (2, 12))
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(b.gradient_checkpointing for b in model.model.layers)
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_init_scales_residual_branches_and_pads_only_at_the_ends():
    model = tiny_model("transformer", num_layers=8, hidden_size=256, num_heads=4, head_dim=64)
    std = model.config.initializer_range
    block = model.model.layers[0]
    assert abs(block.mlp.gate_up_proj.weight.std().item() / std - 1) < 0.05
    assert abs(block.mlp.down_proj.weight.std().item() / (std / 4) - 1) < 0.05  # std / sqrt(2 · 8)
    assert abs(block.mixer.o_proj.weight.std().item() / (std / 4) - 1) < 0.05
    ids = torch.randint(0, 256, (2, 6))
    holes = torch.tensor([[1, 1, 0, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="pad only at the start"):
        model(ids, attention_mask=holes)
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=right).logits[0, :4],
                                   model(ids[:1, :4]).logits[0], atol=1e-5, rtol=0)
