"""The whole pipeline against a team tracking server: `mlflow server` with a PostgreSQL backend store
and proxied artifacts, clients holding nothing but MLFLOW_TRACKING_URI=http://127.0.0.1:PORT."""

import base64
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import requests
from engines import need_modules
from helpers import REPO, ModelServer, cli_env
from tracking_server import TrackingServer


@pytest.fixture
def tracking_server(postgres_server, tmp_path):
    need_modules("psycopg")
    database = f"mlflow_{uuid.uuid4().hex[:8]}"
    backend = postgres_server.create_database(database)
    with TrackingServer(backend, tmp_path / "artifact-store", tmp_path / "mlflow-server.log") as server:
        server.database = database
        yield server


@pytest.mark.slow
def test_pipeline_predict_and_serving_through_a_tracking_server(tracking_server, postgres_server, synth_data, tmp_path):
    import psycopg
    from mlflow.tracking import MlflowClient

    work = tmp_path / "client"
    work.mkdir()
    env = cli_env(work, MLFLOW_TRACKING_URI=tracking_server.url, XDG_CACHE_HOME=str(tmp_path / "cache"))
    bin_dir = Path(sys.executable).parent
    output = work / "submission.csv"
    out = subprocess.run([str(bin_dir / "mlflow"), "run", str(REPO), "--env-manager", "local", "--experiment-name",
                          "potholes", "-P", f"data_dir={synth_data}", "-P", "preset=smoke", "-P", "n_trials=2",
                          "-P", f"output={output}"], capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]

    # Runs: in PostgreSQL, through the server.
    client = MlflowClient(tracking_uri=tracking_server.url)
    experiment = client.get_experiment_by_name("potholes")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("potholes.stage") == "main")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["potholes.stage"] for r in children) == ["predict", "prepare", "train", "train", "tune"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    with psycopg.connect(host="127.0.0.1", port=postgres_server.port, user="postgres",
                         dbname=tracking_server.database) as conn:
        stored = conn.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
        registered = conn.execute("select count(*) from model_versions where name = 'pothole-ensemble'").fetchone()[0]
    assert stored == len(runs) and registered == 1

    # Artifacts: proxied by the server into its destination folder, never written by the client.
    predict_run = next(r for r in children if r.data.tags["potholes.stage"] == "predict")
    assert predict_run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert "submission.csv" in {a.path for a in client.list_artifacts(predict_run.info.run_id)}
    stored_file = tracking_server.artifacts / experiment.experiment_id / predict_run.info.run_id / "artifacts" / "submission.csv"
    assert stored_file.read_text() == output.read_text()
    assert not (work / "mlruns").exists() and not (work / "mlflow.db").exists()
    # the study went to the user's cache folder, not into the checkout `mlflow run` runs in
    assert (tmp_path / "cache" / "potholes" / "optuna.db").is_file() and not (REPO / "optuna.db").exists()

    # Registry: the champion is this pipeline's version, and predict loads it over HTTP.
    champion = client.get_model_version_by_alias("pothole-ensemble", "champion")
    assert champion.run_id == next(r for r in children if r.data.tags["potholes.stage"] == "tune").info.run_id
    again = work / "again.csv"
    out = subprocess.run([str(bin_dir / "potholes"), "predict", "--data-dir", str(synth_data), "--output", str(again)],
                         capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    expected = pd.read_csv(output, keep_default_na=False)
    assert pd.read_csv(again, keep_default_na=False).equals(expected)

    # Serving: `mlflow models serve` resolves models:/...@champion through the server.
    row = expected.iloc[0]
    image = base64.b64encode((synth_data / "test" / "images" / row["ImageId"]).read_bytes()).decode()
    with ModelServer("models:/pothole-ensemble@champion", tracking_server.url, tmp_path / "serve.log") as served:
        reply = requests.post(f"{served.url}/invocations", json={"dataframe_records": [{"image": image}]}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["rle"] == row["rle"]
