import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the seed's reference implementations live there

REAL_DATA = Path(os.environ.get("POTHOLES_REAL_DATA", REPO.parent / "shared" / "data" / "potholes"))
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "train" / "images").is_dir(),
    reason=f"real dataset not found at {REAL_DATA} (set POTHOLES_REAL_DATA)",
)


def cli_env(tmp_path, **extra) -> dict:
    """Environment for subprocess runs as a user with the venv activated and a private store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return env


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A throwaway MLflow store (sqlite + ./mlruns) in a temp working directory."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)  # mlflow.set_experiment exports the id for child processes


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    from potholes.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", n_train=24, n_test=6, size=96, seed=3)
