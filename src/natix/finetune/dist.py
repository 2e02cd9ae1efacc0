"""Data-parallel fine-tuning under ``torchrun``: one process per device, each a share of every batch.

``torchrun --nproc_per_node N -m natix finetune ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU). Every global
batch (the same on every rank: the order is fixed by seed and epoch) is cut into disjoint shares
by position, rank r taking rows r, r + N, ...; each rank's loss is its share's sum divided by the
global batch size, and :meth:`Dist.sum_gradients` sums the gradients over ranks, so a step is the
step one process takes on the whole batch (up to float summation order). Rank 0 alone writes
checkpoints and the run. A plain process is a world of one and none of this runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from natix.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    device: str = "auto"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, rows):
        """This rank's rows of a global batch."""
        return rows[self.rank::self.world]

    def sum_gradients(self, params: list) -> None:
        """Sum each parameter's gradient over the ranks (a missing gradient counts as zeros)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as td

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            td.all_reduce(p.grad, op=td.ReduceOp.SUM)

    def total(self, *values: float) -> list[float]:
        """The sums over ranks of a few numbers (e.g. a loss sum and a count)."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job this process belongs to, if any; the process's rank, world and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import torch
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        if device not in ("auto", "cuda"):
            raise ConfigError(f"under torchrun each rank takes its own GPU (cuda:LOCAL_RANK): pass --device auto or "
                              f"cuda, not {device}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=rank, world=world, device=device)


def teardown(dist: Dist) -> None:
    """Leave the process group (after the last collective call)."""
    if dist.world > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
