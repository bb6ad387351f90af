"""GPU-only checks the CPU tests cannot make (run on a CUDA machine; two GPUs for the first):

1. Inputs on a GPU other than the current one: forward, backward and a decode step on the last
   GPU while GPU 0 is current, against the same calls made with that GPU current.
2. A packed decode step (``cu_seqlens``, mixed lengths averaging ≤ 4 tokens) captured in a CUDA
   graph and replayed on new inputs, against eager.

Prints one line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import sys

import torch

from gatedelta import ops


def _inputs(B: int, T: int, H: int, K: int, V: int, device: str, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q = r(B, T, H, K).to(device, torch.bfloat16)
    k = torch.nn.functional.normalize(r(B, T, H, K), dim=-1).to(device, torch.bfloat16)
    v = r(B, T, H, V).to(device, torch.bfloat16)
    g = (-torch.rand(B, T, H, K, generator=gen) * 0.1).to(device)
    b = torch.rand(B, T, H, K, generator=gen).to(device, torch.bfloat16)
    w = torch.rand(B, T, H, V, generator=gen).to(device, torch.bfloat16)
    return q, k, v, g, b, w


def other_gpu() -> bool:
    n = torch.cuda.device_count()
    if n < 2:
        print("other_gpu: skipped (one GPU)")
        return True
    dev = f"cuda:{n - 1}"
    x = _inputs(2, 300, 2, 64, 64, dev)
    s0 = torch.randn(2, 2, 64, 64, device=dev)

    def run():
        leaves = [t.clone().requires_grad_() for t in x]
        o, s = ops.gdn2(*leaves, initial_state=s0, output_final_state=True, backend="triton")
        (o.float().square().sum() + s.sum()).backward()
        with torch.no_grad():
            o1, s1 = ops.gdn2(*(t[:, :1] for t in x), initial_state=s, output_final_state=True,
                              backend="triton")
        return [o, s, o1, s1] + [t.grad for t in leaves]

    torch.cuda.set_device(0)
    got = run()
    torch.cuda.synchronize(dev)
    with torch.cuda.device(dev):
        want = run()
    ok = all(torch.equal(a, b_) for a, b_ in zip(got, want))
    print(f"other_gpu: {'ok' if ok else 'MISMATCH'} (inputs on {dev}, cuda:0 current)")
    return ok


def graph_packed_decode() -> bool:
    torch.cuda.set_device(0)
    lengths = [6, 1, 1, 3, 1]  # 12 tokens for 5 sequences: the decode kernel
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), device="cuda", dtype=torch.int32)
    x = _inputs(1, sum(lengths), 2, 64, 64, "cuda")
    s0 = torch.randn(len(lengths), 2, 64, 64, device="cuda")
    static = [t.clone() for t in (*x, s0)]

    def step():
        return ops.gdn2(*static[:6], initial_state=static[6], output_final_state=True, cu_seqlens=cu,
                        backend="triton")

    with torch.no_grad():
        step()  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o_g, s_g = step()
        fresh = _inputs(1, sum(lengths), 2, 64, 64, "cuda", seed=1)
        for dst, src in zip(static, (*fresh, torch.randn_like(s0))):
            dst.copy_(src)
        graph.replay()
        o_e, s_e = step()
    ok = torch.equal(o_g, o_e) and torch.equal(s_g, s_e)
    print(f"graph_packed_decode: {'ok' if ok else 'MISMATCH'} (lengths {lengths})")
    return ok


if __name__ == "__main__":
    results = []
    for check in (other_gpu, graph_packed_decode):
        try:
            results.append(check())
        except Exception as e:  # noqa: BLE001 — report and go on to the next check
            print(f"{check.__name__}: ERROR {e!r}")
            results.append(False)
    sys.exit(0 if all(results) else 1)
