"""Training threads bound to cores, so a busy neighbour slows a step by the CPU it takes, no more.

Unbound, the two threads of a 2-core step slow 2.5-3x beside one busy process: the scheduler puts
a thread that has work on the core where another of ours spins at a barrier. Bound one per core,
the same step slows 1.6-1.9x, and the quiet step is as fast as before (BENCHMARKS.md row 13). The
thread count, and so every result, stays the same: only where the threads run changes.

libgomp reads its binding once, when torch loads it, and binds the calling thread there too. So
`prepare` runs before torch is imported: it sets ``OMP_PROC_BIND``/``OMP_PLACES`` to the cores this
process owns (under torchrun, this rank's share), imports torch, and then takes both variables out
of the environment and frees the main thread again, so that nothing started later (DataLoader
workers, Spark, a tracking server) inherits a binding. `pinned` binds the main thread for the
training loop only; libgomp's own threads keep the core it gave each. Nothing of this imports torch.
"""

from __future__ import annotations

import contextlib
import os
import sys

USER_SETTINGS = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
_state: dict = {}  # "owned": the cores this process may run on; "places": this rank's cores, one thread each


def owned_cores() -> list[int]:
    """The cores this process may run on (its affinity mask, not the host's count)."""
    if "owned" in _state:
        return _state["owned"]
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: no binding
        return []


def rank_cores(owned: list[int], local_rank: int, local_world: int) -> list[int]:
    """This rank's share of ``owned``: ranks of one machine take disjoint, consecutive cores."""
    share = len(owned) // max(local_world, 1)
    return owned[local_rank * share:(local_rank + 1) * share]


def prepare() -> list[int]:
    """Before torch is imported: have libgomp bind one thread per core of this rank's share; returns
    those cores, or [] where nothing was bound (torch already loaded, the user's own binding in the
    environment, a share of one core, or not Linux)."""
    if "places" in _state:
        return _state["places"]
    owned = owned_cores()
    places = rank_cores(owned, int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if "torch" in sys.modules or any(os.environ.get(name) for name in USER_SETTINGS) or len(places) < 2:
        places = []
    if places:
        os.environ.update(OMP_PROC_BIND="close", OMP_PLACES=",".join(f"{{{core}}}" for core in places))
        try:
            import torch  # noqa: F401  (libgomp reads the binding now)
        finally:
            for name in ("OMP_PROC_BIND", "OMP_PLACES"):
                os.environ.pop(name, None)
        os.sched_setaffinity(0, owned)  # libgomp bound this thread to the first core; free it until `pinned`
    _state.update(owned=owned, places=places)
    return places


@contextlib.contextmanager
def pinned(threads: int):
    """The main thread on the first core of this rank's share while inside, when `prepare` bound
    libgomp and ``threads`` fills the share (libgomp's other threads took the other cores)."""
    places = _state.get("places") or []
    if threads != len(places):
        yield False
        return
    os.sched_setaffinity(0, places[:1])
    try:
        yield True
    finally:
        os.sched_setaffinity(0, _state["owned"])


def release(cores: list[int]) -> None:
    """In a process started from a pinned thread (a DataLoader worker): run on ``cores`` again."""
    if cores:
        os.sched_setaffinity(0, cores)
