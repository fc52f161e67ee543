"""MLflow at the edges: store location, experiment, stage runs and the manifest dataset.

Stage code calls `stage_run(...)`; it starts a top-level run, joins the run that `mlflow run`
created (``MLFLOW_RUN_ID``), or nests under the pipeline's parent run, so one stage function
serves the CLI, `mlflow run` and the `main` pipeline alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "potholes"
DATASET_NAME = "potholes-manifest"


def configure(experiment_name: str | None = None, project_root: str | Path = ".") -> str:
    """Honour MLFLOW_TRACKING_URI; otherwise ``sqlite:///mlflow.db`` with artifacts in ``./mlruns``
    of the project root. Returns the tracking URI in use."""
    root = Path(project_root).resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    if os.environ.get("MLFLOW_EXPERIMENT_ID") and not experiment_name:
        return mlflow.get_tracking_uri()  # `mlflow run` chose the experiment already
    name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            location = (root / "mlruns").as_uri()
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def stage_run(stage: str, run_name: str | None = None, tags: dict | None = None, run_id: str | None = None,
              log_system_metrics: bool | None = None):
    """Start (or join, nest, or with ``run_id`` reopen) the MLflow run of one pipeline stage.

    A KeyboardInterrupt ends the run as KILLED, any other exception as FAILED, so an
    interrupted training shows its true state in the UI and keeps its logged artifacts.
    """
    tags = {"potholes.stage": stage, **(tags or {})}
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested, tags=tags,
                           log_system_metrics=log_system_metrics)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def log_params(params: dict) -> None:
    """Log params, leaving alone any key the run already has (`mlflow run` logs the MLproject
    parameters itself, with empty strings for unset ones); a differing value is kept beside it
    as ``resolved.<key>``."""
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    fresh = {}
    for key, value in params.items():
        if key not in existing:
            fresh[key] = value
        elif existing[key] != str(value):
            fresh[f"resolved.{key}"] = value
    if fresh:
        mlflow.log_params(fresh)


def log_json(payload: dict, artifact_file: str) -> None:
    mlflow.log_dict(payload, artifact_file)


def log_figure(fig, artifact_file: str) -> None:
    from potholes.plots import close

    mlflow.log_figure(fig, artifact_file)
    close(fig)


def manifest_dataset(manifest: pd.DataFrame, source: str | Path):
    """The manifest as an MLflow dataset; its digest identifies files, sizes, masks and split."""
    with warnings.catch_warnings():
        # MLflow hints about ambiguous local sources and integer columns; neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(manifest, source=str(source), name=DATASET_NAME)


def log_manifest(manifest: pd.DataFrame, source: str | Path, context: str) -> str:
    """Log the manifest CSV artifact and dataset input; return the dataset digest."""
    dataset = manifest_dataset(manifest, source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns
        mlflow.log_input(dataset, context=context)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.csv"
        manifest.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    mlflow.set_tag("potholes.dataset_digest", dataset.digest)
    return dataset.digest


def run_dataset_digest(run_id: str) -> str | None:
    """Digest of the manifest dataset a run logged (None when it logged none)."""
    run = MlflowClient().get_run(run_id)
    for dataset_input in run.inputs.dataset_inputs:
        if dataset_input.dataset.name == DATASET_NAME:
            return dataset_input.dataset.digest
    return None


def download_json(run_id: str, artifact_path: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        return json.loads(Path(local).read_text())
