"""The accuracy protocol's gradient case on the CPU, through Triton's interpreter, for TUNING
variants: which intermediates may be bf16, which products may take bf16 operands.

    TRITON_INTERPRET=1 python benchmarks/interp_accuracy.py --op gdn2 \\
        --variant defaults --variant 'scratch_bf16=("W","KD","QG","EG","h","dh","U","R","M")'

gdn2 (or kda) at T = 512, B = 2 (or ``--T 4096``, B = 1), K = V = 128, bf16 inputs against the
float64 reference fed the unrounded inputs, as ``gatedelta bench kernels accuracy`` does on a GPU,
with H = 2 instead of 16 (the interpreter is slow; per-element error statistics do not depend on
H). One dO for every variant. The interpreter rounds fp32 to bf16 as the GPU does here
(:func:`gatedelta.ops.triton.interpret.round_bf16_to_nearest_even`, as in the test suite): its own
cast truncates, which doubles bf16 rounding errors. On 2026-12-08 the defaults gave a forward
error of 3.74e-3 here and 3.84e-3 on the H100 (H = 16, `kernels_accuracy_h100.json`). Prints one
line of relative errors (×1e3) per variant.
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="gdn2", choices=["gdn2", "kda"])
    p.add_argument("--H", type=int, default=2)
    p.add_argument("--T", type=int, default=512, help="tokens per sequence (4096: one sequence)")
    p.add_argument("--variant", action="append", default=[],
                   help="'defaults' or space-separated KEY=VALUE TUNING overrides; repeatable")
    a = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (set before Triton is imported)")
    from gatedelta import ops
    from gatedelta.bench.kernels import _inputs, _rel, _tuning_overrides
    from gatedelta.ops.triton.common import TUNING
    from gatedelta.ops.triton.interpret import round_bf16_to_nearest_even

    round_bf16_to_nearest_even()

    defaults = dict(TUNING)
    x = _inputs(2 if a.T <= 512 else 1, a.T, a.H, a.H, 128, 128, seed=7, device="cpu")
    names = ("q", "k", "v", "g", "b", "w") if a.op == "gdn2" else ("q", "k", "v", "g", "beta")
    ref_in = [x[n].clone().requires_grad_() for n in names]
    o_ref, _ = getattr(ops, a.op)(*ref_in, backend="reference")
    do = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(11), dtype=o_ref.dtype)
    o_ref.backward(do)
    for variant in a.variant or ["defaults"]:
        TUNING.clear()
        TUNING.update(defaults)
        if variant != "defaults":
            _tuning_overrides(variant.split())
        lo = [(x[n].float() if n == "g" else x[n].to(torch.bfloat16)).requires_grad_() for n in names]
        o, _ = getattr(ops, a.op)(*lo, backend="triton")
        o.backward(do.to(o.dtype))
        err = {"o": _rel(o.detach(), o_ref.detach()),
               **{f"d{n}": _rel(t.grad, r.grad) for n, t, r in zip(names, lo, ref_in)}}
        row = {k: round(e * 1e3, 3) for k, e in err.items()}
        print(json.dumps({"op": a.op, "T": a.T, "variant": variant, "rel_err_x1e3": row}), flush=True)


if __name__ == "__main__":
    main()
