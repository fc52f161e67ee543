"""Row 6: quality and wall time of the whole pipeline on every dataset, run exactly as a user runs
it (`mlflow run . --env-manager local -P data_dir=... -P seed=S`) into a fresh tracking store per
dataset and seed: time per stage, validation Dice per model, tuned validation Dice, Dice on the
test images and Dice by pothole size; last, one table: dataset -> test Dice (mean +- spread over
the seeds), tuned validation Dice, Dice by size bucket (test images in each), minutes.
Datasets: every folder of ../shared/data with a train/images folder (or --data-dirs).
Targets with the cpu preset (issue 23): potholes test Dice >= 0.765, potholes-closeup >= 0.789
(means of two seeds), each whole pipeline within 20 minutes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    DEFAULT_REAL_DATA,
    REPO,
    dataset,
    parser,
    pipeline_dice,
    report,
    stage_seconds,
)

from potholes.reporting.size_buckets import BUCKETS


def shared_datasets() -> list[str]:
    root = DEFAULT_REAL_DATA.parent
    return sorted(str(d) for d in root.iterdir() if (d / "train" / "images").is_dir()) if root.is_dir() else []


def threshold_order_dice(data: Path, version: int) -> dict:
    """Test Dice of the registered ensemble with both post-processing orders, from the same
    probabilities: resize probabilities then threshold (ours) vs threshold at model size then
    resize the mask (the seed's)."""
    import mlflow
    import numpy as np

    from potholes.data.dataset import file_number, list_images, read_image, read_mask
    from potholes.inference import postprocess as pp

    if not (data / "test" / "mask").is_dir():
        return {}
    predictor = mlflow.pyfunc.load_model(f"models:/pothole-ensemble/{version}").unwrap_python_model().predictor
    truth = {file_number(p): p for p in list_images(data / "test" / "mask")}
    paths = [p for p in list_images(data / "test" / "images") if file_number(p) in truth]
    scores = {True: [], False: []}
    for start in range(0, len(paths), 8):
        chunk = paths[start:start + 8]
        images = [read_image(p) for p in chunk]
        for path, image, prob in zip(chunk, images, predictor.probabilities(images)):
            gt = read_mask(truth[file_number(path)])
            for resize_first in scores:
                mask = pp.probability_to_mask(prob, predictor.config.threshold, predictor.config.min_area,
                                              image.shape[:2], resize_first)
                scores[resize_first].append(pp.dice_score(mask, gt))
    return {"test_dice_resize_probs": float(np.mean(scores[True])),
            "test_dice_seed_order": float(np.mean(scores[False]))}


def run_pipeline(data: Path, store: Path, preset: str, n_trials: int, seed: int, reuse: bool = False) -> dict:
    """`mlflow run .` (the main entry point) into the tracking store in ``store``; its parent
    run's metrics, the wall time and the registered version."""
    import mlflow

    store.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
               "--experiment-name", "potholes", "-P", f"data_dir={Path(data).resolve()}",
               "-P", f"preset={preset}", "-P", f"n_trials={n_trials}", "-P", f"seed={seed}",
               "-P", f"output={store / 'submission.csv'}"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    if not reuse:
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=store, check=True)
        wall = time.perf_counter() - start
    parent = mlflow.search_runs(experiment_names=["potholes"], filter_string="tags.`potholes.stage` = 'main'",
                                output_format="list")[0]
    if reuse:  # the launcher's run spans the whole `mlflow run` process
        wall = (parent.info.end_time - parent.info.start_time) / 1000
    version = max(int(v.version) for v in mlflow.search_model_versions(filter_string="name = 'pothole-ensemble'"))
    return {"metrics": parent.data.metrics, "wall_seconds": wall, "version": version, "command": " ".join(command)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--n-trials", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one whole pipeline per seed")
    p.add_argument("--keep", default=None, help="folder to keep the tracking stores in (default: a temp folder)")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: report the finished pipelines already in those stores instead of running them")
    p.add_argument("--data-dirs", nargs="+", default=None,
                   help="datasets to run (default: every dataset under ../shared/data, else --data-dir)")
    args = p.parse_args()
    if args.quick:
        args.preset, args.n_trials, args.seeds = "smoke", 3, [1]
    import mlflow

    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        for data_dir in ([args.data_dir] if args.quick else args.data_dirs or shared_datasets() or [args.data_dir]):
            args.data_dir = data_dir
            data = dataset(args, Path(tmp_name), n_train=24, n_test=6, size=96)
            name = Path(data).name if Path(data) == Path(data_dir) else "synthetic"
            for seed in args.seeds:
                store = Path(args.keep or tmp_name).resolve() / name / f"seed{seed}"
                out = run_pipeline(data, store, args.preset, args.n_trials, seed, args.reuse)
                m = out["metrics"]
                rows.append({"row": "6 quality", "dataset": name, "seed": seed, "preset": args.preset,
                             **stage_seconds(m), "wall_seconds": out["wall_seconds"],
                             **pipeline_dice(m), **threshold_order_dice(Path(data), out["version"])})
                mlflow.set_tracking_uri("")
            summary[name] = summarize([r for r in rows if r["dataset"] == name]) | {"command": out["command"]}
    report("quality", rows, {"datasets": summary, "target": "see the docstring"}, args)
    print_table(summary)


def mean_spread(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    return (statistics.mean(values), max(values) - min(values)) if values else (None, None)


def summarize(ran: list[dict]) -> dict:
    """One dataset's runs (one per seed): the means over the seeds and their spreads."""
    out = {"seeds": [r["seed"] for r in ran], "minutes_max": max(r["wall_seconds"] for r in ran) / 60}
    for key in ("test_dice", "tuned_val_dice", *(f"test_dice_{b}" for b in BUCKETS)):
        out[f"{key}_mean"], out[f"{key}_spread"] = mean_spread([r.get(key) for r in ran])
    for bucket in BUCKETS:
        out[f"test_images_{bucket}"] = ran[0].get(f"test_images_{bucket}")
    return out


def print_table(summary: dict) -> None:
    """dataset -> test Dice (mean +- spread over the seeds), Dice by size bucket (images), minutes."""
    def cell(mean, spread) -> str:
        return "-" if mean is None else f"{mean:.3f} ± {spread:.3f}"

    head = ["dataset", "seeds", "test Dice", "tuned val Dice", *(f"{b} (n)" for b in BUCKETS), "minutes (max)"]
    lines = [head]
    for name, s in summary.items():
        buckets = [f"{cell(s[f'test_dice_{b}_mean'], s[f'test_dice_{b}_spread'])} ({s[f'test_images_{b}'] or 0:.0f})"
                   if s[f"test_images_{b}"] else "-" for b in BUCKETS]
        lines.append([name, " ".join(map(str, s["seeds"])), cell(s["test_dice_mean"], s["test_dice_spread"]),
                      cell(s["tuned_val_dice_mean"], s["tuned_val_dice_spread"]), *buckets, f"{s['minutes_max']:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print()
    for line in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
