"""Resume points of train runs: what an interrupted run left on the store, and whether it may
be continued (same model, size and length; its process gone; rounds left to train)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from potholes.errors import ConfigError
from potholes.tracking import runs as tracking
from potholes.tracking.redaction import mask_url
from potholes.training.config import TrainConfig

MODEL_TAG = "potholes.logged_model_id"
# What a resumed run must share with the interrupted one to end as the uninterrupted run would:
# the model and its input, the budget and schedule, the optimiser, the loss, the seed and the
# split (the data itself is compared by the manifest's dataset digest).
MUST_MATCH = ("model", "encoder", "encoder_weights", "freeze_stride", "img_size", "keep_aspect", "crop_size", "mean", "std",
              "steps", "epochs", "rounds", "warmup", "ema", "batch_size", "world_size", "lr", "weight_decay",
              "loss", "focal_weight", "focal_gamma", "val_threshold", "precision", "seed", "val_fraction", "split_seed",
              "threads")


@dataclass
class ResumePoint:
    payload: dict  # model, optimizer, scheduler, weight average, round, best so far, history
    best_state: dict | None  # the best weights, for the end-of-run overlays
    logged_steps: set[int]  # steps whose metrics are on the run already


def check(config: TrainConfig, run_id: str, digest: str | None = None) -> None:
    """Refuse what cannot be continued exactly, naming the reason, or every setting that differs."""
    try:
        run = MlflowClient().get_run(run_id)
    except Exception as exc:
        raise ConfigError(f"resume: run '{run_id}' does not exist in {mask_url(mlflow.get_tracking_uri())}") from exc
    if run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        raise ConfigError(f"resume: run '{run_id}' is still running (process {run.data.tags.get('potholes.pid')} "
                          f"on {run.data.tags.get('potholes.host')}); stop it before resuming")
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume: run '{run_id}' finished all its rounds; nothing to resume")
    if MODEL_TAG not in run.data.tags:
        raise ConfigError(f"resume: run '{run_id}' is not a train run of this version (no {MODEL_TAG} tag)")
    params, now = run.data.params, config.as_params()
    differences = [f"{key}: the run has {params[f'config.{key}']}, this command {now[key]}" for key in MUST_MATCH
                   if f"config.{key}" in params and params[f"config.{key}"] != str(now[key])]
    trained_on = tracking.run_dataset_digest(run_id) if digest else None
    if trained_on and trained_on != digest:
        differences.append(f"dataset digest: the run trained on {trained_on}, this data and split give {digest} "
                           f"(other files, masks or split)")
    if differences:
        hint = "as many processes (--nproc / torchrun --nproc_per_node), " if any(
            d.startswith("world_size") for d in differences) else ""
        raise ConfigError(f"resume: run '{run_id}' cannot be continued exactly; {len(differences)} difference(s):\n  "
                          + "\n  ".join(differences)
                          + f"\npass {hint}the run's values (or its preset) and the same data to resume it")


def load(config: TrainConfig, run_id: str, digest: str | None = None) -> ResumePoint:
    from safetensors.torch import load_file

    check(config, run_id, digest)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last/last.pt", dst_path=tmp)
        except Exception as exc:
            raise ConfigError(f"resume: run '{run_id}' has no checkpoints/last/last.pt to resume from ({exc})") from exc
        payload = torch.load(path, map_location="cpu", weights_only=True)
        try:
            best = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best", dst_path=tmp)
            best_state = load_file(Path(best) / "model.safetensors")
        except Exception:
            best_state = None
    steps = {m.step for m in MlflowClient().get_metric_history(run_id, "val_dice")}
    return ResumePoint(payload, best_state, steps)
