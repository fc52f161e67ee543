"""`kill -9` in the middle of train and of tune, then the user's next command: nothing finished is
lost, the result equals an uninterrupted run's, and no run stays RUNNING."""

import signal
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pytest
from helpers import cli_env, curves, potholes, round_steps, train_runs, wait_for
from mlflow.tracking import MlflowClient

from potholes.tracking import runs as tracking

TRAIN = ["train", "--model", "deeplab", "--preset", "smoke", "--epochs", "4", "--seed", "5"]


@pytest.mark.slow
def test_kill_9_mid_round_then_resume_ends_like_a_straight_run(tmp_path, synth_data, monkeypatch):
    env = cli_env(tmp_path)
    data = ["--data-dir", str(synth_data)]
    potholes(*TRAIN, *data, env=env, cwd=tmp_path)
    straight = train_runs(env["MLFLOW_TRACKING_URI"])[0]

    victim = subprocess.Popen([sys.executable, "-m", "potholes", *TRAIN, *data], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = wait_for(lambda: next(iter(train_runs(env["MLFLOW_TRACKING_URI"])[1:]), None), what="the second run")
        client = MlflowClient()
        # the resume point of round 1 is on the store: round 2 is under way
        wait_for(lambda: "checkpoints/last/last.pt" in {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints/last")},
                 what="round 1's resume point")
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    run_id = run.info.run_id
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could say otherwise yet
    assert len(client.get_metric_history(run_id, "val_dice")) < 4

    # the next start notices the dead process and marks its run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    assert tracking.mark_dead_runs() == [run_id]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and "was gone" in killed.data.tags["potholes.marked_killed"]

    out = potholes(*TRAIN, *data, "--resume", run_id, env=env, cwd=tmp_path)
    assert f"resuming run {run_id} after round" in out.stdout
    resumed = curves(run_id)
    expected = curves(straight.info.run_id)
    for key in expected:
        assert [step for step, _ in resumed[key]] == round_steps(run_id), key  # each round once
        np.testing.assert_allclose([v for _, v in resumed[key]], [v for _, v in expected[key]], rtol=0, atol=1e-6,
                                   err_msg=key)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(train_runs(env["MLFLOW_TRACKING_URI"])) == 2  # resumed in place, no third run


@pytest.mark.slow
def test_kill_9_mid_study_then_the_same_command_loses_no_trial(in_smoke_store, tmp_path):
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "potholes", "tune", "--data-dir", str(in_smoke_store.data),
               "--unetpp-run", in_smoke_store.unetpp["run_id"], "--deeplab-run", in_smoke_store.deeplab["run_id"],
               "--n-trials", "40", "--storage", storage, "--study-name", "kill-me", "--registered-model", "kill-model"]

    def complete() -> list:
        try:
            study = optuna.load_study(study_name="kill-me", storage=storage)
        except KeyError:  # not created yet
            return []
        return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))

    victim = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(complete()) >= 5, what="five finished trials")
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    before = {t.number: (t.params, t.value) for t in complete()}
    assert 5 <= len(before) < 40
    parent_id = optuna.load_study(study_name="kill-me", storage=storage).user_attrs["mlflow_parent_run_id"]

    subprocess.run(command, env=env, cwd=tmp_path, check=True, capture_output=True)
    study = optuna.load_study(study_name="kill-me", storage=storage)
    after = {t.number: (t.params, t.value) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert len(after) == 40
    assert all(after[number] == trial for number, trial in before.items())  # nothing finished was lost or redone
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id  # the same parent run goes on
    client = MlflowClient(in_smoke_store.uri)
    assert client.get_run(parent_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(in_smoke_store.uri)
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == sorted(after)  # one run per trial
    assert all(r.info.status == "FINISHED" for r in trials)
