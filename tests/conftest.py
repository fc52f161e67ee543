import os
import sys

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from pg import postgres_server, postgres_url  # noqa: E402,F401  fixtures: a throwaway PostgreSQL (tests/pg.py)


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first: with several test processes (`make test`), the minutes-long
    ones start early and the short ones fill the gaps at the end, instead of one process finishing
    a two-minute test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def sys_path_restored():
    """Loading a registered model prepends its code folder (the slim serving copy of the package)
    to sys.path, as MLflow does; processes spawned later by another test (torch.multiprocessing)
    would inherit it and import that copy. Each test starts from the interpreter's own path."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A throwaway MLflow store (sqlite + ./mlruns) in a temp working directory."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    # an earlier test's mlflow.set_experiment leaves its id in the module; in a fresh store
    # that id does not exist
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)  # mlflow.set_experiment exports the id for child processes


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    from potholes.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", n_train=24, n_test=6, size=96, seed=3)


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory, synth_data):
    """Both models trained with the smoke preset and tuned once, in a store shared by many tests."""
    import types

    import mlflow

    from potholes.stages.train import run_train
    from potholes.stages.tune import run_tune
    from potholes.tracking import runs as tracking_mod
    from potholes.training.config import resolve_config
    from potholes.tuning.search import TuneConfig

    workdir = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"  # short runs still get samples
    os.chdir(workdir)
    try:
        mlflow.set_tracking_uri(uri)
        tracking_mod.configure()
        runs = {m: run_train(resolve_config(m, "smoke"), str(synth_data), progress=False) for m in ("unetpp", "deeplab")}
        tuned = run_tune(str(synth_data), TuneConfig(n_trials=4), progress=False)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return types.SimpleNamespace(uri=uri, workdir=workdir, data=synth_data, tune=tuned, **runs)


@pytest.fixture
def in_smoke_store(smoke_store, tmp_path, monkeypatch):
    """Point MLflow at the shared smoke store for one test."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_store.uri)
    mlflow.set_tracking_uri(smoke_store.uri)
    yield smoke_store
    while mlflow.active_run():
        mlflow.end_run()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)
