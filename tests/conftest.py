"""Test-wide setup: Triton's interpreter made to round to bf16 as the GPU does."""

from __future__ import annotations

import os

import numpy as np


def _interpreter_rounds_to_nearest_even() -> None:
    """Triton's interpreter (3.9) converts fp32 to bf16 by truncation, in ``.to(tl.bfloat16)``
    and in every store to a bf16 tensor: twice the error of the GPU's conversion (round to
    nearest, ties to even). Tests that measure the kernels' bf16 accuracy on the CPU would then
    see a different number than a GPU run. This replaces that one conversion with the GPU's."""
    import triton.language as tl
    from triton.runtime import interpreter

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_rne(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.asarray(src.data).view(np.uint32)
            with np.errstate(over="ignore"):  # NaNs with the sign bit set wrap; replaced below
                rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            quiet_nan = ((bits >> 16) | 0x40).astype(np.uint16)
            return interpreter.TensorHandle(np.where(np.isnan(src.data), quiet_nan, rounded), dst_type.scalar)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_rne


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_rounds_to_nearest_even()
