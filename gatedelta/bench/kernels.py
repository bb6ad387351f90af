"""``gatedelta bench kernels``: the Triton kernels against FLA 0.6.0 and SDPA (DESIGN §5), on a GPU.

Steps (positional, run in the order given, each writing ``kernels_<step>_<tag>.json`` under
``--out`` as results come in, so a step cut short keeps what it measured):

* ``accuracy``: the issue's acceptance test. gdn2 with bf16 inputs (fp32 g) against the float64
  reference fed the *unrounded* inputs, ‖x − ref‖/‖ref‖, at T = 512 and 4096 for normal gates,
  8× stronger decay, 1% hard resets at g = −30 and at g = −inf; gradients at T = 512.
  ``fla-accuracy``: FLA's ``chunk_gdn2`` (default and ``safe_gate``) on the very same inputs.
* ``speed``: ``triton.testing.do_bench`` medians, H = 16, K = V = 128, bf16, 32,768 tokens per
  batch at ``--T`` (default 2k, 8k, 32k), forward and forward + backward, memory held after the
  forward, for ``--ops`` (ours: gdn2, kda, gdn; ``sdpa``: causal flash attention).
  ``fla-speed``: FLA's ``chunk_gdn2``, ``chunk_kda``, ``chunk_gated_delta_rule`` likewise (their
  first calls autotune for minutes).
* ``decode``: the one-token gdn2 step at B = 64 (ours vs ``fused_recurrent_gdn2``), eager and
  CUDA graph, as state traffic (fp32 state read + written).
* ``check``: every op of DESIGN §1 in ``--ops`` (forward + backward, GVA, varlen, decode) in bf16
  against the float64 reference — a smoke test of each compile-time flag combination on this GPU.
  On a cold GPU most of its time is compiling every autotuning candidate; with
  ``GATEDELTA_TRITON_ONE_CONFIG=1`` in the environment each kernel compiles its first one only.
* ``profile``: CUDA time per kernel of one forward + backward of each of ``--ops``.
  ``fwd-profile``: of one forward, ours and (when installed) FLA's.

FLA is optional: without it its rows are skipped. Example (what docs/benchmarks.md ran)::

    python3 benchmarks/kernels.py accuracy speed decode --out benchmarks/results --tag h100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from gatedelta import ops

# Dry runs of --check on the CPU (TRITON_INTERPRET=1) set these to "cpu" and float32.
DEVICE = "cuda"
LOW = torch.bfloat16


def _fla():
    try:
        import fla.ops.gdn2 as gdn2
        from fla.ops import chunk_gated_delta_rule, chunk_kda

        return dict(chunk_gdn2=gdn2.chunk_gdn2, fused_recurrent_gdn2=gdn2.fused_recurrent_gdn2,
                    chunk_kda=chunk_kda, chunk_gdn=chunk_gated_delta_rule)
    except Exception as e:  # noqa: BLE001 — FLA is an optional peer; say why it is missing
        print(f"FLA not available: {e!r}")
        return None


def _rel(x: torch.Tensor | None, ref: torch.Tensor) -> float:
    if x is None:
        return float("nan")
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def _inputs(B, T, H, HV, K, V, *, decay="channel", gate_scale=1.0, resets=None, device=None, seed=0):
    """Unrounded float64 inputs: q, k L2-normalised, g = logsigmoid(randn)·scale, b, w sigmoid."""
    device = device or DEVICE
    gen = torch.Generator(device=device).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen, device=device, dtype=torch.float64)
    q = F.normalize(rn(B, T, H, K), dim=-1)
    k = F.normalize(rn(B, T, H, K), dim=-1)
    v = rn(B, T, HV, V)
    g = F.logsigmoid(rn(B, T, HV, K) if decay == "channel" else rn(B, T, HV)) * gate_scale
    if resets is not None:
        m = torch.rand(B, T, HV, generator=gen, device=device, dtype=torch.float64) < 0.01
        m[:, 0] = False
        g = torch.where(m[..., None] if g.ndim == 4 else m, torch.full_like(g, resets), g)
    b = torch.sigmoid(rn(B, T, HV, K))
    w = torch.sigmoid(rn(B, T, HV, V))
    beta = torch.sigmoid(rn(B, T, HV))
    return dict(q=q, k=k, v=v, g=g, b=b, w=w, beta=beta)


# --------------------------------------------------------------------------------------------
# 1. check: every op, forward + backward, on this GPU


def check(out: dict, B=2, T=300, H=2, HV=4, K=64, V=128, op_names=None) -> None:
    """bf16 kernels vs the float64 reference for every op and form, small shapes."""
    cases = {
        "gdn2": lambda x: ("gdn2", (x["g"], x["b"], x["w"])),
        "kda": lambda x: ("kda", (x["g"], x["beta"])),
        "gdn": lambda x: ("gdn", (x["g"][..., 0], x["beta"])),
        "delta_rule": lambda x: ("delta_rule", (x["beta"],)),
        "gla": lambda x: ("gla", (x["g"],)),
        "ssd": lambda x: ("ssd", (x["g"][..., 0], x["beta"])),
        "linear_attn": lambda x: ("linear_attn", ()),
    }
    res = out.setdefault("check", {})
    for name, make in cases.items():
        if op_names and name not in op_names:
            continue
        try:
            x = _inputs(B, T, H, HV, K, V)
            torch.manual_seed(1)  # h0 and dO too: runs at different commits see the same inputs
            op, gates = make(x)
            fn = getattr(ops, op)
            h0 = torch.randn(B, HV, K, V, device=DEVICE, dtype=torch.float64)
            ref_in = [t.clone().requires_grad_() for t in (x["q"], x["k"], x["v"], *gates, h0)]
            o_ref, s_ref = fn(*ref_in[:-1], initial_state=ref_in[-1], output_final_state=True,
                              backend="reference")
            do = torch.randn_like(o_ref)
            torch.autograd.backward((o_ref, s_ref), (do, torch.ones_like(s_ref)))
            # g stays float32; the other gates go to LOW (bf16) like q, k, v
            lo = [t.detach().float() if (op not in ("delta_rule", "linear_attn") and i == 3) else
                  t.detach().to(LOW) for i, t in enumerate(ref_in[:-1])]
            lo = [t.requires_grad_() for t in lo] + [h0.float().requires_grad_()]
            o, s = fn(*lo[:-1], initial_state=lo[-1], output_final_state=True, backend="triton")
            torch.autograd.backward((o, s), (do.to(o.dtype), torch.ones_like(s)))
            r = {"o": _rel(o, o_ref), "state": _rel(s, s_ref)}
            for i, (a, b_) in enumerate(zip(lo, ref_in)):
                r[f"d{i}"] = _rel(a.grad, b_.grad)
            # varlen == per-sequence, and the decode step continues the state
            cu = torch.tensor([0, T // 3, T, 2 * T], device=DEVICE, dtype=torch.int32)
            flat = [t.detach().reshape(1, B * T, *t.shape[2:]) for t in lo[:-1]]
            o_v, s_v = fn(*flat, cu_seqlens=cu, output_final_state=True, backend="triton")
            parts = []
            for i in range(3):
                sl = [t[:, int(cu[i]):int(cu[i + 1])] for t in flat]
                parts.append(fn(*sl, output_final_state=True, backend="triton"))
            r["varlen_o"] = _rel(o_v, torch.cat([p[0] for p in parts], 1))
            r["varlen_state"] = _rel(s_v, torch.cat([p[1] for p in parts], 0))
            step = [t.detach()[:, :1] for t in lo[:-1]]
            o1, s1 = fn(*step, initial_state=s.detach(), output_final_state=True, backend="triton")
            step_ref = [t.detach()[:, :1].double() for t in lo[:-1]]
            o1r, s1r = fn(*step_ref, initial_state=s.detach().double(), output_final_state=True,
                          backend="reference")
            r["decode_o"], r["decode_state"] = _rel(o1, o1r), _rel(s1, s1r)
            r["finite"] = bool(torch.isfinite(o).all() and all(torch.isfinite(t.grad).all() for t in lo))
            res[name] = r
        except Exception as e:  # noqa: BLE001 — report and go on to the next op
            traceback.print_exc()
            res[name] = {"error": repr(e)}
        print(f"check {name}: " + json.dumps(res[name]), flush=True)
        SAVE()


# --------------------------------------------------------------------------------------------
# 2. accuracy: the acceptance test, with FLA on the same inputs


def accuracy(out: dict, fla, who=("ours", "fla")) -> None:
    H, K, V = 16, 128, 128
    scen = {"normal": {}, "strong_decay_x8": {"gate_scale": 8.0}, "resets_-30": {"resets": -30.0},
            "resets_-inf": {"resets": -math.inf}}
    res = {}
    res = out.setdefault("accuracy", {})
    for T, B in ((512, 2), (4096, 1)):
        for sname, kw in scen.items():
            x = _inputs(B, T, H, H, K, V, seed=T, **kw)
            o_ref, _ = ops.gdn2(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], backend="reference")
            bf = {n: x[n].to(torch.bfloat16) for n in ("q", "k", "v", "b", "w")}
            g32 = x["g"].float()
            if "ours" in who:
                o, _ = ops.gdn2(bf["q"], bf["k"], bf["v"], g32, bf["b"], bf["w"], backend="triton")
                res[f"ours_gdn2_fwd_T{T}_{sname}"] = _rel(o, o_ref)
            if fla is not None and "fla" in who:
                for tag, safe in (("fla", False), ("fla_safe", True)):
                    try:
                        of, _ = fla["chunk_gdn2"](bf["q"], bf["k"], bf["v"], g32, bf["b"], bf["w"],
                                                  safe_gate=safe)
                        res[f"{tag}_gdn2_fwd_T{T}_{sname}"] = _rel(of, o_ref)
                    except Exception as e:  # noqa: BLE001
                        res[f"{tag}_gdn2_fwd_T{T}_{sname}"] = repr(e)
            now = {k_: v_ for k_, v_ in res.items() if f"T{T}_{sname}" in k_}
            print(f"accuracy T={T} {sname}: " + json.dumps(now), flush=True)
            SAVE()
    # gradients at T = 512
    for sname, kw in (("normal", {}), ("resets_-inf", {"resets": -math.inf})):
        x = _inputs(2, 512, H, H, K, V, seed=7, **kw)
        names = ("q", "k", "v", "g", "b", "w")
        ref_in = [x[n].clone().requires_grad_() for n in names]
        o_ref, _ = ops.gdn2(*ref_in, backend="reference")
        do = torch.randn_like(o_ref)
        o_ref.backward(do)
        for tag in who:
            if tag == "fla" and fla is None:
                continue
            lo = [(x[n].float() if n == "g" else x[n].to(torch.bfloat16)).requires_grad_() for n in names]
            try:
                if tag == "ours":
                    o, _ = ops.gdn2(*lo, backend="triton")
                else:
                    o, _ = fla["chunk_gdn2"](*lo)
                o.backward(do.to(o.dtype))
                for n, a, r_ in zip(names, lo, ref_in):
                    res[f"{tag}_gdn2_grad_d{n}_T512_{sname}"] = _rel(a.grad, r_.grad)
            except Exception as e:  # noqa: BLE001
                res[f"{tag}_gdn2_grad_T512_{sname}"] = repr(e)
        now = {k_: v_ for k_, v_ in res.items() if "grad" in k_ and sname in k_}
        print("accuracy grads " + sname + ": " + json.dumps(now), flush=True)
        SAVE()


# --------------------------------------------------------------------------------------------
# 3. speed


def _bench(fn, grad_to_none=None) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def _speed_inputs(B, T, H, K, V, op, decay_scale: float = 1.0):
    """Random inputs of the speed steps; ``decay_scale`` multiplies the log-decay (8: the
    accuracy acceptance's stronger decay, where every chunk's log-decay range exceeds the pair
    kernels' limit and takes their fallback launch)."""
    dev, bf = "cuda", torch.bfloat16
    q = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(bf)
    k = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(bf)
    v = torch.randn(B, T, H, V, device=dev, dtype=bf)
    gate = lambda *s: torch.sigmoid(torch.randn(B, T, H, *s, device=dev)).to(bf)
    if op == "gdn2":
        gates = (decay_scale * F.logsigmoid(torch.randn(B, T, H, K, device=dev)), gate(K), gate(V))
    elif op == "kda":
        gates = (decay_scale * F.logsigmoid(torch.randn(B, T, H, K, device=dev)), gate())
    else:
        gates = (decay_scale * F.logsigmoid(torch.randn(B, T, H, device=dev)), gate())
    return [q, k, v, *gates]


def _time_op(call, inputs) -> dict:
    """fwd ms, fwd+bwd ms, bytes held after forward (per token-head), with fresh grads each time."""
    r = {}
    with torch.no_grad():
        r["fwd_ms"] = _bench(lambda: call(*inputs))
    leaves = [t.detach().requires_grad_() for t in inputs]
    o = call(*leaves)
    do = torch.randn_like(o)
    del o
    try:
        def fb():
            call(*leaves).backward(do)

        r["fwdbwd_ms"] = _bench(fb, grad_to_none=leaves)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        o = call(*leaves)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base
        n = o.shape[0] * o.shape[1] * o.shape[2]
        r["saved_bytes_per_token_head"] = held / n
        r["saved_bytes_per_token_head_excl_output"] = (held - o.numel() * o.element_size()) / n
        del o
    except Exception as e:  # noqa: BLE001 — e.g. FLA refusing its GDN backward on Hopper
        r["fwdbwd_ms"] = float("nan")
        r["error"] = repr(e)
    return r


def speed(out: dict, fla, Ts=(2048, 8192, 32768), who=("ours", "fla", "sdpa"),
          op_names=("gdn2", "kda", "gdn"), decay_scale: float = 1.0) -> None:
    H, K, V, tokens = 16, 128, 128, 32768
    rows = out.setdefault("rows", [])
    for T in Ts:
        B = tokens // T
        for op in (o_ for o_ in op_names if o_ != "sdpa"):
            inputs = _speed_inputs(B, T, H, K, V, op, decay_scale)
            ours = lambda *a, _op=op: getattr(ops, _op)(*a, backend="triton")[0]
            cands = [("ours_" + op, ours)] if "ours" in who else []
            if fla is not None and "fla" in who:
                fn = fla[{"gdn2": "chunk_gdn2", "kda": "chunk_kda", "gdn": "chunk_gdn"}[op]]
                cands.append(("fla_" + op, lambda *a, _fn=fn: _fn(*a)[0]))
            for name, call in cands:
                try:
                    r = _time_op(call, inputs)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    r = {"error": repr(e)}
                r.update(op=name, B=B, T=T)
                if decay_scale != 1.0:
                    r["decay_scale"] = decay_scale
                rows.append(r)
                print("speed " + json.dumps(r), flush=True)
                SAVE()
            del inputs
        if "sdpa" not in who or "sdpa" not in op_names:
            continue
        # SDPA causal (flash) on the same tokens: [B, H, T, D]
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qs, ks, vs = (torch.randn(B, H, T, K, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            r = _time_op(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True), [qs, ks, vs])
        r.update(op="sdpa_causal", B=B, T=T)
        r["fwd_tflops"] = 4 * B * H * T * T / 2 * K / (r["fwd_ms"] * 1e-3) / 1e12
        rows.append(r)
        print("speed " + json.dumps(r), flush=True)
        SAVE()
        del qs, ks, vs
        torch.cuda.empty_cache()


def decode(out: dict, fla, sweep: bool = False) -> None:
    """One-token gdn2 step at B = 64, H = 16, K = V = 128 with a fp32 state (read + written)."""
    import triton.testing

    B, H, K, V = 64, 16, 128, 128
    x = _speed_inputs(B, 1, H, K, V, "gdn2")
    h0 = torch.randn(B, H, K, V, device=DEVICE)
    state_bytes = 2 * h0.numel() * 4
    res = {}
    ours = lambda: ops.gdn2(*x, initial_state=h0, output_final_state=True, backend="triton")
    cands = [("ours", ours)]
    if fla is not None:
        fused = fla["fused_recurrent_gdn2"]
        cands.append(("fla", lambda: fused(*x, initial_state=h0, output_final_state=True)))
    for name, fn in cands:
        with torch.no_grad():
            us = _bench(fn) * 1e3
            try:
                us_graph = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
            except Exception as e:  # noqa: BLE001
                us_graph, res[f"{name}_graph_error"] = float("nan"), repr(e)
        res[f"{name}_us"], res[f"{name}_us_graph"] = us, us_graph
        res[f"{name}_state_TBps_graph"] = state_bytes / (us_graph * 1e-6) / 1e12
        res[f"{name}_state_TBps"] = state_bytes / (us * 1e-6) / 1e12
    if sweep:
        from gatedelta.ops.triton.common import TUNING

        # the kernel's value block and warps (CUDA graph: the step's device time alone)
        saved = dict(TUNING)
        try:
            for bv in (8, 16, 32, 64):
                for warps in (1, 2, 4, 8):
                    TUNING.update(decode_bv=bv, decode_warps=warps)
                    with torch.no_grad():
                        us = triton.testing.do_bench_cudagraph(ours, rep=100, return_mode="median") * 1e3
                    res[f"ours_bv{bv}_w{warps}_us_graph"] = us
                    print(f"decode bv={bv} warps={warps}: {us:.1f} us, "
                          f"{state_bytes / (us * 1e-6) / 1e12:.2f} TB/s", flush=True)
        finally:
            TUNING.clear()
            TUNING.update(saved)
    print("decode " + json.dumps(res), flush=True)
    out["decode"] = res
    SAVE()


def profile(out: dict, lengths: tuple[int, ...] = (2048,), op_names: tuple[str, ...] = ("gdn2", "gdn"),
            fla=None, forward_only: bool = False) -> None:
    """CUDA time per kernel of one forward + backward (``forward_only``: one forward) of each op,
    H = 16, K = V = 128, 32k tokens (B = 32768 / T) at each T of ``lengths``: which kernels grow with
    T at a fixed token count, and (with ``fla``) where FLA's time goes beside ours."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for T in lengths:
        for op in (o_ for o_ in op_names if o_ != "sdpa"):
            x = _speed_inputs(max(1, 32768 // T), T, 16, 128, 128, op)
            x = [t.requires_grad_(not forward_only) for t in x]
            calls = [("ours", lambda *a, _op=op: getattr(ops, _op)(*a, backend="triton")[0])]
            if fla is not None:
                fn = fla[{"gdn2": "chunk_gdn2", "kda": "chunk_kda", "gdn": "chunk_gdn"}[op]]
                calls.append(("fla", lambda *a, _fn=fn: _fn(*a)[0]))
            for who, call in calls:
                def fn(call=call, x=x):  # autograd.grad: no accumulation kernels into .grad in the profile
                    if forward_only:
                        with torch.no_grad():
                            call(*x)
                    else:
                        torch.autograd.grad(call(*x), x, torch.ones_like(x[2]))

                try:
                    fn()
                    torch.cuda.synchronize()
                    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                        fn()
                        torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 — FLA refuses some backwards on Triton 3.6
                    print(f"profile {who} {op}: {e!r}", flush=True)
                    continue
                per = {}
                for e in prof.key_averages():
                    if e.device_time_total > 0:
                        per[e.key[:60]] = e.device_time_total / 1e3
                name = ("" if who == "ours" else who + "_") + op + ("_fwd" if forward_only else "")
                name += "" if T == 2048 else f"_T{T}"
                top = dict(sorted(per.items(), key=lambda kv: -kv[1])[:12])
                out[name] = {"total_ms": sum(per.values()), **top}
                print(f"profile {name} (ms): " + json.dumps(out[name]), flush=True)
                SAVE()


def _env(ceilings: bool = True) -> dict:
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    if torch.cuda.is_available() and ceilings:
        x = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
        env["matmul_tflops"] = 2 * 8192**3 / (_bench(lambda: x @ x) * 1e-3) / 1e12
        y = torch.empty(1 << 28, device=DEVICE, dtype=torch.float32)
        env["copy_tbps"] = 2 * y.numel() * 4 / (_bench(lambda: y.clone()) * 1e-3) / 1e12
        del x, y
    try:
        import fla

        env["fla"] = getattr(fla, "__version__", "?")
    except Exception:  # noqa: BLE001
        env["fla"] = None
    return env


def report(folder: str, tag: str = "h100") -> str:
    """Markdown tables from the JSON files of one run (ours, FLA, SDPA side by side)."""
    import glob

    def load(pattern):
        out = {}
        for f in sorted(glob.glob(os.path.join(folder, pattern))):
            with open(f) as fh:
                out[os.path.basename(f)] = json.load(fh)
        return out

    rows = [r for d in load(f"kernels_*speed*_{tag}.json").values() for r in d.get("rows", [])]
    fmt = lambda x: "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"
    by = {(r["op"], r["T"]): r for r in rows if "op" in r and "fwd_ms" in r}
    lines = ["| op (ms, B·T = 32k) | T | fwd ours | fwd FLA | f+b ours | f+b FLA | fwd FLA/ours "
             "| f+b FLA/ours | SDPA fwd | SDPA f+b | held B/token-head (ours, FLA) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for op in ("gdn2", "kda", "gdn"):
        for T in (2048, 8192, 32768):
            o, f = by.get((f"ours_{op}", T), {}), by.get((f"fla_{op}", T), {})
            sd = by.get(("sdpa_causal", T), {})
            ratio = lambda a, b: fmt(a / b) if a and b and not (math.isnan(a) or math.isnan(b)) else "—"
            lines.append(
                f"| {op} | {T} | {fmt(o.get('fwd_ms'))} | {fmt(f.get('fwd_ms'))} | "
                f"{fmt(o.get('fwdbwd_ms'))} | "
                f"{fmt(f.get('fwdbwd_ms'))} | {ratio(f.get('fwd_ms'), o.get('fwd_ms'))} | "
                f"{ratio(f.get('fwdbwd_ms'), o.get('fwdbwd_ms'))} | {fmt(sd.get('fwd_ms'))} | "
                f"{fmt(sd.get('fwdbwd_ms'))} | {fmt(o.get('saved_bytes_per_token_head'))}, "
                f"{fmt(f.get('saved_bytes_per_token_head'))} |")
    return "\n".join(lines)


def SAVE() -> None:  # replaced by main(): writes the current part's JSON as results come in
    pass


def _tuning_overrides(pairs: list[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides (Python literals) to the Triton backend's TUNING table."""
    import ast

    from gatedelta.ops.triton.common import TUNING

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in TUNING:
            raise SystemExit(f"--tuning: expected KEY=VALUE with KEY in {sorted(TUNING)}, got {pair!r}")
        out[key] = ast.literal_eval(value)
    TUNING.update(out)
    return out


def main(argv: list[str] | None = None) -> int:
    global SAVE
    p = argparse.ArgumentParser(prog="gatedelta bench kernels", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", default=["accuracy", "speed", "decode", "check"],
                   help="any of: accuracy speed decode check profile fwd-profile fla-accuracy fla-speed")
    p.add_argument("--T", type=int, nargs="*", default=[2048, 8192, 32768], help="lengths (speed, profile)")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"), help="output folder")
    p.add_argument("--tag", default="h100", help="file name suffix: kernels_<step>_<tag>.json")
    p.add_argument("--ops", nargs="*", default=["gdn2", "kda", "gdn", "sdpa"], help="ops for speed / check")
    p.add_argument("--no-ceilings", action="store_true", help="skip the matmul / copy ceilings")
    p.add_argument("--decode-sweep", action="store_true",
                   help="decode: also time the kernel at each value block × warps (decode_bv, decode_warps)")
    p.add_argument("--decay-scale", type=float, default=1.0,
                   help="speed / fla-speed: multiply the log-decay (8: every chunk takes the pair kernels'"
                        " fallback launch)")
    p.add_argument("--tuning", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override gatedelta.ops.triton.common.TUNING entries, e.g. pair_bf16=True")
    a = p.parse_args(argv)
    overrides = _tuning_overrides(a.tuning)
    if not torch.cuda.is_available():
        print("gatedelta bench kernels needs a CUDA GPU")
        return 1
    os.makedirs(a.out, exist_ok=True)
    fla = _fla() if any(s_.startswith("fla") or s_ in ("decode", "fwd-profile") for s_ in a.steps) else None
    env = _env(not a.no_ceilings)
    if overrides:
        env["tuning"] = overrides
    print("env " + json.dumps(env), flush=True)
    steps = {
        "accuracy": lambda o: accuracy(o, fla, who=("ours",)),
        "speed": lambda o: speed(o, fla, tuple(a.T), who=("ours", "sdpa"), op_names=tuple(a.ops),
                                 decay_scale=a.decay_scale),
        "decode": lambda o: decode(o, fla, sweep=a.decode_sweep),
        "check": lambda o: check(o, op_names=tuple(a.ops)),
        "profile": lambda o: profile(o, tuple(a.T), tuple(a.ops)),
        "fwd-profile": lambda o: profile(o, tuple(a.T), tuple(a.ops), fla, forward_only=True),
        "fla-accuracy": lambda o: accuracy(o, fla, who=("fla",)),
        "fla-speed": lambda o: speed(o, fla, tuple(a.T), who=("fla",), op_names=tuple(a.ops),
                                     decay_scale=a.decay_scale),
    }
    for name in a.steps:
        args = sys.argv[1:] if argv is None else argv
        res = {"env": env, "command": "gatedelta bench kernels " + " ".join(args)}
        path = os.path.join(a.out, f"kernels_{name}_{a.tag}.json" if name not in ("speed", "check") else
                            f"kernels_{name}_{'_'.join(a.ops)}_{a.tag}.json")
        t0 = time.time()

        def save(res=res, path=path, t0=t0):
            res["wall_s"] = time.time() - t0
            with open(path, "w") as f:
                json.dump(res, f, indent=1)

        SAVE = save
        try:
            steps[name](res)
        except Exception as e:  # noqa: BLE001 — keep what was measured
            traceback.print_exc()
            res["error"] = repr(e)
        save()
        print(f"wrote {path} ({res['wall_s']:.0f} s)", flush=True)
    return 0
