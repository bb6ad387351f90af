"""Regional compilation (``compile_for_training``): the compiled training step equals eager, and
evaluation / cached decoding never enter the compiled code."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from torch._dynamo.utils import counters

from gatedelta.models import GatedDeltaForCausalLM, HybridCache, compile_for_training, preset_config


@functools.cache
def _inductor_works() -> bool:
    try:
        torch._dynamo.reset()
        return bool(torch.compile(lambda x: x.sin() + 1)(torch.ones(3)).eq(torch.ones(3).sin() + 1).all())
    except Exception:  # no C++ compiler, no Triton for the GPU, an unsupported platform
        return False


def _backend() -> str:
    """The Triton custom op, the path used on GPUs (interpreted on the CPU). The torch backend's
    chunk loop also compiles, but unrolled into a graph that takes minutes on the CPU."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (the Triton op is what a compiled block calls)")
    if not _inductor_works():
        pytest.skip("torch.compile (inductor) is not available here")
    return "triton"


def _loss_and_grads(model: GatedDeltaForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_blocks_match_eager_loss_and_grads():
    backend = _backend()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    # gdn2 + swa: both block kinds of the 1.3B hybrid; a window shorter than T takes the masked path
    config = preset_config("gdn2-hybrid", "tiny", backend=backend, num_layers=2, window=8)
    model = GatedDeltaForCausalLM(config).to(device).train()
    ids = torch.randint(0, config.vocab_size, (2, 19), device=device)
    loss, grads = _loss_and_grads(model, ids)

    torch._dynamo.reset()
    counters.clear()
    assert compile_for_training(model, fullgraph=True) is model
    compiled_loss, compiled_grads = _loss_and_grads(model, ids)
    assert counters["stats"]["unique_graphs"] == 2  # one per block kind, shared by the blocks

    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    for name, g in grads.items():
        scale = g.abs().max().clamp_min(1e-12)
        assert ((compiled_grads[name] - g).abs().max() / scale) < 1e-4, name

    # evaluation and cached decoding stay eager: no new graph, no recompile
    model.eval()
    with torch.no_grad():
        cache = HybridCache(config)
        model(ids[:, :5], past_key_values=cache)
        model(ids[:, 5:6], past_key_values=cache)
    assert counters["stats"]["unique_graphs"] == 2


def test_compile_for_training_rejects_unknown_mode():
    model = GatedDeltaForCausalLM(preset_config("gdn2", "tiny"))
    with pytest.raises(ValueError, match="mode must be one of"):
        compile_for_training(model, mode="fastest")


def test_bench_models_compile_records_the_mode(tmp_path):
    import json

    from gatedelta.bench.models import main

    backend = _backend()
    out = tmp_path / "models.json"
    argv = ["--tiny", "--compile", "--models", "gdn2-hybrid", "--seq-lens", "16", "--skip-decode",
            "--backend", backend, "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["compile"] == "default"
    (row,) = result["train"]
    assert "error" not in row and row["compile"] == "default" and row["tok_s"] > 0
