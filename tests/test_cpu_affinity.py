"""Training threads bound one per core (`potholes.training.cpu_affinity`): inside the training
loop only, never inherited by a child process, and never where the user or torchrun decides."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

CORES = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CORES) < 2, reason="binding needs two cores or more")

PROBE = """
import glob, json, os, subprocess, sys
from potholes.training import cpu_affinity
places = cpu_affinity.prepare()
import torch
torch.set_num_threads(int(sys.argv[1]))

def threads():  # every thread of this process -> the cores it may run on
    out = {}
    for status in glob.glob("/proc/self/task/*/status"):
        line = [l for l in open(status) if l.startswith("Cpus_allowed_list")][0]
        out[status.split("/")[4]] = line.split(":")[1].strip()
    return out

def child():  # what a process started now may run on, and what binding it is told to use
    code = "import os, json; print(json.dumps([sorted(os.sched_getaffinity(0)), os.environ.get('OMP_PROC_BIND')]))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)

x = torch.randn(1500, 1500)
with cpu_affinity.pinned(torch.get_num_threads()) as bound:
    x @ x  # a parallel region: libgomp's threads exist now
    inside = {"main": sorted(os.sched_getaffinity(0)), "threads": threads(), "child": child()}
outside = {"main": sorted(os.sched_getaffinity(0)), "child": child(), "env": os.environ.get("OMP_PLACES")}
print(json.dumps({"pid": str(os.getpid()), "places": places, "bound": bound, "inside": inside, "outside": outside}))
"""


def probe(threads: int, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "LOCAL_RANK",
                                                                 "LOCAL_WORLD_SIZE", "GOMP_CPU_AFFINITY")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(threads)], capture_output=True, text=True, check=True,
                         env={**environ, "PYTHONPATH": str(REPO / "src"), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_two
def test_training_threads_take_one_core_each_and_nothing_else_is_bound():
    r = probe(len(CORES))
    assert r["places"] == CORES and r["bound"] is True
    assert r["inside"]["main"] == CORES[:1]
    # libgomp's own threads: one on each of the other cores (threads of other libraries stay free)
    full = f"{CORES[0]}-{CORES[-1]}"
    bound = sorted(v for tid, v in r["inside"]["threads"].items() if tid != r["pid"] and v != full)
    assert bound == sorted(str(core) for core in CORES[1:])
    # a process started inside the loop is told no binding; one started outside inherits none
    assert r["inside"]["child"][1] is None
    assert r["outside"] == {"main": CORES, "child": [CORES, None], "env": None}


def test_data_loader_workers_run_on_every_core_again():
    """A worker spawned from the bound training thread would otherwise share its one core."""
    import cv2

    from potholes.training import cpu_affinity, loader

    calls, cv_threads = [], cv2.getNumThreads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_affinity.os, "sched_setaffinity", lambda pid, cores: calls.append((pid, list(cores))))
        mp.setattr("torch.utils.data.get_worker_info", lambda: type("Worker", (), {"seed": 1})())
        loader._worker_init(0, cores=(0, 1))
    cv2.setNumThreads(cv_threads)
    assert calls == [(0, [0, 1])]


@needs_two
def test_fewer_threads_than_cores_leave_the_main_thread_free():
    r = probe(1)
    assert r["places"] == CORES and r["bound"] is False and r["inside"]["main"] == CORES


@needs_two
def test_the_users_own_binding_wins():
    r = probe(len(CORES), OMP_PROC_BIND="false")
    assert r["places"] == [] and r["bound"] is False and r["inside"]["main"] == CORES


def test_torchrun_ranks_take_disjoint_shares():
    from potholes.training.cpu_affinity import rank_cores

    assert rank_cores(list(range(8)), 0, 2) == [0, 1, 2, 3] and rank_cores(list(range(8)), 1, 2) == [4, 5, 6, 7]
    assert rank_cores([0, 1, 2], 1, 2) == [1]


@needs_two
def test_a_share_of_one_core_binds_nothing():
    r = probe(1, LOCAL_RANK="1", LOCAL_WORLD_SIZE=str(len(CORES)))
    assert r["places"] == [] and r["inside"]["main"] == CORES


GRADIENTS = """
import sys
from potholes.training import cpu_affinity
cpu_affinity.prepare()
import torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 1, 3, padding=1))
x = torch.randn(8, 3, 96, 96)
with cpu_affinity.pinned(torch.get_num_threads()) as bound:
    net(x).square().mean().backward()
grads = torch.cat([p.grad.flatten() for p in net.parameters()])
print(bound, grads.double().sum().item().hex(), grads.abs().max().item().hex())
"""


@needs_two
def test_bound_threads_compute_the_same_bits():
    """Binding moves threads, not work: the same seed keeps its metrics bound or not."""
    def run(**env):
        environ = {k: v for k, v in os.environ.items() if k != "OMP_PROC_BIND"}
        out = subprocess.run([sys.executable, "-c", GRADIENTS, str(len(CORES))], capture_output=True, text=True,
                             check=True, env={**environ, "PYTHONPATH": str(REPO / "src"), **env})
        return out.stdout.split()

    bound, unbound = run(), run(OMP_PROC_BIND="false")
    assert bound[0] == "True" and unbound[0] == "False" and bound[1:] == unbound[1:]
