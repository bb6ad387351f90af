"""One Triton forward + backward of an op inside the NVTX range ``prof``, for Nsight Compute.

    ncu --nvtx --nvtx-include "prof/" --clock-control none --section WarpStateStats \\
        -k regex:chunk_ python3 benchmarks/ncu_kernels.py --op gdn2 --T 2048

H = 16, K = V = 128, bf16, 32k tokens (B = 32768 / T), as ``gatedelta bench kernels``. Two calls
outside the range run first: Triton's autotuning launches every candidate config, and ncu should
see each kernel once, with the config it would run with.
"""

from __future__ import annotations

import argparse

import torch

from gatedelta import ops
from gatedelta.bench.kernels import _speed_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="gdn2", choices=("gdn2", "kda", "gdn"))
    ap.add_argument("--T", type=int, default=2048)
    a = ap.parse_args()
    x = [t.requires_grad_() for t in _speed_inputs(max(1, 32768 // a.T), a.T, 16, 128, 128, a.op)]

    def step() -> None:
        o = getattr(ops, a.op)(*x, backend="triton")[0]
        o.backward(torch.ones_like(o))

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("prof")
    step()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()


if __name__ == "__main__":
    main()
