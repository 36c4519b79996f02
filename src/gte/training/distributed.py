"""More than one process (torchrun): each rank takes its share of every step's rows, in-batch negatives are
gathered from every rank (with gradients, as sentence-transformers' gather_across_devices), and gradients
are averaged before each optimizer step, so the ranks together take the step one process would take on the
whole batch. gloo on CPU, NCCL on CUDA; one process when torchrun did not start this one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

# gloo's worker threads free each finished collective's tensors on their own time, and need the GIL for it; one that
# gets there while the interpreter is finalizing aborts the process after a run that succeeded ("terminate called
# without an active exception", pytorch/pytorch#190489). Leaving the process group, a rank gives them this long,
# with the GIL free, to finish first (measured: 0 aborts in 12 two-rank runs, against 2-4 in 8 without).
GLOO_SETTLE_S = 0.1


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    owned: bool = False  # the process group is ours to close

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, x: Tensor) -> tuple[Tensor, int]:
        """[b, d] local rows -> ([size * b, d] every rank's rows in rank order, offset of ours)."""
        if self.size == 1:
            return x, 0
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x)), self.rank * x.shape[0]

    def average(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Every rank's gradients replaced by their mean over the ranks."""
        if self.size == 1:
            return
        for p in parameters:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.size

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (a step's loss: each rank's is over its own anchors)."""
        if self.size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(total)
        return float(total) / self.size

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group joined for this run (a rank that exits without it may abort its peers), then let
        gloo's threads settle (GLOO_SETTLE_S)."""
        if self.owned:
            torch.distributed.destroy_process_group()
            time.sleep(GLOO_SETTLE_S)


def join(device: str | None) -> tuple[World, str | None]:
    """The process group torchrun set up (WORLD_SIZE > 1), joined; and the device this rank trains on."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    owned = not torch.distributed.is_initialized()
    if owned:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), owned), device
