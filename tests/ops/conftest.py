"""Shared setup for the ops tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each ops test on one thread.

    The test shapes are tiny: a thread pool buys nothing there, and on a busy machine (CI runners,
    parallel jobs) OpenMP's barriers between tiny ops can cost milliseconds each.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
