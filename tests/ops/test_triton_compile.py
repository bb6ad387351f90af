"""Every Triton kernel form compiles for the H100 (sm_90) with the installed Triton, without a GPU.

The interpreter runs the kernels' arithmetic but never compiles them, so code reached only on a GPU
(the native 16-bit products: NATIVE, LOW = 1 operands; the tf32 precisions) would otherwise meet
the compiler first on the device. ``benchmarks/compile_report.py --forms`` compiles each form of
its FORMS list (protocol shapes, every switch's form) and prints one line per form.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import triton

ROOT = pathlib.Path(__file__).resolve().parents[2]
NVIDIA_BIN = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (NVIDIA_BIN / "ptxas").exists() or not (NVIDIA_BIN / "cuobjdump").exists(),
                    reason="this Triton has no bundled CUDA assembler (ptxas, cuobjdump)")
def test_every_kernel_form_compiles_for_sm90():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.compile_report import FORMS
    finally:
        sys.path.remove(str(ROOT))
    # the interpreter flag would make the kernels interpreted functions, which do not compile
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of Triton ≤ 3.9, said outright
    run = subprocess.run([sys.executable, "benchmarks/compile_report.py", "--forms", "--jobs", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(lines) == len(FORMS), run.stdout[-3000:]
    # the bf16-operand forms the interpreter emulates compile to their own code
    assert any(line.startswith("ok    state gdn2 output LOW=1") for line in lines)
