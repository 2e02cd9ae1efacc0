"""The process's place in a ``torchrun`` job, and the few collective calls natix needs.

``torchrun --nproc_per_node N [--nnodes M ...] -m natix ...`` starts one process per device and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. :func:`join` joins the
process group: NCCL for CUDA tensors and gloo for CPU ones (``"cpu:gloo,cuda:nccl"``), or gloo
alone without CUDA. Small Python objects (barriers, counts, check results) always travel over
gloo, so they need no GPU memory. A plain process is a world of one: nothing is joined and every
collective call returns at once.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from natix.errors import ConfigError


@dataclass(frozen=True)
class Job:
    """This process's place in the job: global and local rank and size, and the device it uses."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str = "auto"
    run_id: str = ""  # torchrun's --rdzv-id ("none" when not given)
    owner: bool = False  # this call joined the process group, so `leave` leaves it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def host(self) -> str:
        return socket.gethostname()

    def gather(self, value) -> list:
        """`value` of every rank, in rank order, on every rank (a picklable object)."""
        if self.world == 1:
            return [value]
        import torch.distributed as td

        out: list = [None] * self.world
        td.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            import torch.distributed as td

            td.barrier()


def job_env() -> tuple[int, int, int, int, str]:
    """(rank, world, local rank, local world, run id) from torchrun's environment; a world of one without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1, 0, 1, ""
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE, RANK, LOCAL_RANK or LOCAL_WORLD_SIZE is not a number: start the job with "
                          "torchrun, or unset WORLD_SIZE for a single process") from None
    return rank, world, local, local_world, os.environ.get("TORCHELASTIC_RUN_ID", "")


def join(device: str = "auto") -> Job:
    """Join the torchrun job this process belongs to, if any: its place and device (``cuda:LOCAL_RANK``
    on a GPU node, where `device` may only be auto or cuda; cpu otherwise)."""
    rank, world, local, local_world, run_id = job_env()
    if world == 1:
        return Job(device=device)
    import torch
    import torch.distributed as td

    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        if device not in ("auto", "cuda"):
            raise ConfigError(f"under torchrun each rank takes its own GPU (cuda:LOCAL_RANK): pass --device auto or "
                              f"cuda, not {device}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    owner = not td.is_initialized()  # a caller that set up its own group keeps it
    if owner:
        td.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return Job(rank=rank, world=world, local_rank=local, local_world=local_world, device=device, run_id=run_id,
               owner=owner)


def leave(job: Job) -> None:
    """Leave the process group (after the last collective call) when :func:`join` joined it."""
    if job.world > 1 and job.owner:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


__all__ = ["Job", "job_env", "join", "leave"]
