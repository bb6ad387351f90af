"""Where a model's time goes on the GPU: the CUDA kernels of one training step and the host-side
ops of one decode step, as torch.profiler tables.

    python benchmarks/profile_model.py --preset gdn2-hybrid --size 1.3b --T 2048 --B 8

A diagnostic for ``gatedelta bench models`` (which gives the totals): training is printed as CUDA
time per kernel (top ``--top``), decoding as CPU time per op, since single-token decoding at
batch 1 is bound by the host (launches and synchronisations), not by the GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from gatedelta.models import GatedDeltaForCausalLM, HybridCache, preset_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gdn2-hybrid")
    p.add_argument("--size", default="1.3b")
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--context", type=int, default=1024, help="prompt length before the decode step")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    with dev:
        model = GatedDeltaForCausalLM(preset_config(args.preset, args.size)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (args.B, args.T), device=dev)

    def step() -> None:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"== training step {args.preset} {args.size} B={args.B} T={args.T}: CUDA time per kernel")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))
    model.eval()
    with torch.inference_mode():
        prompt = torch.randint(0, model.config.vocab_size, (1, args.context), device=dev)
        cache = HybridCache(model.config)
        model(prompt, past_key_values=cache, logits_to_keep=1)
        token = prompt[:, -1:]
        for _ in range(4):
            model(token, past_key_values=cache, logits_to_keep=1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(token, past_key_values=cache, logits_to_keep=1)
            torch.cuda.synchronize()
    print(f"== one decode step after {args.context} tokens: host time per op")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
