"""Cascade fixtures: the thread counts a fit really runs with."""

from __future__ import annotations

import pytest


@pytest.fixture
def threads_in_steps():
    """``(torch threads, BLAS threads)`` at every torch optimizer step taken during the test.

    BLAS threads are the largest count of any loaded BLAS library (threadpoolctl).
    """
    import torch
    from threadpoolctl import threadpool_info
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []

    def record(*_):
        blas = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        seen.append((torch.get_num_threads(), blas))

    handle = register_optimizer_step_pre_hook(record)
    yield seen
    handle.remove()
