"""`main`: prepare -> train unetpp -> train deeplab -> tune -> predict, as one parent run whose
stages are nested child runs (in-process, so no environment is rebuilt between stages)."""

from __future__ import annotations

import time

import mlflow

from potholes.stages.predict import PredictConfig, run_predict
from potholes.stages.prepare import SplitConfig, run_prepare
from potholes.stages.train import run_train
from potholes.stages.tune import run_tune
from potholes.tracking import runs as tracking
from potholes.training.config import resolve_config
from potholes.tuning.search import TuneConfig


def run_main(data_dir: str, preset: str = "auto", n_trials: int = 40, output: str = "submission.csv",
             registered_model: str = "pothole-ensemble", seed: int = 42, progress: bool = True,
             train_overrides: dict | None = None) -> dict:
    """``train_overrides``: config values applied to both trainings on top of the preset (for
    benchmarks, e.g. ``encoder_weights="none"`` where a preset's ImageNet weights cannot be had)."""
    # Resolve (and so validate) everything before the parent run exists.
    configs = {model: resolve_config(model, preset, seed=seed, **(train_overrides or {}))
               for model in ("unetpp", "deeplab")}
    tune_config = TuneConfig(n_trials=n_trials, registered_model=registered_model, seed=seed)
    tune_config.validate()
    split = SplitConfig(configs["unetpp"].val_fraction, configs["unetpp"].split_seed)

    seconds: dict[str, float] = {}
    results: dict = {}

    def timed(stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[f"{stage}_seconds"] = time.perf_counter() - start
        print(f"[main] {stage} done in {seconds[f'{stage}_seconds']:.0f}s", flush=True)
        return out

    with tracking.stage_run("main", run_name="main") as parent:
        tracking.log_params({"data_dir": data_dir, "preset": preset, "resolved_preset": configs["unetpp"].preset,
                           "n_trials": n_trials, "output": output, "seed": seed})
        results["prepare"] = timed("prepare", run_prepare, data_dir, split, progress=progress)
        for model, config in configs.items():
            results[model] = timed(f"train_{model}", run_train, config, data_dir, progress=progress)
        tune_config = TuneConfig(n_trials=n_trials, registered_model=registered_model, seed=seed,
                                 unetpp_run=results["unetpp"]["run_id"], deeplab_run=results["deeplab"]["run_id"])
        results["tune"] = timed("tune", run_tune, data_dir, tune_config, progress=progress)
        # This pipeline's own version, whatever alias it earned.
        uri = f"models:/{registered_model}/{results['tune']['version']}"
        results["predict"] = timed("predict", run_predict, data_dir, PredictConfig(model_uri=uri, output=output),
                                   progress=progress)
        metrics = {**seconds, "total_seconds": sum(seconds.values()),
                   "unetpp_val_dice": results["unetpp"]["best_val_dice"],
                   "deeplab_val_dice": results["deeplab"]["best_val_dice"],
                   "tuned_val_dice": results["tune"]["best_val_dice"]}
        # test Dice, by pothole size too, when the test images have masks
        metrics |= {k: v for k, v in results["predict"].items() if k.startswith(("test_dice", "test_images_"))}
        mlflow.log_metrics(metrics)
        tracking.log_json({"seconds": seconds, **{k: v for k, v in metrics.items() if not k.endswith("seconds")}},
                          "pipeline_summary.json")
        results["metrics"] = metrics
        results["run_id"] = parent.info.run_id
    print("[main] " + ", ".join(f"{k}={v:.4f}" if "dice" in k else f"{k}={v:.0f}" for k, v in metrics.items()))
    print(where_and_next(results, data_dir, registered_model), flush=True)
    return results


def where_and_next(results: dict, data_dir: str, registered_model: str) -> str:
    """Where the runs, the model and the submission are, and the commands a user runs next.
    The tracking URI is shown with any password masked."""
    from pathlib import Path

    from potholes.tracking.redaction import mask_url

    uri = mask_url(mlflow.get_tracking_uri())
    run = mlflow.get_run(results["run_id"])
    experiment = mlflow.get_experiment(run.info.experiment_id).name
    tune = results["tune"]
    # Serve what this pipeline made: the champion when it became one, else its own version.
    model = f"models:/{registered_model}@champion" if tune["alias"] == "champion" else \
        f"models:/{registered_model}/{tune['version']}"
    alias = f"@{tune['alias']}" if tune["alias"] else "no alias: tuned on other data than @champion"
    ui = (f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri} --port 5000"
          f"   # then http://127.0.0.1:5000")
    return "\n".join([
        f"runs:       {uri}, experiment '{experiment}', parent run {results['run_id']}",
        f"model:      models:/{registered_model}/{tune['version']} ({alias})",
        f"submission: {Path(results['predict']['output']).resolve()}",
        "next:",
        f"  {ui}",
        f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m {model} --env-manager local -p 5001",
        f"  MLFLOW_TRACKING_URI={uri} potholes predict --data-dir {data_dir} --model-uri {model}",
    ])
