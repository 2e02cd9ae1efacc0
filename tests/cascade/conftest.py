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


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two runs on one synthetic cache: stage 1 weak (global view only), stage 2 strong (max over views).

    Both use the cache's default splits, so their val_calib and val_test hold the same images.
    """
    import torch

    from natix.cache.synthetic import make_synthetic_cache
    from natix.heads.runs import fit_run
    from natix.heads.train import HeadConfig, TrainConfig

    train = TrainConfig(lr=1e-2, batch_size=64, max_epochs=10, threads=1)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cascade-runs")
    cache = make_synthetic_cache(root / "cache", n=1500, n_views=4, dim=16, strength=2.5)
    fit_run(cache, root / "stage1", head=HeadConfig(agg="global"), train=train)
    fit_run(cache, root / "stage2", head=HeadConfig(agg="max"), train=train)
    torch.set_num_threads(old)
    return {"root": root, "cache": cache, "stage1": root / "stage1", "stage2": root / "stage2"}
