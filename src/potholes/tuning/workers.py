"""One Optuna study, many tune processes: the study's MLflow parent run, the trial quota shared
by every worker, and trials left RUNNING by a process that died.

Any number of `potholes tune` processes (one machine or several, on one RDB storage) split the
trials of a study: trial numbers come from the storage, so no trial runs twice. The first process
creates the parent run and records its id in the study's user attrs; the others attach their
trial runs to it with ``parent_run_id``. The process that owns the parent registers the model.

One process runs one worker: a trial costs ~140 ms here, mostly TPE's sampling (pure Python,
under the GIL) and storage writes, so two threads of one process sharing the cached logits
(``n_jobs=2``) measured slower than one (BENCHMARKS.md row 12) and `tune` has no option for them.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
import warnings
from dataclasses import dataclass

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from potholes.tracking import runs as tracking

PARENT_ATTR = "mlflow_parent_run_id"
STORAGE_ENV = "POTHOLES_STORAGE"  # tune --storage reads it too
PROCESS_ATTR = "potholes.process"
# RDB storages: each running trial records a heartbeat (the database's clock, so hosts with other
# clocks or timezones agree); one silent for GRACE_S lost its process and Optuna fails it.
HEARTBEAT_S, GRACE_S = 5, 30
# JournalStorage has no heartbeat: a trial there is stale when its pid is gone on this host, or when
# it started (UTC, timezone-aware) longer ago than any trial lasts: trials take well under a second.
STALE_AFTER = datetime.timedelta(minutes=2)
TrialState = optuna.trial.TrialState


@dataclass
class Parent:
    run_id: str | None  # None: this process creates it
    owner: bool  # owns the parent run: ends it and registers the model
    finished_parent: str | None = None  # the study's last parent, FINISHED, when this one reopens it
    finished_at: float | None = None  # its end (seconds since the epoch)


def make_storage(url: str):
    """An Optuna storage from a URL: RDB URLs as Optuna takes them (with heartbeats), and
    ``journal:///path`` for a JournalStorage file (many processes of one host, no database server)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:").removeprefix("//")))
    import sqlalchemy.exc

    def rdb():
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        for attempt in range(5):
            try:
                return rdb()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers started at once on an empty database race to create Optuna's tables
                # (a duplicate key or a duplicate table); the loser finds them made on its next try.
                time.sleep(0.5 * (attempt + 1))
        return rdb()


