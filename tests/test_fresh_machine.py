"""The design card's commands as a new user runs them: `mlflow run` from a fresh clone in an
environment MLflow builds itself, parameter values with spaces, and the demo kept apart."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from helpers import REPO, cli_env
from mlflow.tracking import MlflowClient

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def fresh_clone(dst: Path) -> Path:
    """What `git clone` of this working tree gives: tracked and untracked-but-not-ignored files
    only (no .venv, no egg-info, no store), so nothing of the dev environment can leak in."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    return dst


def uv_settings_from_pip() -> dict[str, str]:
    """uv reads its own settings, not pip's. Hand it the indexes and wheel folders this machine's
    pip is configured with (a mirror, a local wheel folder), so that it resolves the same files
    instead of downloading PyPI's multi-GB CUDA build of torch. Without such a configuration uv
    uses PyPI as a user's machine would (docs/environments.md says how to pick the CPU build)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    config = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        config[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    env = {"UV_PYTHON_DOWNLOADS": "never"}  # a Python 3.11 on the machine, never one from the network
    if config.get("index-url"):
        env["UV_INDEX_URL"] = config["index-url"]
    if config.get("extra-index-url"):
        env["UV_EXTRA_INDEX_URL"] = config["extra-index-url"]
        env["UV_INDEX_STRATEGY"] = "unsafe-best-match"  # pip's rule: the best version from any index
    if config.get("find-links"):
        env["UV_FIND_LINKS"] = ",".join(config["find-links"].split())
    return env


@pytest.mark.slow
def test_main_runs_from_a_fresh_clone_in_an_environment_mlflow_builds(tmp_path, synth_data):
    """`--env-manager uv` builds the environment from conda.yaml's pip list and runs src/ without
    installing this package: the whole smoke pipeline must run there and register its model."""
    clone = fresh_clone(tmp_path / "clone")
    env = cli_env(tmp_path, MLFLOW_ENV_ROOT=str(tmp_path / "envs"), **uv_settings_from_pip())
    try:
        out = subprocess.run([MLFLOW, "run", str(clone), "--env-manager", "uv", "--experiment-name", "potholes",
                              "-P", f"data_dir={synth_data}", "-P", "preset=smoke", "-P", "n_trials=3",
                              "-P", f"output={tmp_path / 'submission.csv'}"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        (built,) = (tmp_path / "envs").iterdir()  # the environment MLflow made, not the dev venv
        assert f"source {built}/bin/activate" in out.stderr
        site = next(built.glob("lib/python3.11/site-packages"))
        assert not list(site.glob("potholes*")), "the package must not be installed there"
    finally:
        shutil.rmtree(tmp_path / "envs", ignore_errors=True)  # several GB
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    version = MlflowClient().get_model_version_by_alias("pothole-ensemble", "champion")
    assert version.tags["dataset_digest"]
    assert (tmp_path / "submission.csv").exists()


@pytest.mark.slow
def test_a_value_with_a_space_reaches_the_entry_point_intact(smoke_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(smoke_store.workdir, store)  # the shared store stays as other tests expect it
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}")
    out = subprocess.run([MLFLOW, "run", str(REPO), "-e", "tune", "--env-manager", "local",
                          "--experiment-name", "potholes", "-P", f"data_dir={smoke_store.data}",
                          "-P", "study_name=roads v3", "-P", "n_trials=2", "-P", f"storage={storage}",
                          "-P", "registered_model=spaced-model"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert optuna.load_study(study_name="roads v3", storage=storage).trials
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    tune = mlflow.search_runs(experiment_names=["potholes"], output_format="list",
                              filter_string="params.`config.study_name` = 'roads v3'")
    assert len(tune) == 1  # (MLflow logs its own bare `study_name` param in the quoted form it substituted)


def test_make_demo_keeps_its_data_runs_and_model_apart():
    dry = subprocess.run(["make", "-n", "demo", "VENV=.venv"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": ""}).stdout.replace("\\\n", " ")
    command = next(line for line in dry.splitlines() if "mlflow run" in line)
    for part in ("--experiment-name potholes-demo", "-P data_dir=demo/data", "-P preset=demo",
                 "-P registered_model=pothole-ensemble-demo"):
        assert part in command, command
    assert "data_dir=data" not in command  # not under the default data_dir, where real data goes


def test_the_demo_preset_is_a_demo_sized_budget():
    from potholes.training.config import resolve_config

    for model in ("unetpp", "deeplab"):
        demo, cpu = resolve_config(model, "demo", cuda_available=False), resolve_config(model, "cpu", cuda_available=False)
        assert demo.encoder == cpu.encoder and demo.encoder_weights == "imagenet"  # real weights, offline
        # about a quarter of the pixels and a fifth of the steps: minutes, not a quarter of an hour
        assert demo.img_size ** 2 * demo.steps * 16 < cpu.img_size ** 2 * cpu.steps
