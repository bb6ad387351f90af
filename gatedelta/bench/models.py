"""``gatedelta bench models``: training throughput, prefill/decode speed and cache memory of whole models.

Protocol (DESIGN §5, model level; the anchor is ``anchors/models-1.3b-h100-train.json``):

1. Training: for each model and each T in ``--seq-lens``, B = ``--tokens-per-step`` / T; bf16
   weights, forward + backward + fused AdamW step; ``--warmup`` untimed steps, then the median of
   ``--steps`` timed steps (CUDA-synchronised). tokens/s = tokens per step / seconds per step.
2. Decoding: for each model and each context length in ``--contexts``, prefill a random prompt of
   that length (timed), then ``--decode-steps`` single-token steps (timed); report decode tokens/s,
   the cache's bytes (recurrent states vs KV) and peak memory.

``--compile [MODE]`` compiles each decoder block for training (regional ``torch.compile``, static
shapes; :func:`gatedelta.models.compile_for_training`): every (model, T) point compiles in its
warm-up steps, which are not timed but count against ``--max-seconds``. Decoding stays eager.

Every point runs in its own try block: an out-of-memory error (or any other) is recorded in the
row's ``error`` field and the run goes on. The GDN-2 hybrid and the Transformer run in the same
process, so their numbers compare. ``--tiny`` runs tiny presets at toy lengths on the CPU: a smoke
test, not a measurement.

Example (one H100, about 5 minutes)::

    gatedelta bench models --out benchmarks/results/models-1.3b-h100.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ..models import COMPILE_MODES, GatedDeltaForCausalLM, HybridCache, compile_for_training, preset_config


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


# Protocol defaults: the H100 run (issue 4) and the CPU smoke test (--tiny); flags override either.
FULL = dict(size="1.3b", seq_lens=[2048, 4096, 8192, 16384], tokens_per_step=16384,
            contexts=[1024, 8192, 32768], decode_steps=32, warmup=2, steps=5)
TINY = dict(size="tiny", seq_lens=[16, 32], tokens_per_step=64, contexts=[16, 48], decode_steps=2,
            warmup=1, steps=1)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gatedelta bench models", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gdn2-hybrid,transformer", help="comma-separated preset names")
    p.add_argument("--size", help=f"preset size (default {FULL['size']})")
    p.add_argument("--seq-lens", type=_parse_ints, help=f"training T (default {FULL['seq_lens']})")
    p.add_argument("--tokens-per-step", type=int, help=f"B·T per step (default {FULL['tokens_per_step']})")
    p.add_argument("--contexts", type=_parse_ints, help=f"decode contexts (default {FULL['contexts']})")
    p.add_argument("--decode-batch", default=1, type=int, help="sequences decoded together")
    p.add_argument("--decode-steps", type=int, help="timed single-token steps per context")
    p.add_argument("--warmup", type=int, help="untimed steps before timing")
    p.add_argument("--steps", type=int, help="timed training steps (the median is reported)")
    p.add_argument("--backend", default=None, help="recurrent-op backend override (triton, torch, reference)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--skip-train", action="store_true", help="only the decode measurements")
    p.add_argument("--skip-decode", action="store_true", help="only the training measurements")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                   metavar="MODE", help="torch.compile each decoder block for training (regional; "
                   f"MODE one of {', '.join(COMPILE_MODES)}; default: default). The warm-up steps pay "
                   "the compilation, so give at least 1")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny presets, toy lengths")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--max-seconds", default=460.0, type=float,
                   help="skip the points left once the run has taken this long (default: under 8 min)")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tiny and args.device is None:
        args.device = "cpu"
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args


# -- timing and memory --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _build(name: str, args: argparse.Namespace) -> GatedDeltaForCausalLM:
    config = preset_config(name, args.size, backend=args.backend)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = GatedDeltaForCausalLM(config)
    # bf16 weights on the GPU, as the anchor measured; float32 on the CPU smoke test.
    return model.to(torch.bfloat16 if args.device.type == "cuda" else torch.float32)


def _error(e: BaseException) -> str:
    kind = "OOM" if isinstance(e, torch.cuda.OutOfMemoryError) else type(e).__name__
    return f"{kind}: {str(e).splitlines()[0][:300] if str(e) else ''}"


# -- 1. training --------------------------------------------------------------------------------
def bench_train(name: str, T: int, args: argparse.Namespace) -> dict:
    """One training point: forward + backward + fused AdamW at ``B = tokens_per_step / T``."""
    B = max(1, args.tokens_per_step // T)
    row = {"model": name, "size": args.size, "T": T, "B": B, "compile": args.compile}
    _reset_memory(args.device)
    try:
        row.update(_train_point(name, T, B, args))
    except Exception as e:  # one failed point (OOM, missing kernel) must not end the run
        row["error"] = _error(e)
    _reset_memory(args.device)  # the model and optimizer died with _train_point's frame
    return row


def _train_point(name: str, T: int, B: int, args: argparse.Namespace) -> dict:
    model = _build(name, args).train()
    if args.compile:
        # Static shapes: each (B, T) point compiles its own graphs in the warm-up steps, once per
        # block kind; the timed steps then run them without guards failing.
        compile_for_training(model, mode=args.compile, dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device.type == "cuda")
    ids = torch.randint(0, model.config.vocab_size, (B, T), device=args.device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    s = statistics.median(_timed(step, args.device) for _ in range(args.steps))
    return {"params": sum(p.numel() for p in model.parameters()), "s_per_step": s, "tok_s": B * T / s,
            "peak_mem_GB": _peak_gb(args.device)}


# -- 2. prefill and decode ----------------------------------------------------------------------
def bench_decode(name: str, context: int, args: argparse.Namespace) -> dict:
    """Prefill ``context`` tokens, then time single-token decode steps; report the cache's bytes."""
    row = {"model": name, "size": args.size, "context": context, "B": args.decode_batch}
    _reset_memory(args.device)
    try:
        row.update(_decode_point(name, context, args.decode_batch, args))
    except Exception as e:
        row["error"] = _error(e)
    _reset_memory(args.device)
    return row


