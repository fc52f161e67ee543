"""`mlflow run .` (the main entry point) end to end, as a user runs it."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, cli_env


@pytest.mark.slow
def test_main_pipeline_with_smoke_preset(tmp_path, synth_data):
    env = cli_env(tmp_path)
    output = tmp_path / "submission.csv"
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
    assert not (REPO / "optuna.db").exists()  # the study lives beside the tracking store
