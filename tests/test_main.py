"""`mlflow run .` (the main entry point) end to end, as a user runs it."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import REPO, cli_env
from mlflow.tracking import MlflowClient


@pytest.mark.slow
def test_main_pipeline_with_smoke_preset(tmp_path, synth_data):
    env = cli_env(tmp_path)
    output = tmp_path / "submission.csv"
    before = (REPO / "optuna.db").stat().st_mtime if (REPO / "optuna.db").exists() else None  # a user's own
    out = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
                          "--experiment-name", "potholes", "-P", f"data_dir={synth_data}", "-P", "preset=smoke",
                          "-P", "n_trials=3", "-P", f"output={output}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["potholes"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("potholes.stage") == "main")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = sorted(r.data.tags["potholes.stage"] for r in children)
    assert stages == ["predict", "prepare", "train", "train", "tune"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    for key in ("prepare_seconds", "train_unetpp_seconds", "train_deeplab_seconds", "tune_seconds",
                "predict_seconds", "tuned_val_dice", "test_dice"):
        assert key in parent.data.metrics, key
    written = pd.read_csv(output, keep_default_na=False)
    assert written["ImageId"].tolist() == pd.read_csv(synth_data / "sample_submission.csv")["ImageId"].tolist()
    assert MlflowClient().get_model_version_by_alias("pothole-ensemble", "champion")
    # the study lives beside the tracking store, not in the checkout
    assert ((REPO / "optuna.db").stat().st_mtime if (REPO / "optuna.db").exists() else None) == before
    assert (tmp_path / "optuna.db").exists()
    check_runs_read_well_in_the_ui(runs, parent)
    # the end says where everything is and what to run next
    assert f"dataset root: {synth_data}" in out.stdout
    for text in ("runs:", "model:      models:/pothole-ensemble/1 (@champion)", "next:",
                 "mlflow ui --backend-store-uri", "mlflow models serve -m models:/pothole-ensemble@champion",
                 "potholes predict --data-dir"):
        assert text in out.stdout, text


def check_runs_read_well_in_the_ui(runs, parent) -> None:
    client = MlflowClient()
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI mode
    for run in runs:  # unset MLproject overrides are words that say what happens, never empty
        assert all(value != "" for value in run.data.params.values()), (run.data.tags["potholes.stage"], run.data.params)
        # MLproject parameters of main, which `mlflow run` logs bare
        ours = [k for k in run.data.params if k not in {"data_dir", "preset", "n_trials", "output", "seed", "registered_model"}]
        assert all(k.startswith("config.") for k in ours), ours  # one naming scheme
    trains = [r for r in runs if r.data.tags.get("potholes.stage") == "train"]
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    by_id = {m.model_id: m for m in models}
    for train in trains:  # each train run's best model is a LoggedModel with its Dice linked
        model = by_id[train.data.tags["potholes.logged_model_id"]]
        assert str(model.status).endswith("READY") and model.source_run_id == train.info.run_id
        assert {m.key for m in model.metrics} >= {"val_dice", "best_val_dice"}
        assert "MLmodel" in {f.path for f in client.list_logged_model_artifacts(model.model_id)}  # a model
    tune = next(r for r in runs if r.data.tags.get("potholes.stage") == "tune")
    inputs = {i.model_id for i in client.get_run(tune.info.run_id).inputs.model_inputs}
    assert inputs == {t.data.tags["potholes.logged_model_id"] for t in trains}
    assert tune.data.tags["registered_version"] == "1" and tune.data.tags["became_champion"] == "true"
    assert "alias" not in tune.data.tags  # it went stale once the alias moved
    registered = client.get_registered_model("pothole-ensemble")
    assert "Pothole segmentation" in registered.description and registered.tags["task"] == "binary segmentation"
    trials = [r for r in runs if r.data.tags.get("potholes.stage") == "tune-trial"]
    assert trials and all("val_dice" in t.data.metrics for t in trials)
