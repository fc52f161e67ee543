"""One Optuna study, many tune processes: the study's MLflow parent run, the trial quota shared
by every worker, and trials left RUNNING by a process that died.

Any number of `potholes tune` processes (one machine or several, on one RDB storage) split the
trials of a study: trial numbers come from the storage, so a trial beyond ``n_trials`` is known
to be one too many the moment it is asked for, and no trial runs twice. The first process
creates the parent run and records its id in the study's user attrs; the others attach their
trial runs to it with ``parent_run_id``. The process that owns the parent registers the model.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from dataclasses import dataclass

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from potholes.tracking import runs as tracking

PARENT_ATTR = "mlflow_parent_run_id"
STORAGE_ENV = "POTHOLES_STORAGE"  # tune --storage reads it too
PROCESS_ATTR = "potholes.process"
# A trial scores cached logits in well under a second; one RUNNING this long lost its process
# (another host's, or killed before it could say whose it was).
STALE_AFTER = datetime.timedelta(minutes=2)
TrialState = optuna.trial.TrialState


@dataclass
class Parent:
    run_id: str | None  # None: this process creates it
    owner: bool  # owns the parent run: ends it and registers the model


def make_storage(url: str):
    """An Optuna storage from a URL: RDB URLs as Optuna takes them, and ``journal:///path`` for
    a JournalStorage file (many processes of one host, no database server)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:").removeprefix("//")))
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.IntegrityError:
            # Workers started at once on an empty database race to create Optuna's tables; the
            # loser finds them made on its next try.
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url)


def open_study(study_name: str, storage: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists; True when this process created it. Creation
    is atomic in the storage (a unique study name), so of several workers started at once
    exactly one creates the study and becomes the owner."""
    storage = make_storage(storage)
    try:
        return optuna.create_study(study_name=study_name, storage=storage, direction="maximize"), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=study_name, storage=storage), False


def find_parent(study: optuna.Study, created: bool, wait_s: float = 120.0) -> Parent:
    """The study's parent run: a new one for the process that created the study; else attach to
    a live one, reopen one whose process died, or (the last one finished) start a new one."""
    if created:
        return Parent(None, owner=True)
    deadline = time.monotonic() + wait_s
    while not (run_id := study.user_attrs.get(PARENT_ATTR)) and time.monotonic() < deadline:
        time.sleep(0.5)  # the creator is still starting its parent run
        study = optuna.load_study(study_name=study.study_name, storage=study._storage)
    if not run_id:
        return Parent(None, owner=True)  # its creator died before it had a parent
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return Parent(None, owner=True)  # the study outlived its tracking store
    if run.info.status == "FINISHED":
        return Parent(None, owner=True)  # a study tuned before: a new parent shows it again
    if run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        return Parent(run_id, owner=False)  # another worker owns it
    return Parent(run_id, owner=True)  # killed or failed: continue it


def stale(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose process on this host is gone, or that has run implausibly long."""
    process = json.loads(trial.user_attrs.get(PROCESS_ATTR, "{}"))
    too_old = trial.datetime_start is not None and datetime.datetime.now() - trial.datetime_start > STALE_AFTER
    return too_old or not tracking.process_alive(process)


def fail_stale_trials(study: optuna.Study) -> int:
    """Stale RUNNING trials (``kill -9``) become FAIL, so they neither count towards ``n_trials``
    nor keep the owner waiting."""
    stale_trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if stale(t)]
    for trial in stale_trials:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # Optuna has no public call
    return len(stale_trials)


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state in (TrialState.COMPLETE, TrialState.RUNNING)


