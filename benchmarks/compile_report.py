"""Registers, spills and shared memory of one Triton kernel compiled for the H200 (sm_90), here,
without a GPU: what the device's compiler will do, before spending device time on it.

The device runs Triton 3.6. Compile with that version (the package cache has its wheel) and with
the JIT's 16-byte divisibility hints on pointer arguments: without the hints, the code differs
(no vectorised loads) and so do the registers, and Triton 3.6's LLVM SLP-vectorizer crash on a
batched ``[4, 16, 16]`` product (2026-11-30) did not show. With both, the figures match the
device's (the native intra kernel: 135 registers, no spill)::

    .venv/bin/python -m pip install --no-deps --target /tmp/t36 \\
        /opt/pypi/files/triton-3.6.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
    PYTHONPATH=/tmp/t36:. .venv/bin/python benchmarks/compile_report.py chunk_grad_kernel \\
        --const H=16 HV=16 K=128 V=128 BT=64 BK=32 BV=32 KG=1 DECAY=2 ERASE=2 WRITE=2 LOW=0 \\
                PREC='"tf32"' RANGE=100.0 NR=2 PASS=1 \\
        --bf16 q k v b w do dq dk dv db dw h dh --warps 4 8 --stages 1 2

Prints one line per (warps, stages): registers per thread, stack (spills) per thread, shared
memory. The stack is 4 × the spill count the autotuner's records show from the device (the
``compiled`` lists of ``tune_*.json``: gdn2's gradient kernel 4,016 B here, 1,004 there, at 4
warps and 1 stage). Pointer arguments default to fp32 (``--bf16`` names the 16-bit ones); ``cu_seqlens``,
``chunk_indices``, ``chunk_offsets`` and ``worklist`` are int32, ``scale`` and ``limit`` fp32, ``Ttot``,
``T`` and ``capacity`` int32.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner

from gatedelta.ops.triton import backward, decode, forward

MODULES = (forward, backward, decode)
INT_POINTERS = ("cu_seqlens", "chunk_indices", "chunk_offsets", "worklist")


def find_kernel(name: str):
    for module in MODULES:
        kern = getattr(module, name, None)
        if kern is not None:
            return kern.fn if isinstance(kern, Autotuner) else kern
    raise SystemExit(f"no kernel {name!r} in {[m.__name__ for m in MODULES]}")


def signature(kern, consts: dict, bf16: set[str]) -> tuple[dict, list[str]]:
    names = list(inspect.signature(kern.fn).parameters)
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ("scale", "limit"):
            sig[n] = "fp32"
        elif n in ("Ttot", "T", "capacity"):
            sig[n] = "i32"
        elif n in INT_POINTERS:
            sig[n] = "*i32"
        else:
            sig[n] = "*bf16" if n in bf16 else "*fp32"
    return sig, names


def compile_one(kern, consts: dict, bf16: set[str], warps: int, stages: int) -> str:
    sig, names = signature(kern, consts, bf16)
    # the JIT marks 16-byte-aligned pointers so; the vectorised loads they allow change the code
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if sig[n].startswith("*")}
    src = ASTSource(fn=kern, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = next((line.strip() for line in out.splitlines() if "REG" in line), out[-300:])
    fields = dict(item.split(":") for item in usage.split() if ":" in item)
    return (f"warps={warps} stages={stages}: registers {fields.get('REG')}, stack {fields.get('STACK')} B, "
            f"shared {ck.metadata.shared} B")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", help="e.g. chunk_grad_kernel, chunk_intra_kernel, recurrent_step_kernel")
    p.add_argument("--const", nargs="*", default=[], metavar="NAME=VALUE",
                   help="constexpr values (Python literals; None for an absent pointer)")
    p.add_argument("--bf16", nargs="*", default=[], metavar="ARG", help="pointer arguments holding bf16")
    p.add_argument("--warps", nargs="*", type=int, default=[4, 8])
    p.add_argument("--stages", nargs="*", type=int, default=[1, 2])
    a = p.parse_args(argv)
    consts = {}
    for item in a.const:
        name, value = item.split("=", 1)
        consts[name] = ast.literal_eval(value)
    kern = find_kernel(a.kernel)
    print(f"{a.kernel} (Triton {triton.__version__}, sm_90)")
    for warps in a.warps:
        for stages in a.stages:
            print("  " + compile_one(kern, consts, set(a.bf16), warps, stages), flush=True)


if __name__ == "__main__":
    main()
