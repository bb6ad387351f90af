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
warps and 1 stage). Pointer arguments default to fp32 (``--bf16`` names the 16-bit ones);
``cu_seqlens``, ``chunk_indices``, ``chunk_offsets`` and ``worklist`` are int32, ``scale`` and
``limit`` fp32, ``Ttot``, ``T`` and ``capacity`` int32.

``--forms`` instead compiles every form of :data:`FORMS` (the protocol shapes and each switch's
form; ~15 s on two cores with the venv's Triton; the test suite runs it) and exits 1 if any
fails, each failure with the compiler's own message.
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


# Every form of the chunk and decode kernels that a GPU compiles for the protocol shapes (H = 16,
# K = V = 128, bf16 inputs) and the switches' forms the interpreter never compiles: the native
# 16-bit products (NATIVE, LOW = 1), the deferring and fallback passes, several K blocks per
# program. Each entry: (label, kernel, constexprs, bf16 pointer arguments, warps, stages). The
# log-decay g (and so dg) is float32 by the ops' contract.
_SHAPE = dict(H=16, HV=16, K=128, BT=64)
_GDN2 = dict(DECAY=2, ERASE=2, WRITE=2)
_GDN = dict(DECAY=1, ERASE=1, WRITE=0)
_PAIR = dict(PREC="tf32", RANGE=100.0, NR=2)
_STATE = dict(_SHAPE, V=128, BK=64, BV=32, PRE_KD=True, USE_H0=True, STORE_HT=True, PREC="tf32")
_STATE_BWD = dict(_SHAPE, V=128, BK=128, BV=32, PRE_KD=True, USE_DHT=True, STORE_DH0=True, PREC="tf32")
_GRAD = dict(_SHAPE, V=128, BK=64, BV=32, KG=1, **_PAIR)
_BF16_STATE = ("k", "v", "b", "w", "W", "KD", "QG", "h", "q", "o")
_BF16_GRAD = ("q", "k", "v", "b", "w", "h", "dh", "do", "dq", "dk", "dv", "db", "dw")
_CUMSUM = dict(HV=16, K=128, BT=64, BK=64)
FORMS = [
    ("cumsum, per channel", "chunk_cumsum_kernel", dict(_CUMSUM, DECAY=2, STORE_RANGE=True), (), 4, 1),
    ("cumsum, per head", "chunk_cumsum_kernel", dict(_CUMSUM, DECAY=1, STORE_RANGE=False), (), 4, 1),
    *[(f"intra gdn2 PASS {n}", "chunk_intra_kernel",
       dict(_SHAPE, BK=32, DECAY=2, ERASE=2, PREC_INV="tf32x3", LOW=0, SPLIT_SOLVE=True, NATIVE=True, PASS=n,
            **_PAIR), ("q", "k", "b"), 8 if n == 2 else 4, 1) for n in (0, 1, 2)],
    ("intra gdn2 pair_bf16", "chunk_intra_kernel",
     dict(_SHAPE, BK=32, DECAY=2, ERASE=2, PREC_INV="tf32x3", LOW=1, SPLIT_SOLVE=True, NATIVE=True, PASS=1,
          **_PAIR), ("q", "k", "b"), 4, 1),
    ("intra gdn", "chunk_intra_kernel",
     dict(_SHAPE, BK=64, DECAY=1, ERASE=1, PREC_INV="tf32x3", LOW=0, SPLIT_SOLVE=True, NATIVE=True, PASS=0,
          **dict(_PAIR, NR=1)), ("q", "k", "b"), 4, 1),
    *[(f"solve REG_DIAG={r}", "chunk_solve_kernel", dict(HV=16, BT=64, PREC="tf32x3", REG_DIAG=r), (), 1, 1)
      for r in (False, True)],
    ("W, U gdn2", "chunk_wu_kernel",
     dict(_SHAPE, V=128, BK=64, BV=64, **_GDN2, STORE_WU=True, PRE_KD=True, PRE_QG=True, PRE_EG=True,
          PREC="tf32"), ("q", "k", "v", "b", "w", "W", "KD", "QG", "EG"), 4, 2),
    *[(f"state gdn2 output LOW={low}", "chunk_state_kernel",
       dict(_STATE, **_GDN2, FUSED_WU=False, OUT=True, PRE_QG=True, LOW=low), _BF16_STATE, 4, 2)
      for low in (0, 1)],
    ("state gdn2 recomputation LOW=1", "chunk_state_kernel",
     dict(_STATE, **_GDN2, FUSED_WU=False, OUT=False, PRE_QG=False, LOW=1), _BF16_STATE, 4, 2),
    *[(f"state gdn fused W, U LOW={low}", "chunk_state_kernel",
       dict(_STATE, **_GDN, FUSED_WU=True, OUT=True, PRE_QG=False, LOW=low), _BF16_STATE, 4, 2)
      for low in (0, 1)],
    ("state gdn, W, U read, no output (fuse_wu, fuse_output off) LOW=1", "chunk_state_kernel",
     dict(_STATE, **_GDN, FUSED_WU=False, OUT=False, PRE_QG=False, LOW=1), _BF16_STATE, 4, 2),
    ("output gdn2", "chunk_output_kernel", dict(_SHAPE, V=128, BK=128, BV=64, DECAY=2, PREC="tf32"),
     ("q", "h", "o"), 4, 2),
    *[(f"state backward {op} LOW={low}", "chunk_state_bwd_kernel",
       dict(_STATE_BWD, DECAY=gates["DECAY"], ERASE=gates["ERASE"], LOW=low),
       ("q", "k", "b", "KD", "QG", "EG", "do", "dh"), 4, 2)
      for op, gates in (("gdn2", _GDN2), ("gdn", _GDN)) for low in (0, 1)],
    *[(f"gradient gdn2 PASS {n}", "chunk_grad_kernel", dict(_GRAD, **_GDN2, LOW=0, PASS=n), _BF16_GRAD,
       8, 1) for n in (0, 1, 2)],
    ("gradient gdn2 pair_bf16", "chunk_grad_kernel", dict(_GRAD, **_GDN2, LOW=1, PASS=1), _BF16_GRAD, 8, 1),
    ("gradient gdn2 KG=2", "chunk_grad_kernel", dict(_GRAD, **_GDN2, LOW=0, PASS=1, BK=32, KG=2), _BF16_GRAD,
     8, 1),
    ("gradient gdn", "chunk_grad_kernel", dict(_GRAD, **_GDN, LOW=0, PASS=0, NR=1), _BF16_GRAD, 4, 1),
    *[(f"state K = V = 256 {kind}", name, dict(consts, K=256, V=256, DECAY=2, ERASE=2), bf16, 4, 2)
      for kind, name, consts, bf16 in (
          ("forward", "chunk_state_kernel",
           dict(_STATE, WRITE=2, FUSED_WU=False, OUT=True, PRE_QG=True, LOW=0), _BF16_STATE),
          ("backward", "chunk_state_bwd_kernel", dict(_STATE_BWD, LOW=0),
           ("q", "k", "b", "KD", "QG", "EG", "do", "dh")))],
    # every intermediate in bf16 (scratch_bf16 listing U, R, M, dY and A too)
    ("intra gdn2, bf16 M, A", "chunk_intra_kernel",
     dict(_SHAPE, BK=32, DECAY=2, ERASE=2, PREC_INV="tf32x3", LOW=0, SPLIT_SOLVE=True, NATIVE=True, PASS=1,
          **_PAIR), ("q", "k", "b", "M", "A"), 4, 1),
    ("W, U gdn2, bf16 U, A", "chunk_wu_kernel",
     dict(_SHAPE, V=128, BK=64, BV=64, **_GDN2, STORE_WU=True, PRE_KD=True, PRE_QG=True, PRE_EG=True,
          PREC="tf32"), ("q", "k", "v", "b", "w", "W", "U", "KD", "QG", "EG", "A"), 4, 2),
    ("state gdn2 output, bf16 U, M", "chunk_state_kernel",
     dict(_STATE, **_GDN2, FUSED_WU=False, OUT=True, PRE_QG=True, LOW=0), _BF16_STATE + ("U", "M"), 4, 2),
    ("state gdn2 recomputation, bf16 U, R", "chunk_state_kernel",
     dict(_STATE, **_GDN2, FUSED_WU=False, OUT=False, PRE_QG=False, LOW=0), _BF16_STATE + ("U", "R"), 4, 2),
    ("state backward gdn2, bf16 M, A, dY", "chunk_state_bwd_kernel",
     dict(_STATE_BWD, DECAY=2, ERASE=2, LOW=0),
     ("q", "k", "b", "KD", "QG", "EG", "do", "dh", "M", "A", "dY"), 4, 2),
    ("gradient gdn2, bf16 R, dY", "chunk_grad_kernel", dict(_GRAD, **_GDN2, LOW=0, PASS=1),
     _BF16_GRAD + ("R", "dY"), 8, 1),
    ("decode gdn2", "recurrent_step_kernel",
     dict(H=16, HV=16, K=128, V=128, BK=128, BV=32, **_GDN2, USE_H0=True, VARLEN=False),
     ("q", "k", "v", "b", "w", "o"), 2, 1),
]



def _op_forms(op: str, decay: int, erase: int) -> list[tuple]:
    """The intra, state, state-gradient and gradient kernels as an op with these gate forms (no
    write gate) compiles them at the defaults: per-channel decay defers (PASS 1), the others run
    one checked launch; the state kernel forms R itself for decay forms 0 and 1 (fuse_wu)."""
    pair = dict(_PAIR, NR=2 if decay == 2 else 1, PASS=1 if decay == 2 else 0)
    gates = dict(DECAY=decay, ERASE=erase)
    fused = decay in (0, 1)
    pre = decay > 0 and erase > 0  # the W, U kernel writes the decayed operands
    return [
        (f"intra {op}", "chunk_intra_kernel",
         dict(_SHAPE, BK=32 if decay == 2 else 64, **gates, PREC_INV="tf32x3", LOW=0, SPLIT_SOLVE=True,
              NATIVE=True, **pair), ("q", "k", "b"), 4, 1),
        (f"state {op}", "chunk_state_kernel",
         dict(_STATE, **gates, WRITE=0, FUSED_WU=fused, OUT=True, PRE_KD=pre and not fused,
              PRE_QG=pre and not fused and decay == 2, LOW=0), _BF16_STATE, 4, 2),
        (f"state backward {op}", "chunk_state_bwd_kernel", dict(_STATE_BWD, **gates, PRE_KD=pre, LOW=0),
         ("q", "k", "b", "KD", "QG", "EG", "do", "dh"), 4, 2),
        (f"gradient {op}", "chunk_grad_kernel", dict(_GRAD, **gates, WRITE=0, LOW=0, **pair), _BF16_GRAD,
         8 if decay == 2 else 4, 1),
    ]


FORMS += [form for op, decay, erase in (("kda", 2, 1), ("gla", 2, 0), ("delta_rule", 0, 1), ("ssd", 1, 0),
                                        ("linear_attn", 0, 0)) for form in _op_forms(op, decay, erase)]


def compile_form(form: tuple) -> str:
    """One :data:`FORMS` entry's report line, or its compile error."""
    label, name, consts, bf16, warps, stages = form
    try:
        return f"ok    {label}: {compile_one(find_kernel(name), consts, set(bf16), warps, stages)}"
    except Exception as e:  # noqa: BLE001 — report every failing form, not just the first
        root = e  # Triton wraps the error once per calling function: the innermost says what
        while root.__cause__ is not None:
            root = root.__cause__
        return f"FAIL  {label}: {type(root).__name__}: {str(root)[-600:]}"


def compile_forms(jobs: int) -> int:
    """Compile every :data:`FORMS` entry (``jobs`` processes); the number that failed."""
    import concurrent.futures
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        lines = list(pool.map(compile_form, FORMS))
    for line in lines:
        print(line, flush=True)
    return sum(line.startswith("FAIL") for line in lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", nargs="?",
                   help="e.g. chunk_grad_kernel, chunk_intra_kernel, recurrent_step_kernel")
    p.add_argument("--forms", action="store_true",
                   help="instead: compile every kernel form of FORMS (protocol shapes, every switch's form)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for --forms")
    p.add_argument("--const", nargs="*", default=[], metavar="NAME=VALUE",
                   help="constexpr values (Python literals; None for an absent pointer)")
    p.add_argument("--bf16", nargs="*", default=[], metavar="ARG", help="pointer arguments holding bf16")
    p.add_argument("--warps", nargs="*", type=int, default=[4, 8])
    p.add_argument("--stages", nargs="*", type=int, default=[1, 2])
    a = p.parse_args(argv)
    if a.forms:
        raise SystemExit(1 if compile_forms(a.jobs) else 0)
    if a.kernel is None:
        p.error("name a kernel, or pass --forms")
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