def run_trials(study: optuna.Study, objective, n_trials: int, callbacks: list) -> int:
    """Ask, score and tell trials until the study holds ``n_trials`` counted trials (COMPLETE or
    RUNNING, in trial-number order); returns how many this process ran."""
    ran = 0
    while True:
        if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= n_trials:
            return ran
        trial = study.ask()
        trial.set_user_attr(PROCESS_ATTR, json.dumps(tracking.process_tags()))  # one write: whose trial it is
        ahead = sum(counted(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        if ahead >= n_trials:  # another worker took the last slot between our count and our ask
            trial.set_user_attr("skipped", f"the study already had {n_trials} trials")
            study.tell(trial, state=TrialState.FAIL)
            return ran
        try:
            value = objective(trial)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        frozen = study.tell(trial, value)
        ran += 1
        for callback in callbacks:
            callback(study, frozen)


def wait_for_other_workers(study: optuna.Study, timeout_s: float = 600.0, poll_s: float = 0.5) -> None:
    """The owner registers only once every trial has finished (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll_s)
    print(f"note: trials still RUNNING after {timeout_s:.0f}s; registering with the finished ones", flush=True)


def logged_trial_numbers(parent_run_id: str) -> set[int]:
    """Trials whose run under the parent finished. A trial run cut short by a kill (the trial
    was complete in the study, its run not yet ended) is deleted, so that it is logged again."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' AND "
                                            f"tags.`potholes.stage` = 'tune-trial'")
    # Runs of dead processes are KILLED by now (tracking.configure); a RUNNING one is a live
    # worker's, about to finish, and is left alone.
    cut_short = [run for run in runs if run.info.status in ("KILLED", "FAILED")]
    for run in cut_short:
        MlflowClient().delete_run(run.info.run_id)
    return {int(run.data.tags["optuna.trial"]) for run in runs if run not in cut_short}


@functools.lru_cache(maxsize=8)
def _experiment_of(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, parent_run_id: str) -> None:
    """One finished trial as a nested run of the study's parent run, from any process.

    (optuna-integration's MLflowCallback does the same but is deprecated since Optuna 4.9.)
    """
    if trial.state != TrialState.COMPLETE:
        return
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=f"trial-{trial.number}", parent_run_id=parent_run_id, nested=nested,
                          experiment_id=_experiment_of(parent_run_id),  # beside its parent, whatever this worker's
                          tags={"potholes.stage": "tune-trial", "optuna.study": study.study_name,
                                "optuna.trial": str(trial.number), **tracking.process_tags()}):
        tracking.log_params(trial.params | {"w_deeplab": 1.0 - trial.params["w_unetpp"]})
        mlflow.log_metric("val_dice", trial.value)


def spawn_workers(data_dir: str, tune, storage: str, study_name: str, runs: dict[str, str]) -> list:
    """``--workers N``: N-1 more local `potholes tune` processes on the same study; they find
    this process's parent run in the study and attach their trial runs to it."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "potholes", "tune", "--data-dir", str(data_dir), "--n-trials", str(tune.n_trials),
            "--seed", str(tune.seed), "--threshold-min", str(tune.threshold_min), "--threshold-max", str(tune.threshold_max),
            "--min-area-min", str(tune.min_area_min), "--min-area-max", str(tune.min_area_max),
            "--study-name", study_name, "--unetpp-run", runs["unetpp"], "--deeplab-run", runs["deeplab"],
            "--registered-model", tune.registered_model, "--val-fraction", str(tune.val_fraction),
            "--split-seed", str(tune.split_seed), "--workers", "1"]
    # The storage URL may hold a password: it goes through the environment, never the command
    # line, which every user of the machine can read (ps, /proc).
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), STORAGE_ENV: storage,
           "MLFLOW_EXPERIMENT_ID": mlflow.active_run().info.experiment_id}
    env.pop("MLFLOW_RUN_ID", None)  # `mlflow run`'s run belongs to this process
    return [subprocess.Popen(args, env=env) for _ in range(tune.workers - 1)]


def wait_workers(workers: list, timeout_s: float = 3600.0) -> None:
    for worker in workers:
        try:
            code = worker.wait(timeout=timeout_s)
        except Exception:
            worker.kill()
            code = worker.wait()
        if code:
            print(f"note: tune worker {worker.pid} exited with status {code}; its unfinished trials are rerun here",
                  flush=True)
