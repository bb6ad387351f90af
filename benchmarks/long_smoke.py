"""Every op of the Triton backend at one long sequence on a GPU: forward + backward, finite, and
the output and gradients against the PyTorch chunked backend (fp32 inputs rounded like the bf16
ones), so that a kernel fault or a wrong result at the sequential kernels' narrowest value blocks
(one sequence, 16 heads: 16-wide) shows.

    python benchmarks/long_smoke.py --ops gdn delta_rule --T 32768      # one process per op is safer
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gatedelta import ops

sys.path.insert(0, "tests/ops")
from helpers import OPS, gate_kwargs, make_inputs  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="*", default=list(OPS))
    p.add_argument("--T", type=int, default=32768)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--K", type=int, default=128)
    a = p.parse_args()
    for op in a.ops:
        torch.manual_seed(0)
        args, _ = make_inputs(op, B=1, T=a.T, H=a.H, G=1, K=a.K, V=a.K, dtype=torch.float32)
        args = [x.cuda() for x in args]
        # q, k L2-normalised as in the models; bf16 inputs (log-decays stay fp32)
        q, k = (torch.nn.functional.normalize(x, dim=-1) for x in args[:2])
        gates = gate_kwargs(op, tuple(args[3:]))
        lo = [q.bfloat16(), k.bfloat16(), args[2].bfloat16()]
        lo_g = {n: (g if n == "g" else g.bfloat16()) for n, g in gates.items()}
        res = {"op": op, "T": a.T}
        try:
            outs = {}
            for backend, dtype in (("triton", None), ("torch", torch.float32)):
                xs = [x.detach().clone().to(dtype or x.dtype).requires_grad_() for x in lo]
                gs = {n: g.detach().clone().to(dtype or g.dtype).requires_grad_() for n, g in lo_g.items()}
                o, _ = ops.recurrence(*xs, **gs, backend=backend)
                do = torch.ones_like(o) / o.shape[-1] ** 0.5
                o.backward(do)
                torch.cuda.synchronize()
                outs[backend] = [o.detach()] + [x.grad for x in xs] + [g.grad for g in gs.values()]
            res["finite"] = all(bool(torch.isfinite(t).all()) for t in outs["triton"])
            res["rel_vs_torch"] = [round(rel(t, r), 6) for t, r in zip(outs["triton"], outs["torch"])]
        except Exception as e:  # noqa: BLE001 — report the fault
            res["error"] = repr(e)[:300]
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
