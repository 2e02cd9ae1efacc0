"""Data-parallel fine-tuning under ``torchrun``: one process per device, each a share of every batch.

``torchrun --nproc_per_node N -m natix finetune ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` joins the process group (:func:`natix.distributed.join`: NCCL for
the gradients on CUDA, gloo for CPU tensors and messages). Every global
batch (the same on every rank: the order is fixed by seed and epoch) is cut into disjoint shares
by position, rank r taking rows r, r + N, ...; each rank's loss is its share's sum divided by the
global batch size, and :meth:`Dist.sum_gradients` sums the gradients over ranks, so a step is the
step one process takes on the whole batch (up to float summation order). Rank 0 alone writes
checkpoints and the run. A plain process is a world of one and none of this runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natix.distributed import Job, join, leave


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (see :mod:`natix.distributed`) and the training collectives."""

    job: Job = field(default_factory=Job)

    @property
    def rank(self) -> int:
        return self.job.rank

    @property
    def world(self) -> int:
        return self.job.world

    @property
    def device(self) -> str:
        return self.job.device

    @property
    def main(self) -> bool:
        return self.job.main

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
        """The sums over ranks of a few numbers (e.g. a loss sum and a count), over gloo."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        self.job.barrier()


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job this process belongs to, if any: its rank, world and device."""
    return Dist(join(device))


def teardown(dist: Dist) -> None:
    """Leave the process group (after the last collective call)."""
    leave(dist.job)
