"""Test-wide setup: Triton's interpreter rounds fp32 → bf16 as the GPU does (its own conversion
truncates: see :mod:`gatedelta.ops.triton.interpret`)."""

from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET") == "1":
    from gatedelta.ops.triton.interpret import round_bf16_to_nearest_even

    round_bf16_to_nearest_even()
