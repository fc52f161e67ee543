"""Resume points of train runs: what an interrupted run left on the store, and whether it may
be continued (same model, size and length; its process gone; rounds left to train)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from potholes import tracking
from potholes.config import TrainConfig

MODEL_TAG = "potholes.logged_model_id"
MUST_MATCH = ("model", "encoder", "freeze_stride", "img_size", "crop_size", "steps", "epochs", "rounds", "warmup", "ema",
              "loss", "precision", "seed", "batch_size", "world_size")


@dataclass
class ResumePoint:
    payload: dict  # model, optimizer, scheduler, weight average, round, best so far, history
    best_state: dict | None  # the best weights, for the end-of-run overlays
    logged_steps: set[int]  # steps whose metrics are on the run already


def check(config: TrainConfig, run_id: str) -> None:
    """Refuse, naming the reason, what cannot be continued exactly."""
    try:
        run = MlflowClient().get_run(run_id)
    except Exception as exc:
        raise ValueError(f"resume: run '{run_id}' does not exist in {mlflow.get_tracking_uri()}") from exc
    if run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        raise ValueError(f"resume: run '{run_id}' is still running (process {run.data.tags.get('potholes.pid')} "
                         f"on {run.data.tags.get('potholes.host')}); stop it before resuming")
    if run.info.status == "FINISHED":
        raise ValueError(f"resume: run '{run_id}' finished all its rounds; nothing to resume")
    if MODEL_TAG not in run.data.tags:
        raise ValueError(f"resume: run '{run_id}' is not a train run of this version (no {MODEL_TAG} tag)")
    params = run.data.params
    for key in MUST_MATCH:
        logged = params.get(f"config.{key}")
        if logged is not None and logged != str(getattr(config, key)):
            how = "as many processes (--nproc / torchrun --nproc_per_node)" if key == "world_size" else \
                f"the same {key} (or preset)"
            raise ValueError(f"resume: run '{run_id}' was trained with {key}={logged}, "
                             f"not {getattr(config, key)}; pass {how} to resume it")


def load(config: TrainConfig, run_id: str) -> ResumePoint:
    from safetensors.torch import load_file

    check(config, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last/last.pt", dst_path=tmp)
        except Exception as exc:
            raise ValueError(f"resume: run '{run_id}' has no checkpoints/last/last.pt to resume from ({exc})") from exc
        payload = torch.load(path, map_location="cpu", weights_only=True)
        try:
            best = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best", dst_path=tmp)
            best_state = load_file(Path(best) / "model.safetensors")
        except Exception:
            best_state = None
    steps = {m.step for m in MlflowClient().get_metric_history(run_id, "val_dice")}
    return ResumePoint(payload, best_state, steps)
