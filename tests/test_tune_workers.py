"""Several `potholes tune` processes on one PostgreSQL study split its trials under one parent run."""

import json
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from helpers import cli_env
from mlflow.tracking import MlflowClient


def tune_command(store, storage: str, *extra: str, model: str = "workers-model") -> list[str]:
    return [sys.executable, "-m", "potholes", "tune", "--data-dir", str(store.data),
            "--unetpp-run", store.unetpp["run_id"], "--deeplab-run", store.deeplab["run_id"],
            "--storage", storage, "--study-name", "shared", "--registered-model", model, *extra]


def check_study(store, storage: str, n_trials: int, workers: int = 2, versions: int = 1,
                model: str = "workers-model") -> set[int]:
    """At least n_trials complete (at most one more per other worker, each finishing the trial it
    had asked for), distinct trials, none failed, each once as a nested run of the one parent
    run, and ``versions`` registered versions. Returns the pids that ran trials."""
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert n_trials <= len(complete) <= n_trials + workers - 1
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(complete)  # no trial ran twice
    assert [t.state for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE] == []  # none failed or left
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(store.uri)
    assert client.get_run(parent_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(store.uri)
    # every trial once under the study's (latest) parent, whichever process ran it
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="tags.`potholes.stage` = 'tune-trial' AND tags.`optuna.study` = 'shared' "
                                              f"AND tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(int(t.data.tags["optuna.trial"]) for t in trials) == sorted(t.number for t in complete)
    assert len(client.search_model_versions(f"name = '{model}'")) == versions  # registered once per tune
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


@pytest.mark.slow
def test_two_processes_reopening_a_finished_study_at_once_register_one_new_version(in_smoke_store, postgres_url,
                                                                                  tmp_path):
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    subprocess.run(tune_command(in_smoke_store, postgres_url, "--n-trials", "4", model="reopened-model"), env=env,
                   cwd=tmp_path, check=True, capture_output=True, timeout=600)
    command = tune_command(in_smoke_store, postgres_url, "--n-trials", "10", model="reopened-model")  # a larger quota
    workers = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert sum("registered reopened-model" in out for out in outputs) == 1, "\n----\n".join(o[-1500:] for o in outputs)
    check_study(in_smoke_store, postgres_url, 10, versions=2, model="reopened-model")


def test_a_trial_run_cut_short_by_a_kill_is_finished_not_deleted(tracking_store):
    from potholes.tuning import workers as shared

    study = optuna.create_study(direction="maximize")
    for value in (0.1, 0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(params={"w_unetpp": value}, value=value,
                                                  distributions={"w_unetpp": optuna.distributions.FloatDistribution(0, 1)}))
    with mlflow.start_run() as parent:
        pass
    tags = {"mlflow.parentRunId": parent.info.run_id, "potholes.stage": "tune-trial"}
    runs = {}
    for number, status in ((0, "FINISHED"), (1, "KILLED"), (2, "RUNNING")):
        runs[number] = MlflowClient().create_run(parent.info.experiment_id, tags={**tags, "optuna.trial": str(number)})
        if status != "RUNNING":
            MlflowClient().set_terminated(runs[number].info.run_id, status)
    # 1 was killed between Optuna's tell and its run's end: reopened and finished, not deleted;
    # 2 belongs to a live worker about to end it: left alone
    assert shared.log_missing_trials(study, parent.info.run_id) == [1]
    left = {int(r.data.tags["optuna.trial"]): r for r in mlflow.search_runs(
        output_format="list", filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert {n: r.info.run_id for n, r in left.items()} == {n: r.info.run_id for n, r in runs.items()}
    assert [left[n].info.status for n in (0, 1, 2)] == ["FINISHED", "FINISHED", "RUNNING"]
    assert left[1].data.metrics["val_dice"] == 0.2


@pytest.mark.slow
def test_a_storage_password_reaches_no_param_tag_argv_or_output(in_smoke_store, postgres_url, tmp_path):
    import time

    import psutil

    secret = "S3cret-Pw"  # the test server trusts loopback, so any password connects
    storage = postgres_url.replace("postgres@", f"postgres:{secret}@", 1)
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    command = [sys.executable, "-m", "potholes", "tune", "--data-dir", str(in_smoke_store.data),
               "--unetpp-run", in_smoke_store.unetpp["run_id"], "--deeplab-run", in_smoke_store.deeplab["run_id"],
               "--study-name", "secret", "--registered-model", "secret-model", "--n-trials", "6"]
    # An owner and a second process attached to its study, both given the storage by environment.
    processes = [subprocess.Popen(command, env={**env, "POTHOLES_STORAGE": storage}, cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    argvs = []
    while any(p.poll() is None for p in processes):  # bounded by their own end; every command line seen meanwhile
        for process in processes:
            try:
                argvs += [" ".join(p.cmdline()) for p in (psutil.Process(process.pid),
                                                           *psutil.Process(process.pid).children(recursive=True))]
            except psutil.Error:
                pass
        time.sleep(0.05)
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert any(" tune " in argv for argv in argvs)  # the processes were seen
    assert not any(secret in argv for argv in argvs)
    assert not any(secret in output for output in outputs)
    client = MlflowClient(in_smoke_store.uri)
    mlflow.set_tracking_uri(in_smoke_store.uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.data.params.get("config.study_name") == "secret")
    assert parent.data.params["config.storage"] == storage.replace(secret, "***")
    for run in runs:
        assert not any(secret in str(v) for v in (*run.data.params.values(), *run.data.tags.values()))
    for version in client.search_model_versions("name = 'secret-model'"):
        assert secret not in version.description and not any(secret in v for v in version.tags.values())


def running_trial(study, record: dict | None):
    trial = study.ask()
    if record is not None:
        trial.set_user_attr("potholes.process", json.dumps(record))
    return trial.number


@pytest.mark.parametrize("heartbeats", [False, True])
def test_stale_trials_are_judged_on_pid_and_utc_time_and_only_once_they_ran(tmp_path, heartbeats):
    import datetime
    import socket

    from potholes.tuning import workers as shared

    url = f"sqlite:///{tmp_path / 'study.db'}" if heartbeats else f"journal:///{tmp_path / 'journal.log'}"
    study, _ = shared.open_study("stale", url)
    now = datetime.datetime.now(datetime.UTC)
    other_host = {"potholes.host": "another-host", "potholes.pid": "1", "potholes.pid_started": "0"}
    # started a second ago on a host whose clock runs in UTC+05:00: the same instant, not 5 hours old
    east = now.astimezone(datetime.timezone(datetime.timedelta(hours=5)))
    live_elsewhere = running_trial(study, {**other_host, "started_utc": east.isoformat()})
    old_elsewhere = running_trial(study, {**other_host, "started_utc": (now - datetime.timedelta(minutes=5)).isoformat()})
    dead_here = running_trial(study, {"potholes.host": socket.gethostname(), "potholes.pid": "999999999",
                                      "potholes.pid_started": "0", "started_utc": now.isoformat()})
    just_asked = running_trial(study, None)  # asked, not yet recorded: may be about to run
    failed = shared.fail_stale_trials(study, shared.has_heartbeats(url))
    # RDB storages leave other hosts' trials to Optuna's heartbeat; the journal judges their age
    assert failed == ([dead_here] if heartbeats else [old_elsewhere, dead_here])
    running = {t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))}
    assert running == {live_elsewhere, just_asked} | ({old_elsewhere} if heartbeats else set())


def test_concurrent_workers_run_every_trial_they_ask_for_and_a_full_study_none(tmp_path):
    import threading

    from potholes.tuning import workers as shared

    study, _ = shared.open_study("threads", f"sqlite:///{tmp_path / 'study.db'}")
    threads = set()

    def objective(trial):
        threads.add(threading.get_ident())
        return trial.suggest_float("x", 0, 1)

    ran = shared.run_trials(study, objective, 30, [], n_jobs=2)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 30 <= len(complete) == ran <= 31 and len(study.trials) == ran  # nothing failed, nothing left running
    assert len(threads) == 2
    assert shared.run_trials(study, objective, 30, []) == 0  # a full study runs no extra trial


def test_champion_survives_a_twin_promoting_a_worse_version_at_the_same_moment(tracking_store, monkeypatch):
    from potholes.tuning import registry

    client = MlflowClient()
    client.create_registered_model("twins")
    for _ in range(3):
        version = client.create_model_version("twins", "file:///nowhere", run_id=None).version
        client.set_model_version_tag("twins", version, "dataset_digest", "d")
    client.set_model_version_tag("twins", "1", "val_dice", "0.5")
    client.set_model_version_tag("twins", "2", "val_dice", "0.9")  # ours
    client.set_model_version_tag("twins", "3", "val_dice", "0.7")  # the twin's
    client.set_registered_model_alias("twins", "champion", "1")
    real = MlflowClient.set_registered_model_alias
    moves = []

    def twin_moves_right_after_us(self, name, alias, version):
        real(self, name, alias, version)
        moves.append(version)
        if len(moves) == 1:  # the twin read champion=1 before our write and writes after it
            real(self, name, "champion", "3")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", twin_moves_right_after_us)
    assert registry.promote("twins", "2", 0.9, "d", settle_s=0) == "champion"
    assert str(client.get_model_version_by_alias("twins", "champion").version) == "2"
    assert moves == ["2", "2"]


def test_configure_tolerates_a_twin_creating_the_experiment_first(tracking_store, monkeypatch):
    from potholes.tracking import runs as tracking

    mlflow.create_experiment("twin-made")
    monkeypatch.setattr(mlflow, "get_experiment_by_name",
                        lambda name, real=mlflow.get_experiment_by_name: real(name) if seen.append(name) or
                        len(seen) > 1 else None)
    seen = []
    tracking.configure("twin-made")  # it looked (none yet), the twin created it, our create fails: use the twin's
    assert mlflow.get_experiment_by_name("twin-made").experiment_id == \
        mlflow.tracking.fluent._active_experiment_id


def test_a_study_a_twin_completed_while_this_tune_started_is_left_as_it_is(tmp_path):
    import time

    from potholes.tuning import workers as shared

    study, _ = shared.open_study("done", f"sqlite:///{tmp_path / 'study.db'}")
    shared.run_trials(study, lambda trial: trial.suggest_float("x", 0, 1), 3, [])
    started = time.time()
    ended_since = shared.Parent(None, owner=True, finished_parent="p", finished_at=started + 1)
    ended_before = shared.Parent(None, owner=True, finished_parent="p", finished_at=started - 60)
    assert shared.finished_by_a_twin(study, ended_since, 3, started)
    assert not shared.finished_by_a_twin(study, ended_before, 3, started)  # tuned earlier: a new parent shows it
    assert not shared.finished_by_a_twin(study, ended_since, 5, started)  # a larger quota: trials left to run


def test_a_trial_its_worker_left_before_recording_it_is_failed_not_waited_on(tmp_path):
    """kill -9 between Optuna's ask and the worker's first write leaves a RUNNING trial with no
    heartbeat and no record: the owner fails it after watching it that long, and only it."""
    from potholes.tuning.workers import (
        PROCESS_ATTR,
        open_study,
        process_record,
        wait_for_other_workers,
    )

    study, _ = open_study("orphan", f"sqlite:///{tmp_path / 'study.db'}")
    orphan = study.ask()  # RUNNING, nobody's
    started = time.monotonic()
    wait_for_other_workers(study, heartbeats=True, timeout_s=30, poll_s=0.05, unrecorded_s=0.5)
    assert time.monotonic() - started < 20  # not the whole bounded wait
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL

    alive = study.ask()
    alive.set_user_attr(PROCESS_ATTR, process_record())  # this live process's trial
    wait_for_other_workers(study, heartbeats=True, timeout_s=1.5, poll_s=0.05, unrecorded_s=0.5)
    assert study.trials[alive.number].state == optuna.trial.TrialState.RUNNING
