"""Data-parallel training (DistributedDataParallel) under torchrun, and the ``--nproc`` launcher.

`torchrun --nproc_per_node=N -m potholes train ...` starts N copies of the command; each reads
its rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins one process group:
gloo on CPU, nccl on CUDA (one GPU per process, by LOCAL_RANK). Every rank loads the same data,
trains on its share of each step (`StepSampler`) and validates whole
batches of the validation set dealt out in turn; the sums are all-reduced, so every rank holds
the metrics of the whole round. Rank 0 alone talks to MLflow and writes checkpoints.

Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op: rank 0 of a world of one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from potholes.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> World:
    """This process's place, from the variables torchrun sets (a world of one without them)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _stopped(signum, frame):
    """torchrun sends SIGTERM to the other ranks when one fails (or when it is stopped itself).
    Unlike the default handler, an exception lets rank 0 end its MLflow run (KILLED) and exit.
    Once only, and not while an error is already being handled (rank 0 is then ending its run
    as FAILED after the collective with the lost rank failed): that must not be cut short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.exc_info()[0] is None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} from the launcher")


@contextlib.contextmanager
def process_group(timeout_minutes: float = 30.0):
    """Join torchrun's process group for the duration of the block; yields this process's `World`.

    Rank 0 spends its MLflow time (checkpoints, plots) while the others wait at the next
    collective, so the timeout is generous; torchrun stops all ranks as soon as one fails.
    """
    world = from_env()
    if world.size == 1:
        yield world
        return
    if torch.cuda.is_available():
        check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        yield world
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


def check_gpus(nproc: int) -> None:
    """With CUDA each process needs a GPU of its own (nccl cannot share one between ranks)."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"nproc must be at most the number of GPUs ({torch.cuda.device_count()}) with CUDA, "
                         f"one process per GPU; got {nproc} processes on this machine")


def _tensor(values) -> torch.Tensor:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor(values, dtype=torch.float64, device=device)


def all_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over all ranks (float64, the same result on every rank)."""
    if not active():
        return tuple(float(v) for v in values)
    total = _tensor(values)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return tuple(total.tolist())


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each training forward, so after the last step of
    each round each rank holds its own; validation and checkpoints must all see the same model.
    """
    if not active():
        return
    model = getattr(model, "module", model)
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The DDP wrapper that `fit` trains through (None in a world of one). The bare model stays
    what is validated and saved, so checkpoints keep their key names (no ``module.`` prefix)."""
    if not active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def from_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only and give its result to every rank; an exception it raises is
    raised on every rank, so none waits forever for a rank that gave up."""
    if not active():
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = (fn(), None)
        except Exception as exc:  # noqa: BLE001  re-raised below, on every rank
            box[0] = (None, exc)
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise error
    return result


# ----------------------------------------------------------------------------- launcher
def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "potholes", *without_option(argv, "--nproc")]


def launch(nproc: int, argv: list[str]) -> int:
    """Run this same command as ``nproc`` processes under torchrun; return its exit status."""
    command = torchrun_command(nproc, argv)
    print("launching:", " ".join(command[1:]), flush=True)
    return subprocess.call(command)
