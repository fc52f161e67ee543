"""Row 13: a training step on a busy machine. One `cpu`-preset UNet++ step (batch 8, 256 px, the
precision `auto` picks here, encoder frozen to stride 8) timed quiet, beside one busy
single-threaded process, and quiet again, for each thread setting: the default (one thread per
core, OpenMP's default wait policy), OpenMP spin counts (``GOMP_SPINCOUNT``: spin that many
times at a barrier, then sleep), ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) and one thread fewer
than cores (``--threads``). Each setting runs in a fresh process (the wait policy is read once, at
start) that times all three phases, so quiet and busy are compared inside one process; the quiet
figure is the mean of the phases before and after. The busy neighbour is a Python loop that spins
for the whole busy phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from common import parser, report

STEP = """
import json, subprocess, sys, time, torch
sys.path.insert(0, {bench!r})
from common import seconds_per_train_step
from potholes.training.config import resolve_config
config = resolve_config("unetpp", "cpu", threads={threads}, img_size={size})
torch.set_num_threads(config.threads)
before = seconds_per_train_step(config, {steps}, config.precision)
neighbour = subprocess.Popen([sys.executable, "-c", {spin!r}])
try:
    time.sleep(0.5)
    busy = seconds_per_train_step(config, {steps}, config.precision)
finally:
    neighbour.kill()
    neighbour.wait()
after = seconds_per_train_step(config, {steps}, config.precision)
print(json.dumps({{"before": before, "busy": busy, "after": after, "precision": config.precision,
                   "threads": torch.get_num_threads()}}))
"""
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def phases(threads: int, omp_env: dict, steps: int, size: int) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **omp_env}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # each setting states its own, nothing inherited
        if name not in omp_env:
            env.pop(name, None)
    code = STEP.format(bench=os.path.dirname(os.path.abspath(__file__)), threads=threads, steps=steps, size=size,
                       spin=SPIN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def settings(cores: int, quick: bool, spin_counts: list[str]) -> list[tuple[str, int, dict]]:
    spins = [] if quick else [("GOMP_SPINCOUNT=" + n, cores, {"GOMP_SPINCOUNT": n}) for n in spin_counts]
    return [("default", cores, {}), *spins, ("OMP_WAIT_POLICY=PASSIVE", cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
            *([] if quick else [(f"--threads {max(1, cores - 1)}", max(1, cores - 1), {})])]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--spin-counts", default="100000,30000,10000,3000,1000",
                   help="comma-separated GOMP_SPINCOUNT values to try (libgomp's default is 300000)")
    args = p.parse_args()
    steps, size = (2, 64) if args.quick else (args.steps, 256)
    cores = len(os.sched_getaffinity(0))
    rows, quiet_default = [], None
    for name, threads, omp_env in settings(cores, args.quick, args.spin_counts.split(",")):
        t = phases(threads, omp_env, steps, size)
        quiet = (t["before"] + t["after"]) / 2
        quiet_default = quiet_default or quiet
        rows.append({"setting": name, "threads": t["threads"], "precision": t["precision"],
                     "quiet_s_per_step": quiet, "quiet_drift": t["after"] / t["before"], "busy_s_per_step": t["busy"],
                     "busy_vs_quiet": t["busy"] / quiet, "busy_vs_quiet_default": t["busy"] / quiet_default,
                     "quiet_vs_quiet_default": quiet / quiet_default})
    report("contention", rows, {"cores": cores, "img_size": size, "steps": steps}, args)


if __name__ == "__main__":
    main()
