"""Row 13: a training step on a busy machine. One `cpu`-preset UNet++ step (batch 8, 256 px, the
precision `auto` picks here, encoder frozen to stride 8) timed quiet, beside one busy
single-threaded process, and quiet again, for each thread setting: the default (one thread per
core, each bound to its core as `potholes train` binds them: `potholes.training.cpu_affinity`),
the same threads unbound (``OMP_PROC_BIND=false``, the default before), OpenMP spin counts
(``GOMP_SPINCOUNT``: spin that many times at a barrier, then sleep; unbound), ``OMP_WAIT_POLICY=PASSIVE``
(sleep at once) and one thread fewer than cores (``--threads``). Each setting runs in a fresh
process (libgomp reads its settings once, at start) that times all three phases, so quiet and busy
are compared inside one process; the quiet figure is the mean of the phases before and after. The
busy neighbour is a Python loop that spins for the whole busy phase, free to run on any core.

Then `predict`'s part, per runtime (OpenVINO, ONNX Runtime, torch): both members of a randomly
initialised ensemble (speed does not depend on the weights) with flip TTA, blend and threshold, on
16 test photos, seconds a photo quiet, busy and quiet again, each runtime in a fresh process.

``--quick`` (what CI runs): the default and unbound settings for two 64-px steps, then OpenVINO on 4 photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import dataset, parser, report

STEP = """
import json, os, subprocess, sys, time
from potholes.training import cpu_affinity
cpu_affinity.prepare()  # as `potholes train` does, before torch loads
import torch
sys.path.insert(0, {bench!r})
from common import seconds_per_train_step
from potholes.training.config import resolve_config
config = resolve_config("unetpp", "cpu", threads={threads}, img_size={size})
torch.set_num_threads(config.threads)
owned = cpu_affinity.owned_cores()
with cpu_affinity.pinned(config.threads) as bound:  # as run_train's loop
    before = seconds_per_train_step(config, {steps}, config.precision)
    neighbour = subprocess.Popen([sys.executable, "-c", {spin!r}], preexec_fn=lambda: os.sched_setaffinity(0, owned))
    try:
        time.sleep(0.5)
        busy = seconds_per_train_step(config, {steps}, config.precision)
    finally:
        neighbour.kill()
        neighbour.wait()
    after = seconds_per_train_step(config, {steps}, config.precision)
print(json.dumps({{"before": before, "busy": busy, "after": after, "precision": config.precision,
                   "threads": torch.get_num_threads(), "bound": bound}}))
"""
# predict's networks the way `predict` runs them (both members, flip TTA, blend, threshold), on the
# test photos, per runtime; ORT and OpenVINO keep their own thread pools, not libgomp's binding.
PREDICT = """
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from common import untrained_checkpoints
from potholes.data.dataset import find_dataset, read_image
from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
from potholes.inference.export import export_members
from potholes.inference.onnx_runtime import OnnxMembers
from potholes.inference.runtime import cpu_cores
tmp = Path(tempfile.mkdtemp())
predictor = EnsemblePredictor.from_checkpoints(untrained_checkpoints(tmp / "ckpt", {size}),
                                               EnsembleConfig(img_size={size}), batch_size=4)
predictor.onnx = OnnxMembers(export_members(predictor, tmp / "onnx"))
images = [read_image(p) for p in sorted(find_dataset({data!r}).test_images.iterdir())[:{count}]]

def per_image():
    start = time.perf_counter()
    predictor.predict_masks(images, runtime={runtime!r})
    return (time.perf_counter() - start) / len(images)

per_image()  # compiles, creates the pools
before = per_image()
neighbour = subprocess.Popen([sys.executable, "-c", {spin!r}])
try:
    time.sleep(0.5)
    busy = per_image()
finally:
    neighbour.kill()
    neighbour.wait()
after = per_image()
print(json.dumps({{"before": before, "busy": busy, "after": after, "threads": cpu_cores()}}))
"""
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def phases(code: str, omp_env: dict) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **omp_env}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND"):  # each setting states its own, nothing inherited
        if name not in omp_env:
            env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(setting: str, t: dict, quiet_default: float | None) -> dict:
    quiet = (t["before"] + t["after"]) / 2
    quiet_default = quiet_default or quiet
    return {"setting": setting, "threads": t["threads"], "bound": t.get("bound", False),
            "precision": t.get("precision", ""), "quiet_s": quiet, "quiet_drift": t["after"] / t["before"],
            "busy_s": t["busy"], "busy_vs_quiet": t["busy"] / quiet, "busy_vs_quiet_default": t["busy"] / quiet_default,
            "quiet_vs_quiet_default": quiet / quiet_default}


def settings(cores: int, quick: bool, spin_counts: list[str]) -> list[tuple[str, int, dict]]:
    unbound = {"OMP_PROC_BIND": "false"}
    spins = [] if quick else [("GOMP_SPINCOUNT=" + n, cores, {**unbound, "GOMP_SPINCOUNT": n}) for n in spin_counts]
    return [("default", cores, {}), ("OMP_PROC_BIND=false", cores, unbound), *spins,
            *([] if quick else [("OMP_WAIT_POLICY=PASSIVE", cores, {**unbound, "OMP_WAIT_POLICY": "PASSIVE"}),
                                (f"--threads {max(1, cores - 1)}", max(1, cores - 1), {})])]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--spin-counts", default="3000",
                   help="comma-separated GOMP_SPINCOUNT values to try (libgomp's default is 300000)")
    p.add_argument("--runtimes", default="openvino,onnx,torch", help="predict runtimes to time ('': none)")
    p.add_argument("--settings", default="all", help="training settings to time: all, or none")
    args = p.parse_args()
    steps, size = (2, 64) if args.quick else (args.steps, 256)
    cores = len(os.sched_getaffinity(0))
    bench = os.path.dirname(os.path.abspath(__file__))
    rows, quiet_default = [], None
    for name, threads, omp_env in settings(cores, args.quick, args.spin_counts.split(",")) * (args.settings != "none"):
        code = STEP.format(bench=bench, threads=threads, steps=steps, size=size, spin=SPIN)
        rows.append(row(name, phases(code, omp_env), quiet_default))
        quiet_default = rows[0]["quiet_s"]
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args, Path(tmp), n_train=4, n_test=4, size=192)
        # --quick: one runtime, enough to keep the predict timing from rotting
        for runtime in [r for r in args.runtimes.split(",") if r][:1 if args.quick else None]:
            code = PREDICT.format(bench=bench, size=size, data=str(data), count=4 if args.quick else 16,
                                  runtime=runtime, spin=SPIN)
            rows.append(row(f"predict runtime={runtime}", phases(code, {}), None))
    report("contention", rows, {"cores": cores, "img_size": size, "steps": steps,
                                "s": "seconds a training step, or a predicted photo"}, args)


if __name__ == "__main__":
    main()
