"""Training in several processes, and stopping them together.

Owns this process's place among those `torchrun` started (`Processes`), the GPU each takes,
the process group, the DistributedDataParallel wrapper, the all-reduce that averages each
step's losses, and Ctrl-C: a request to stop after the current step, shared by all processes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from stylize.errors import StylizeError


@dataclass(frozen=True)
class Processes:
    """This process's place among those `torchrun` started (rank 0 of 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # The processes on this machine, which share its memory when they train on the CPU.
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Processes:
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
            )
        except ValueError:
            raise StylizeError(
                "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (set by "
                "torchrun)"
            ) from None


def process_device(device: torch.device, processes: Processes) -> torch.device:
    """Under torchrun each process on a machine takes the GPU of its local rank."""
    if processes.world_size == 1:
        return device
    if device.type == "cuda":
        if processes.local_rank >= torch.cuda.device_count():
            raise StylizeError(
                f"process {processes.local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} found): start at most that many per machine"
            )
        return torch.device("cuda", processes.local_rank)
    if device.type != "cpu":
        raise StylizeError(
            f"training in several processes needs CUDA GPUs or the CPU, not {device}"
        )
    return device


@contextmanager
def process_group(processes: Processes, device: torch.device) -> Iterator[None]:
    """Joins the other processes for the duration (nothing to join when there are none)."""
    distributed = processes.world_size > 1
    if device.type == "cuda" and device.index is not None:
        # NCCL and the loader's pinned memory work on the current GPU.
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if distributed:
            dist.destroy_process_group()


def parallel_model(net: nn.Module, device: torch.device, processes: Processes) -> nn.Module:
    """`net` itself, or wrapped to average its gradients over the processes."""
    if processes.world_size == 1:
        return net
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )


def average_over_processes(report: Tensor, stop: bool, processes: Processes) -> tuple[Tensor, bool]:
    """Each step's losses averaged over the processes, and whether any was asked to stop."""
    if processes.world_size == 1:
        return report, stop
    shared = torch.cat([report, report.new_tensor([float(stop)])])
    dist.all_reduce(shared)
    return shared[:-1] / processes.world_size, bool(shared[-1] > 0)


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers' start: Ctrl-C reaches the whole process group; only the main process
    should act on it, and it still needs its loader workers to finish the current step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Turns Ctrl-C (SIGINT) into a request to stop after the current step.

    Further SIGINTs are ignored too: torchrun forwards the one it receives to processes that
    already got the terminal's, and stopping halfway through an optimizer step would leave a
    half-updated model to save."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def request_stop(signal_number: int, frame: object) -> None:
        requested.set()

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