@torch.inference_mode()
def _decode_point(name: str, context: int, B: int, args: argparse.Namespace) -> dict:
    model = _build(name, args).eval()
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (B, context), device=args.device)
    # an untimed prefill of the same shape first: kernel compilation / autotuning is not prefill time
    model(prompt, past_key_values=HybridCache(model.config), logits_to_keep=1)
    cache = HybridCache(model.config)
    prefill_s = _timed(lambda: model(prompt, past_key_values=cache, logits_to_keep=1), args.device)
    token = torch.randint(0, vocab, (B, 1), device=args.device)

    def decode(n: int) -> None:
        for _ in range(n):
            model(token, past_key_values=cache, logits_to_keep=1)

    # At least 4 untimed steps: the first steps after a prefill pay one-time costs (allocator
    # growth, kernel selection for the single-token shapes) that are not per-token cost.
    decode(max(args.warmup, 4))
    s = _timed(lambda: decode(args.decode_steps), args.device)
    by_kind = cache.nbytes_by_kind()
    return {
        "prefill_s": prefill_s,
        "decode_ms_per_step": 1e3 * s / args.decode_steps,
        "decode_tok_s": B * args.decode_steps / s,
        "cache_MB": cache.nbytes() / 1e6,
        "cache_recurrent_MB": by_kind["recurrent"] / 1e6,
        "cache_kv_MB": by_kind["kv"] / 1e6,
        "peak_mem_GB": _peak_gb(args.device),
    }


# -- report -------------------------------------------------------------------------------------
def _fmt(v: object, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _print_tables(train: list[dict], decode: list[dict]) -> None:
    if train:
        mode = train[0].get("compile")
        print(f"\ntraining (fwd+bwd+AdamW), {train[0]['size']}, "
              + (f"compiled blocks ({mode})" if mode else "eager"))
        print(f"{'model':<20}{'T':>7}{'B':>5}{'params':>15}{'s/step':>10}{'tok/s':>11}{'peak GB':>9}  error")
        for r in train:
            print(f"{r['model']:<20}{r['T']:>7}{_fmt(r.get('B'), 'd'):>5}{_fmt(r.get('params'), ','):>15}"
                  f"{_fmt(r.get('s_per_step'), '.3f'):>10}{_fmt(r.get('tok_s'), ',.0f'):>11}"
                  f"{_fmt(r.get('peak_mem_GB'), '.1f'):>9}  {r.get('error', '')}")
    if decode:
        print(f"\nprefill + decode, batch {decode[0].get('B', '-')}")
        print(f"{'model':<20}{'context':>8}{'prefill s':>10}{'ms/tok':>9}{'tok/s':>10}"
              f"{'cache MB':>10}{'(kv MB)':>9}{'peak GB':>9}  error")
        for r in decode:
            print(f"{r['model']:<20}{r['context']:>8}{_fmt(r.get('prefill_s'), '.3f'):>10}"
                  f"{_fmt(r.get('decode_ms_per_step'), '.2f'):>9}{_fmt(r.get('decode_tok_s'), ',.1f'):>10}"
                  f"{_fmt(r.get('cache_MB'), ',.1f'):>10}{_fmt(r.get('cache_kv_MB'), ',.1f'):>9}"
                  f"{_fmt(r.get('peak_mem_GB'), '.1f'):>9}  {r.get('error', '')}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    names = [n for n in args.models.split(",") if n]
    on_gpu = args.device.type == "cuda"
    device_name = torch.cuda.get_device_name(args.device) if on_gpu else platform.processor()
    print(f"device: {device_name or args.device}  torch {torch.__version__}")

    start = time.perf_counter()

    train: list[dict] = []
    decode: list[dict] = []

    def save() -> None:
        """Write what is measured so far: a run stopped from outside keeps its finished points."""
        if not args.out:
            return
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "gatedelta bench models " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": device_name or str(args.device),
            "torch": torch.__version__,
            "compile": args.compile,  # torch.compile mode of the training points, None: eager
            "protocol": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()},
            "train": train,
            "decode": decode,
        }
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)

    def run(bench: Callable[..., dict], name: str, point: int, label: str, rows: list[dict]) -> None:
        if time.perf_counter() - start > args.max_seconds:
            row = {"model": name, "size": args.size, label: point,
                   "error": f"skipped: the run passed --max-seconds={args.max_seconds:g}"}
        else:
            row = bench(name, point, args)
        rows.append(row)
        figure = row.get("tok_s") or row.get("decode_tok_s")
        status = row.get("error") or (f"ok ({figure:,.1f})" if figure is not None else "ok")
        print(f"  {name} {label}={point}: {status}", flush=True)
        save()

    if not args.skip_train:
        for n in names:
            for T in args.seq_lens:
                run(bench_train, n, T, "T", train)
    if not args.skip_decode:
        for n in names:
            for L in args.contexts:
                run(bench_decode, n, L, "context", decode)
    _print_tables(train, decode)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0