def open_study(study_name: str, storage: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists; True when this process created it. Creation
    is atomic in the storage (a unique study name), so of several workers started at once
    exactly one creates the study and becomes the owner."""
    storage = make_storage(storage)
    try:
        return optuna.create_study(study_name=study_name, storage=storage, direction="maximize"), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=study_name, storage=storage), False


def _live_parent(study: optuna.Study) -> str | None:
    """The study's parent run id when that run is RUNNING in a live process, else None."""
    run_id = study.user_attrs.get(PARENT_ATTR)  # read from the storage each time
    if not run_id:
        return None
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id if run.info.status == "RUNNING" and tracking.process_alive(run.data.tags) else None


def claim(study: optuna.Study, storage_url: str, what: str) -> bool:
    """True for exactly one of several processes claiming ``what`` of this study at once: creating
    a study is atomic in the storage, so the claim is a tiny study named after it."""
    try:
        optuna.create_study(study_name=f"{study.study_name}#{what}", storage=make_storage(storage_url))
        return True
    except optuna.exceptions.DuplicatedStudyError:
        return False


def find_parent(study: optuna.Study, created: bool, storage_url: str, wait_s: float = 120.0) -> Parent:
    """The study's parent run: a new one for the process that created the study; else attach to
    a live one, reopen one whose process died, or (the last one finished) start a new one. Of
    several processes reopening a finished or dead parent at once, one claims it and owns the
    parent; the others wait for that parent to run and attach to it."""
    if created:
        return Parent(None, owner=True)
    deadline = time.monotonic() + wait_s
    while not (run_id := study.user_attrs.get(PARENT_ATTR)) and time.monotonic() < deadline:
        time.sleep(0.5)  # the creator is still starting its parent run (user_attrs read the storage)
    if not run_id:
        return Parent(None, owner=True)  # its creator died before it had a parent
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return Parent(None, owner=True)  # the study outlived its tracking store
    if run.info.status == "RUNNING" and tracking.process_alive(run.data.tags):
        return Parent(run_id, owner=False)  # another worker owns it
    finished = run.info.status == "FINISHED"
    # The claim names this end of the parent: a parent killed, continued and killed again is claimed anew.
    if claim(study, storage_url, f"{'reopened-after' if finished else 'continued'}-{run_id}-{run.info.end_time}"):
        # finished: a study tuned before, a new parent shows it again; killed or failed: continue it
        if finished:
            return Parent(None, owner=True, finished_parent=run_id, finished_at=run.info.end_time / 1000)
        return Parent(run_id, owner=True)
    while time.monotonic() < deadline:
        if live := _live_parent(study):
            return Parent(live, owner=False)
        time.sleep(0.5)
    return Parent(None if finished else run_id, owner=True)  # the claimer died before its parent ran


def process_record() -> str:
    """Whose trial this is and when it started (UTC): the JournalStorage staleness test."""
    return json.dumps({**tracking.process_tags(), "started_utc": datetime.datetime.now(datetime.UTC).isoformat()})


def stale(trial: optuna.trial.FrozenTrial, heartbeats: bool) -> bool:
    """A RUNNING trial whose process on this host is gone; without heartbeats (JournalStorage) also
    one that started, by its own UTC record, implausibly long ago. A trial with no record yet
    (asked a moment ago) is never stale: it may be about to run."""
    if PROCESS_ATTR not in trial.user_attrs:
        return False
    process = json.loads(trial.user_attrs[PROCESS_ATTR])
    if not tracking.process_alive(process):
        return True
    started = process.get("started_utc")
    return (not heartbeats and started is not None
            and datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(started) > STALE_AFTER)


def finished_by_a_twin(study: optuna.Study, found: Parent, n_trials: int, started_at: float) -> bool:
    """The study is full and its last parent ended after this tune started (``started_at``, seconds
    since the epoch): a process started with this one (the same command twice, or on two hosts)
    completed and registered it meanwhile, so this one has nothing to run or register."""
    full = sum(counted(t) for t in study.get_trials(deepcopy=False)) >= n_trials
    return found.finished_parent is not None and full and found.finished_at > started_at


def has_heartbeats(storage_url: str) -> bool:
    return not storage_url.startswith("journal:")


def fail_stale_trials(study: optuna.Study, heartbeats: bool) -> list[int]:
    """Stale RUNNING trials (a ``kill -9``) become FAIL, so they neither count towards ``n_trials``
    nor keep the owner waiting; returns their numbers. RDB storages (``heartbeats``): Optuna's
    heartbeat check, for any host, and at once the trials of dead processes of this host;
    JournalStorage: `stale`. Failing goes through ``tell``, which skips a trial finished meanwhile."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
    for trial in running:
        if stale(trial, heartbeats):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    return [t.number for t in running if states.get(t.number) == TrialState.FAIL]


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state in (TrialState.COMPLETE, TrialState.RUNNING)


def run_trials(study: optuna.Study, objective, n_trials: int, callbacks: list, n_jobs: int = 1) -> int:
    """Run trials with Optuna's ``optimize`` (its heartbeats on RDB storages, ``n_jobs`` threads)
    until the study holds ``n_trials`` counted trials (COMPLETE or RUNNING); returns how many this
    process completed. Every trial asked is run and told: when several workers finish at the same
    moment each may have started one more, so a study can end a few trials above ``n_trials``
    (at most one per other worker), never with a trial failed that never ran."""
    if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= n_trials:
        return 0  # a full study: optimize would run one trial before any callback could stop it
    completed = []

    def recorded(trial: optuna.Trial) -> float:
        trial.set_user_attr(PROCESS_ATTR, process_record())  # one write: whose trial it is
        return objective(trial)

    def count(_, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            completed.append(trial.number)

    quota = optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.RUNNING))
    study.optimize(recorded, n_jobs=n_jobs, callbacks=[quota, count, *callbacks])
    return len(completed)


def wait_for_other_workers(study: optuna.Study, heartbeats: bool, timeout_s: float = 600.0,
                           poll_s: float = 0.5, unrecorded_s: float = GRACE_S) -> None:
    """The owner registers only once every trial has finished (bounded wait).

    A worker writes its record into a trial within moments of asking for it; a trial that this
    process watches stay RUNNING without a record for ``unrecorded_s`` (measured on this process's
    own clock) lost its worker in that moment, before any heartbeat or record said whose it was,
    and is failed."""
    deadline = time.monotonic() + timeout_s
    unrecorded: dict[int, float] = {}
    while time.monotonic() < deadline:
        fail_stale_trials(study, heartbeats)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        now = time.monotonic()
        for trial in running:
            if PROCESS_ATTR in trial.user_attrs:
                unrecorded.pop(trial.number, None)
            elif now - unrecorded.setdefault(trial.number, now) > unrecorded_s:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        time.sleep(poll_s)
    print(f"note: trials still RUNNING after {timeout_s:.0f}s; registering with the finished ones", flush=True)


def log_missing_trials(study: optuna.Study, parent_run_id: str) -> list[int]:
    """Log every COMPLETE trial that has no finished run under the parent: trials finished
    before (an interrupted process, an earlier tune of this study), and runs cut short by a kill
    between Optuna's tell and the run's end, which are reopened and finished, not deleted. A
    RUNNING trial run belongs to a live worker about to end it and is left alone."""
    runs = {}
    for run in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' AND "
                                                f"tags.`potholes.stage` = 'tune-trial'"):
        runs.setdefault(int(run.data.tags["optuna.trial"]), run)
    logged = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run = runs.get(trial.number)
        if run is None or run.info.status in ("KILLED", "FAILED"):
            log_trial(study, trial, parent_run_id, run_id=run.info.run_id if run else None)
            logged.append(trial.number)
    return logged


@functools.lru_cache(maxsize=8)
def _experiment_of(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, parent_run_id: str,
              run_id: str | None = None) -> None:
    """One finished trial as a nested run of the study's parent run, from any process or thread
    (MLflow's active run is per thread); ``run_id`` reopens a run of this trial cut short.

    (optuna-integration's MLflowCallback does the same but is deprecated since Optuna 4.9.)
    """
    if trial.state != TrialState.COMPLETE:
        return
    nested = mlflow.active_run() is not None
    tags = {"potholes.stage": "tune-trial", "optuna.study": study.study_name, "optuna.trial": str(trial.number),
            **tracking.process_tags()}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"trial-{trial.number}",
                          parent_run_id=None if run_id else parent_run_id, nested=nested,
                          experiment_id=None if run_id else _experiment_of(parent_run_id),  # beside its parent
                          tags=tags):
        tracking.log_params(trial.params | {"w_deeplab": 1.0 - trial.params["w_unetpp"]})
        mlflow.log_metric("val_dice", trial.value)
