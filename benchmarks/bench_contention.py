"""Row 13: a training step on a busy machine. One `cpu`-preset UNet++ step (batch 8, 256 px, the
precision `auto` picks here, encoder frozen to stride 8) timed quiet and beside one busy
single-threaded process, for each thread setting: the default (one thread per core) with
OpenMP's default wait policy, with ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once at a barrier) and
with ``GOMP_SPINCOUNT=10000`` (spin briefly, then sleep), and one thread fewer than cores
(``--threads``). Each setting runs in a fresh process (the wait policy is read once, at
start); the busy neighbour is a Python loop that spins for the whole timed window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import parser, report

STEP = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from common import seconds_per_train_step
from potholes.training.config import resolve_config
config = resolve_config("unetpp", "cpu", threads={threads}, img_size={size})
torch.set_num_threads(config.threads)
print(json.dumps({{"s": seconds_per_train_step(config, {steps}, config.precision), "precision": config.precision,
                   "threads": torch.get_num_threads()}}))
"""
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def step_seconds(threads: int, omp_env: dict, busy: bool, steps: int, size: int) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **omp_env}
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        code = STEP.format(bench=os.path.dirname(os.path.abspath(__file__)), threads=threads, steps=steps, size=size)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    steps, size = (2, 64) if args.quick else (args.steps, 256)
    cores = len(os.sched_getaffinity(0))
    settings = [("default", cores, {}), ("OMP_WAIT_POLICY=PASSIVE", cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
                ("GOMP_SPINCOUNT=10000", cores, {"GOMP_SPINCOUNT": "10000"}),
                (f"--threads {max(1, cores - 1)}", max(1, cores - 1), {})]
    rows, quiet_default = [], None
    for name, threads, omp_env in settings:
        quiet = step_seconds(threads, omp_env, False, steps, size)
        busy = step_seconds(threads, omp_env, True, steps, size)
        quiet_default = quiet_default or quiet["s"]
        rows.append({"setting": name, "threads": quiet["threads"], "precision": quiet["precision"],
                     "quiet_s_per_step": quiet["s"], "busy_s_per_step": busy["s"],
                     "busy_vs_quiet": busy["s"] / quiet["s"], "busy_vs_quiet_default": busy["s"] / quiet_default,
                     "quiet_vs_quiet_default": quiet["s"] / quiet_default})
    report("contention", rows, {"cores": cores, "img_size": size, "steps": steps}, args)


if __name__ == "__main__":
    main()
