"""Several `potholes tune` processes on one PostgreSQL study split its trials under one parent run."""

import json
import subprocess
import sys

import mlflow
import optuna
import pytest
from helpers import cli_env
from mlflow.tracking import MlflowClient


def tune_command(store, storage: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "potholes", "tune", "--data-dir", str(store.data),
            "--unetpp-run", store.unetpp["run_id"], "--deeplab-run", store.deeplab["run_id"],
            "--storage", storage, "--study-name", "shared", "--registered-model", "workers-model", *extra]


def check_study(store, storage: str, n_trials: int) -> set[int]:
    """n_trials complete, distinct trials, each once as a nested run of the one parent run, and
    one registered version. Returns the pids that ran trials."""
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == n_trials
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == n_trials  # no trial ran twice
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(store.uri)
    assert client.get_run(parent_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(store.uri)
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="tags.`potholes.stage` = 'tune-trial' AND tags.`optuna.study` = 'shared'")
    assert all(t.data.tags["mlflow.parentRunId"] == parent_id for t in trials)  # one parent for the study
    assert sorted(int(t.data.tags["optuna.trial"]) for t in trials) == sorted(t.number for t in complete)
    assert len(client.search_model_versions("name = 'workers-model'")) == 1  # registered once
    return {json.loads(t.user_attrs["potholes.process"])["potholes.pid"] for t in complete}


@pytest.mark.slow
def test_two_processes_started_at_once_split_a_postgres_study(in_smoke_store, postgres_url, tmp_path):
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    command = tune_command(in_smoke_store, postgres_url, "--n-trials", "8")
    workers = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    pids = check_study(in_smoke_store, postgres_url, 8)
    assert pids <= {str(w.pid) for w in workers}
    assert sum("registered workers-model" in out for out in outputs) == 1  # only the owner registers
    assert sum("attaching to study 'shared'" in out for out in outputs) == 1


def test_a_trial_run_cut_short_by_a_kill_is_logged_again_not_left_killed(tracking_store):
    from potholes.tuning import workers as shared

    with mlflow.start_run() as parent:
        pass
    tags = {"mlflow.parentRunId": parent.info.run_id, "potholes.stage": "tune-trial"}
    for number, status in ((0, "FINISHED"), (1, "KILLED"), (2, "RUNNING")):
        run = MlflowClient().create_run(parent.info.experiment_id, tags={**tags, "optuna.trial": str(number)})
        if status != "RUNNING":
            MlflowClient().set_terminated(run.info.run_id, status)
    # 1 was killed between Optuna marking the trial complete and its run ending: logged again;
    # 2 belongs to a live worker about to end it: kept
    assert shared.logged_trial_numbers(parent.info.run_id) == {0, 2}
    left = mlflow.search_runs(output_format="list", filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["optuna.trial"] for r in left) == ["0", "2"]


@pytest.mark.slow
def test_a_storage_password_reaches_no_param_tag_argv_or_output(in_smoke_store, postgres_url, tmp_path):
    import time

    import psutil

    secret = "S3cret-Pw"  # the test server trusts loopback, so any password connects
    storage = postgres_url.replace("postgres@", f"postgres:{secret}@", 1)
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    command = [sys.executable, "-m", "potholes", "tune", "--data-dir", str(in_smoke_store.data),
               "--unetpp-run", in_smoke_store.unetpp["run_id"], "--deeplab-run", in_smoke_store.deeplab["run_id"],
               "--study-name", "secret", "--registered-model", "secret-model", "--n-trials", "6", "--workers", "2"]
    owner = subprocess.Popen(command, env={**env, "POTHOLES_STORAGE": storage}, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker_argvs = []
    while owner.poll() is None:  # bounded by the owner's own end; every command line seen meanwhile
        try:
            worker_argvs += [" ".join(child.cmdline()) for child in psutil.Process(owner.pid).children()]
        except psutil.Error:
            pass
        time.sleep(0.05)
    output = owner.communicate(timeout=60)[0]
    assert owner.returncode == 0, output[-3000:]
    assert any(" tune " in argv for argv in worker_argvs)  # the worker was seen
    assert not any(secret in argv for argv in worker_argvs)
    assert secret not in output
    client = MlflowClient(in_smoke_store.uri)
    mlflow.set_tracking_uri(in_smoke_store.uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.data.params.get("config.study_name") == "secret")
    assert parent.data.params["config.storage"] == storage.replace(secret, "***")
    for run in runs:
        assert not any(secret in str(v) for v in (*run.data.params.values(), *run.data.tags.values()))
    for version in client.search_model_versions("name = 'secret-model'"):
        assert secret not in version.description and not any(secret in v for v in version.tags.values())
