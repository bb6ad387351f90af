"""The interpreter's fp32 → bf16 conversion, as the test suite sets it up
(:func:`gatedelta.ops.triton.interpret.round_bf16_to_nearest_even`): rounded as on the GPU."""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl


@triton.jit
def _store_kernel(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y + o, tl.load(x + o))  # fp32 into a bf16 tensor: the store converts


@triton.jit
def _cast_kernel(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y + o, tl.load(x + o).to(tl.bfloat16).to(tl.float32))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter's conversion")
def test_interpreter_stores_and_casts_round_to_nearest_even():
    torch.manual_seed(0)
    x = torch.randn(1024) * 10.0 ** torch.randint(-30, 30, (1024,))
    x[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.3895e38])  # the last rounds to inf
    want = x.to(torch.bfloat16)
    y = torch.empty(1024, dtype=torch.bfloat16)
    _store_kernel[(1,)](x, y, N=1024)
    z = torch.empty(1024)
    _cast_kernel[(1,)](x, z, N=1024)
    for got in (y, z.to(torch.bfloat16)):
        assert got[0].isnan()
        assert torch.equal(got[1:], want[1:])
    assert not torch.equal(want[4:].float(), x[4:])  # the values do round
