"""MLflow at the edges: store location, experiment, stage runs and the manifest dataset.

Stage code calls `stage_run(...)`; it starts a top-level run, joins the run that `mlflow run`
created (``MLFLOW_RUN_ID``), or nests under the pipeline's parent run, so one stage function
serves the CLI, `mlflow run` and the `main` pipeline alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "potholes"
DATASET_NAME = "potholes-manifest"
# Files digest + split of a logged manifest (`potholes.tracking.prepared`): later stages find it by this.
PREPARED_TAG = "potholes.prepared_key"
# MLflow 3's UI opens an experiment in GenAI mode unless this tag says otherwise.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def configure(experiment_name: str | None = None, project_root: str | Path = ".") -> str:
    """Honour MLFLOW_TRACKING_URI; otherwise ``sqlite:///mlflow.db`` with artifacts in ``./mlruns``
    of the project root. Tags the experiment for the model-training UI view and marks runs whose
    process died (``kill -9``, power loss) as KILLED. Returns the tracking URI in use."""
    root = Path(project_root).resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    if os.environ.get("MLFLOW_EXPERIMENT_ID") and not experiment_name:
        experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]  # `mlflow run` chose the experiment already
    else:
        name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        if mlflow.get_experiment_by_name(name) is None:
            location = None
            if mlflow.get_tracking_uri().startswith("sqlite:"):
                location = (root / "mlruns").as_uri()
            try:
                mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            except MlflowException as exc:
                # A twin process (a second tune worker, a parallel train) created it since we looked.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS" or mlflow.get_experiment_by_name(name) is None:
                    raise
        experiment_id = mlflow.set_experiment(name).experiment_id
    client = MlflowClient()
    for key, value in EXPERIMENT_KIND.items():
        if client.get_experiment(experiment_id).tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    mark_dead_runs()
    return mlflow.get_tracking_uri()


def process_tags() -> dict[str, str]:
    """Who runs this run: enough to tell later, on this host, whether that process still lives."""
    import psutil

    me = psutil.Process()
    return {"potholes.host": socket.gethostname(), "potholes.pid": str(me.pid),
            "potholes.pid_started": f"{me.create_time():.2f}"}


def process_alive(tags: dict[str, str]) -> bool:
    """False only when the run's process is known to be gone: same host, and no process with
    that pid and start time (a reused pid has another start time). Other hosts: assume alive."""
    import psutil

    if tags.get("potholes.host") != socket.gethostname() or "potholes.pid" not in tags:
        return True
    try:
        started = psutil.Process(int(tags["potholes.pid"])).create_time()
    except (psutil.NoSuchProcess, ValueError):
        return False
    return f"{started:.2f}" == tags.get("potholes.pid_started")


def mark_dead_runs() -> list[str]:
    """Runs of this host that still say RUNNING though their process is gone become KILLED, so a
    ``kill -9`` does not leave a run RUNNING forever. Returns their ids."""
    client = MlflowClient()
    host = socket.gethostname().replace("'", "")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"attributes.status = 'RUNNING' AND tags.`potholes.host` = '{host}'")
    dead = [run for run in runs if not process_alive(run.data.tags)]
    for run in dead:
        client.set_tag(run.info.run_id, "potholes.marked_killed",
                       f"process {run.data.tags['potholes.pid']} was gone at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        client.set_terminated(run.info.run_id, "KILLED")
        print(f"note: run {run.info.run_id} ({run.info.run_name}) was left RUNNING by a process that died; "
              f"marked KILLED", flush=True)
    return [run.info.run_id for run in dead]


@contextlib.contextmanager
def stage_run(stage: str, run_name: str | None = None, tags: dict | None = None, run_id: str | None = None,
              log_system_metrics: bool | None = None):
    """Start (or join, nest, or with ``run_id`` reopen) the MLflow run of one pipeline stage.

    A KeyboardInterrupt ends the run as KILLED, any other exception as FAILED, so an
    interrupted training shows its true state in the UI and keeps its logged artifacts.
    """
    tags = {"potholes.stage": stage, **process_tags(), **(tags or {})}
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
    """Log what a stage used as ``config.<key>`` params, one naming scheme for every stage.

    `mlflow run` logs the MLproject parameters under their bare names (as given, e.g.
    ``epochs=preset``); ``config.*`` is what the stage resolved them to, so the two never clash.
    """
    mlflow.log_params({f"config.{key}": value for key, value in params.items()})


def log_metrics(metrics: dict, step: int | None = None, model_id: str | None = None, dataset=None) -> None:
    """Metrics of the active run, linked to a LoggedModel and the dataset they were measured on
    (the model's page then lists them with that dataset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column hint, once per call
        mlflow.log_metrics(metrics, step=step, model_id=model_id, dataset=dataset)


def log_json(payload: dict, artifact_file: str) -> None:
    mlflow.log_dict(payload, artifact_file)


def log_figure(fig, artifact_file: str) -> None:
    from potholes.reporting.plots import close

    mlflow.log_figure(fig, artifact_file)
    close(fig)


def pandas_dataset(frame: pd.DataFrame, source: str | Path, name: str):
    with warnings.catch_warnings():
        # MLflow hints about ambiguous local sources and integer columns; neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(frame, source=str(source), name=name)


def manifest_dataset(manifest: pd.DataFrame, source: str | Path):
    """The manifest as an MLflow dataset; its digest identifies files, sizes, masks and split."""
    return pandas_dataset(manifest, source, DATASET_NAME)


def log_input(dataset, context: str, model_id: str | None = None) -> None:
    """A dataset input of the active run, with the LoggedModel it was used with (when known)."""
    from mlflow.entities import LoggedModelInput

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns
        mlflow.log_input(dataset, context=context, model=LoggedModelInput(model_id) if model_id else None)


def log_manifest(manifest: pd.DataFrame, source: str | Path, context: str, key: str | None = None):
    """Log the manifest CSV artifact and dataset input (tagged with its files-and-split ``key``,
    so later stages can use it); return the MLflow dataset (its ``digest`` names the data)."""
    dataset = manifest_dataset(manifest, source)
    log_input(dataset, context)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.csv"
        manifest.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    mlflow.set_tag("potholes.dataset_digest", dataset.digest)
    if key:
        mlflow.set_tag(PREPARED_TAG, key)
    return dataset


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
