"""CPU speed and memory of the chunked PyTorch path (issue 2's acceptance figures).

    .venv/bin/python benchmarks/cpu_ops.py            # full run, ~1-2 min on a 2-core CPU
    .venv/bin/python benchmarks/cpu_ops.py --quick    # smaller T, a smoke test

1. Speed: ``ops.gdn2`` forward, fp32, B=1, T=4096, H=4, K=V=64 (per-channel g, b, w), backend
   "torch" (chunked) vs "reference" (token by token). Both are timed in full at the same T (no
   extrapolation), interleaved in ``--ref-repeats`` rounds (3) after three chunked warm-up calls:
   each round times ``--repeats`` chunked calls (7) and then one reference call, and its speedup
   is the reference time over the round's chunked median. The reported speedup is the median over
   rounds (a slow stretch of this shared VM then slows both sides of a round); chunked and
   reference medians over all calls are reported beside it. Each setting runs in a fresh
   subprocess:
   - ``default``: torch's default thread count and OpenMP settings (what a user gets);
   - ``passive``: the same threads with ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep
     instead of spinning. On a machine shared with other jobs, spinning threads steal the cores
     the working threads need, and every small op pays for it; the reference runs ~80k small ops;
   - ``1 thread``: ``torch.set_num_threads(1)``.
   CPU seconds of the process are reported beside wall seconds.
2. Memory: peak extra memory of one chunked forward at T = 1024 … 8192. Each T runs in a fresh
   subprocess with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_=65536, so every tensor
   above 64 KiB is its own mapping, returned to the OS when freed; RSS then follows the live
   tensors). Just before the forward, with inputs built and the code path warmed up on a tiny
   input, the kernel's peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``); extra memory =
   ``VmHWM`` after the forward − ``VmRSS`` before it. It includes the output ``o`` (T·HV·V·4
   bytes) and everything the forward allocates on the way.

Prints a table and writes ``benchmarks/results/cpu_ops.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gatedelta import ops

H, K, V = 4, 64, 64
RESULTS = Path(__file__).resolve().parent / "results" / "cpu_ops.json"


def inputs(T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """gdn2 inputs, fp32, B = 1: q, k [1, T, H, K], v [1, T, H, V], g, b [1, T, H, K], w [1, T, H, V]."""
    g_ = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, K, generator=g_)
    k = F.normalize(torch.randn(1, T, H, K, generator=g_), dim=-1)
    v = torch.randn(1, T, H, V, generator=g_)
    g = F.logsigmoid(torch.randn(1, T, H, K, generator=g_) + 4.0)
    b = torch.rand(1, T, H, K, generator=g_)
    w = torch.rand(1, T, H, V, generator=g_)
    return q, k, v, g, b, w


def forward(x: tuple[torch.Tensor, ...], backend: str) -> torch.Tensor:
    with torch.no_grad():
        return ops.gdn2(*x, backend=backend)[0]


def _timed(x: tuple[torch.Tensor, ...], backend: str) -> tuple[torch.Tensor, float, float]:
    """One forward: output, wall seconds, CPU seconds of this process (all threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    o = forward(x, backend)
    return o, time.perf_counter() - t0, time.process_time() - c0


def time_speed(T: int, threads: int, repeats: int, ref_repeats: int = 3) -> dict:
    """Seconds per forward, interleaved in rounds (see the module docstring): chunked median and
    min over all calls, reference median, and the median over rounds of reference ÷ chunked.

    CPU seconds are reported beside wall seconds: with one thread they are the compute time even
    when other jobs share the machine.
    """
    torch.set_num_threads(threads)
    x = inputs(T)
    for _ in range(3):  # warm-up: lazy init, the allocator's pools for the per-call buffers
        forward(x, "torch")
    runs, refs, ratios = [], [], []
    for _ in range(ref_repeats):
        chunk = [_timed(x, "torch") for _ in range(repeats)]
        ref = _timed(x, "reference")
        runs += chunk
        refs.append(ref)
        ratios.append(ref[1] / statistics.median(r[1] for r in chunk))
    o, o_ref = runs[0][0], refs[0][0]
    ref_s, ref_cpu = statistics.median(r[1] for r in refs), statistics.median(r[2] for r in refs)
    err = float((o.double() - o_ref.double()).norm() / o_ref.double().norm())
    chunked_s = statistics.median(r[1] for r in runs)
    chunked_cpu = statistics.median(r[2] for r in runs)
    return dict(threads=threads, T=T, chunked_median_s=chunked_s, chunked_min_s=min(r[1] for r in runs),
                chunked_cpu_median_s=chunked_cpu, reference_s=ref_s, reference_min_s=min(r[1] for r in refs),
                reference_cpu_s=ref_cpu, reference_runs=ref_repeats, chunked_runs=len(runs),
                speedup=statistics.median(ratios), speedup_per_round=ratios,
                speedup_cpu_time=ref_cpu / chunked_cpu, rel_err_fp32_vs_reference=err)


def speed_child(threads: int, T: int, repeats: int, ref_repeats: int) -> None:
    """Run in the subprocess: print the speed figures as JSON."""
    print(json.dumps(time_speed(T, threads, repeats, ref_repeats)))


def measure_speed(setting: str, T: int, repeats: int, ref_repeats: int) -> dict:
    threads = 1 if setting == "1 thread" else torch.get_num_threads()
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    m = _child(["--speed-child", str(threads), "--T", str(T), "--repeats", str(repeats),
                "--ref-repeats", str(ref_repeats)], env)
    m["load_average_after"] = os.getloadavg()[0]
    m["setting"] = setting
    return m


def _child(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def memory_child(T: int) -> None:
    """Run in the subprocess: print the peak extra bytes of one chunked forward at length T."""
    torch.set_num_threads(1)  # one arena, one code path: a steady measurement
    forward(inputs(16, seed=1), "torch")  # warm-up on a tiny input: lazy init, allocator pools
    x = inputs(T)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_bytes("VmRSS")
    o = forward(x, "torch")
    peak = _status_bytes("VmHWM")
    print(json.dumps(dict(T=T, extra_bytes=peak - before, output_bytes=o.numel() * o.element_size(),
                          input_bytes=sum(t.numel() * t.element_size() for t in x))))


def measure_memory(T: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="1")
    m = _child(["--memory-child", str(T)], env)
    m["extra_bytes_per_token_head"] = m["extra_bytes"] / (T * H)
    return m


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T = 512 speed, T up to 2048 memory")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--speed-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child:
        memory_child(a.memory_child)
        return
    if a.speed_child:
        speed_child(a.speed_child, a.T, a.repeats, a.ref_repeats)
        return

    T = 512 if a.quick else 4096
    lengths = [256, 512, 1024, 2048] if a.quick else [1024, 2048, 4096, 8192]
    load = os.getloadavg()
    settings = ("default", "passive", "1 thread")
    speed = [measure_speed(setting, T, a.repeats, a.ref_repeats) for setting in settings]
    memory = [measure_memory(t) for t in lengths]

    print(f"gdn2 forward fp32, B=1, T={T}, H={H}, K=V={K}; CPU: {_cpu_model()}, {os.cpu_count()} cores; "
          f"load average before: {load[0]:.2f}")
    print("load average after each setting: "
          + ", ".join(f"{m['setting']} {m['load_average_after']:.2f}" for m in speed))
    print(f"{'setting':>8} {'threads':>7} | {'chunked median':>14} {'min':>9} {'reference':>9} "
          f"{'speedup':>7} | CPU time: {'chunked':>9} {'reference':>9} {'speedup':>7}")
    for s in speed:
        med, best, ref = s["chunked_median_s"] * 1e3, s["chunked_min_s"] * 1e3, s["reference_s"]
        cpu, ref_cpu = s["chunked_cpu_median_s"] * 1e3, s["reference_cpu_s"]
        print(f"{s['setting']:>8} {s['threads']:>7} | {med:>11.1f} ms {best:>6.1f} ms {ref:>7.2f} s "
              f"{s['speedup']:>6.1f}x | {'':>9}{cpu:>7.1f} ms {ref_cpu:>7.2f} s "
              f"{s['speedup_cpu_time']:>6.1f}x")
    print("\npeak extra memory of one chunked forward (RSS, fresh process per T)")
    print(f"{'T':>6} {'extra MiB':>10} {'bytes/token-head':>17} {'output MiB':>11} {'inputs MiB':>11}")
    for m in memory:
        print(f"{m['T']:>6} {m['extra_bytes'] / 2**20:>10.1f} {m['extra_bytes_per_token_head']:>17.0f} "
              f"{m['output_bytes'] / 2**20:>11.1f} {m['input_bytes'] / 2**20:>11.1f}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(
        command="python benchmarks/cpu_ops.py" + (" --quick" if a.quick else ""),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu=_cpu_model(), cores=os.cpu_count(), torch=torch.__version__, load_average_before=load,
        load_average_after=os.getloadavg(),
        shape=dict(B=1, T=T, H=H, K=K, V=V, op="gdn2", dtype="float32"),
        speed=speed, memory=memory,
        memory_method="fresh subprocess per T; MALLOC_MMAP_THRESHOLD_=65536, MALLOC_ARENA_MAX=1; "
                      "peak RSS (VmHWM, reset via /proc/self/clear_refs just before) during one forward "
                      "minus VmRSS just before it (inputs built, code warmed up)",
    ), indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
