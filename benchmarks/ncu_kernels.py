"""One Triton forward + backward of an op inside the NVTX range ``prof``, for Nsight Compute.

    ncu --nvtx --nvtx-include "prof/" --clock-control none --section WarpStateStats \\
        -k regex:chunk_ python3 benchmarks/ncu_kernels.py --op gdn2 --T 2048

H = 16, K = V = 128, bf16, 32k tokens (B = 32768 / T), as ``gatedelta bench kernels``. Two calls
outside the range run first: Triton's autotuning launches every candidate config, and ncu should
see each kernel once, with the config it would run with. The custom ops are called directly, so
that the backward runs on this thread (autograd's own thread is outside the NVTX range).
"""

from __future__ import annotations

import argparse

import torch

from gatedelta.bench.kernels import _speed_inputs
from gatedelta.ops.triton.op import recurrence_bwd, recurrence_fwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="gdn2", choices=("gdn2", "kda", "gdn"))
    ap.add_argument("--T", type=int, default=2048)
    a = ap.parse_args()
    x = _speed_inputs(max(1, 32768 // a.T), a.T, 16, 128, 128, a.op)
    q, k, v, g = x[:4]
    b, w = (x[4], x[5]) if a.op == "gdn2" else (x[4], x[4])  # kda / gdn: beta erases and writes
    args = (q, k, v, g, b, w, q.shape[-1] ** -0.5, None, None)

    def step() -> None:
        o, _, M, A = recurrence_fwd(*args)
        recurrence_bwd(*args, torch.ones_like(o), None, M, A)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("prof")
    step()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()


if __name__ == "__main__":
    main()
