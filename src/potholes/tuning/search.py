"""The search `tune` runs: its config, which train runs it blends, the search space, the
objective over cached logits, the baselines and the study's plots."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from potholes.errors import ConfigError, raise_all
from potholes.inference import postprocess as pp
from potholes.reporting import size_buckets
from potholes.tracking import runs as tracking
from potholes.tracking.redaction import mask_url


@dataclass(frozen=True)
class TuneConfig:
    n_trials: int = 40
    seed: int = 42
    threshold_min: float = 0.30
    threshold_max: float = 0.45
    min_area_min: int = 100  # pixels at 512 px, scaled to the model size
    min_area_max: int = 400
    storage: str | None = None  # default: optuna.db beside the MLflow SQLite store
    study_name: str | None = None
    registered_model: str = "pothole-ensemble"
    unetpp_run: str | None = None
    deeplab_run: str | None = None
    val_fraction: float = 0.15
    split_seed: int = 42
    promote: bool = False  # make the registered version champion even when tuned on other data or worse
    extra_callbacks: tuple[Callable, ...] = field(default=(), compare=False)

    def validate(self) -> None:
        problems = []
        if self.n_trials < 1:
            problems.append(f"n_trials must be >= 1, got {self.n_trials}")
        if not 0 < self.threshold_min <= self.threshold_max < 1:
            problems.append(f"need 0 < threshold_min <= threshold_max < 1, got {self.threshold_min}..{self.threshold_max}")
        if not 0 <= self.min_area_min <= self.min_area_max:
            problems.append(f"need 0 <= min_area_min <= min_area_max, got {self.min_area_min}..{self.min_area_max}")
        raise_all(problems, "tune parameters")


# ----------------------------------------------------------------------------- choosing runs
def latest_train_run(model: str, digest: str) -> str:
    """The newest FINISHED train run of ``model`` on the split with ``digest``."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=(f"tags.model = '{model}' AND tags.`potholes.stage` = 'train' AND "
                       f"attributes.status = 'FINISHED' AND tags.`potholes.dataset_digest` = '{digest}'"),
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        raise ConfigError(f"no finished train run of model '{model}' on this split (dataset digest {digest}); "
                         f"run `mlflow run . -e train -P model={model}` first or pass {model}_run=<run id>")
    return runs[0].info.run_id


def best_train_run(model: str, digest: str) -> tuple[str, float]:
    """The train run whose LoggedModel has the highest ``best_val_dice`` measured on the split with
    ``digest`` (metrics are linked to the manifest dataset they were measured on), among READY
    models of finished runs: (run id, that Dice)."""
    from mlflow.entities import LoggedModelStatus

    order = {"field_name": "metrics.best_val_dice", "ascending": False,
             "dataset_name": tracking.DATASET_NAME, "dataset_digest": digest}
    found = mlflow.search_logged_models(
        experiment_ids=[e.experiment_id for e in mlflow.search_experiments()],
        filter_string=f"tags.`potholes.stage` = 'train' AND params.arch = '{model}'",
        datasets=[{"dataset_name": tracking.DATASET_NAME, "dataset_digest": digest}], order_by=[order],
        output_format="list")
    client = MlflowClient()
    for logged in found:
        if logged.status == LoggedModelStatus.READY and logged.source_run_id and \
                client.get_run(logged.source_run_id).info.status == "FINISHED":
            dice = max(m.value for m in logged.metrics if m.key == "best_val_dice" and m.dataset_digest == digest)
            return logged.source_run_id, dice
    raise ConfigError(f"{model}_run=best: no finished train run of model '{model}' has a logged model with "
                     f"best_val_dice on this split (dataset digest {digest}); train one first, or pass "
                     f"{model}_run=latest or a run id")


def choose_train_run(model: str, given: str | None, digest: str) -> str:
    """``given`` run id, or the ``latest`` (None) or ``best`` train run of ``model`` on this split;
    says which it took."""
    if given is None:
        run_id = latest_train_run(model, digest)
        print(f"{model}_run=latest: run {run_id}, the newest finished one on this split", flush=True)
    elif given == "best":
        run_id, dice = best_train_run(model, digest)
        print(f"{model}_run=best: run {run_id}, best_val_dice {dice:.4f}, the highest on this split", flush=True)
    else:
        run_id = given
    return run_id


def check_train_run(run_id: str, model: str, digest: str) -> None:
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"{model}_run: run '{run_id}' does not exist in {mask_url(mlflow.get_tracking_uri())}") from exc
    tags = run.data.tags
    if tags.get("potholes.stage") != "train" or tags.get("model") != model:
        raise ConfigError(f"{model}_run: run '{run_id}' is not a train run of model '{model}' "
                         f"(stage={tags.get('potholes.stage')}, model={tags.get('model')})")
    trained_on = tracking.run_dataset_digest(run_id)
    if trained_on != digest:
        raise ConfigError(f"{model}_run: run '{run_id}' was trained on a different split (dataset digest "
                         f"{trained_on}, this data gives {digest}); retrain it or use matching data_dir/val_fraction/seed")


def default_storage() -> str:
    """The Optuna study lives beside the MLflow SQLite store (``optuna.db``). With any other
    tracking store (a server) it goes to the user's cache folder, never into the project
    checkout that `mlflow run` runs in; teams pass ``--storage`` to share one."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "potholes"
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def log_member_inputs(run_id: str, runs: dict[str, str]) -> None:
    """Both members' LoggedModels as model inputs of the tune run ("Logged models" then shows
    where the ensemble came from). Train runs from before LoggedModels are skipped."""
    from mlflow.entities import LoggedModelInput

    from potholes.training.resume import MODEL_TAG

    client = MlflowClient()
    ids = [client.get_run(train_run).data.tags.get(MODEL_TAG) for train_run in runs.values()]
    if any(ids):
        client.log_inputs(run_id, models=[LoggedModelInput(model_id) for model_id in ids if model_id])


def min_area_range(tune: TuneConfig, manifest, size: int) -> tuple[int, int]:
    """The seed's min-area range (pixels at 512 px) scaled to the model size, capped so it cannot
    erase the smallest true potholes of the training masks (size_buckets.min_area_cap)."""
    low, high = pp.scaled_min_area(tune.min_area_min, size), pp.scaled_min_area(tune.min_area_max, size)
    train = manifest[manifest["split"] == "train"]
    cap = size_buckets.min_area_cap(train["min_component_pixels"] / (train["height"] * train["width"]), size)
    if cap is not None and high > cap:
        print(f"note: min-area range {low}-{high} px capped at {cap} px (half the smallest training potholes "
              f"at {size} px)", flush=True)
        low, high = min(low, cap), cap
    return low, high


def download_best_checkpoint(run_id: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best", dst_path=str(dst)))


# ----------------------------------------------------------------------------- search
@dataclass
class SearchSpace:
    w_unetpp: tuple[float, float]
    threshold: tuple[float, float]
    min_area: tuple[int, int]  # at the ensemble's img_size


def score(logits: dict[str, np.ndarray], masks: np.ndarray, w_unetpp: float, threshold: float, min_area: int) -> float:
    """Mean per-image Dice of one trial. sigmoid(x) > t exactly when x > log(t / (1 - t)), so the
    blend is thresholded in logit space and no trial pays for a sigmoid over the whole set."""
    blended = pp.blend_logits(logits["unetpp"], logits["deeplab"], w_unetpp)
    return pp.mean_dice(blended, masks, float(np.log(threshold / (1.0 - threshold))), min_area)


def make_objective(logits: dict[str, np.ndarray], masks: np.ndarray, space: SearchSpace):
    def objective(trial: optuna.Trial) -> float:
        w = trial.suggest_float("w_unetpp", *space.w_unetpp)
        threshold = trial.suggest_float("threshold", *space.threshold)
        min_area = trial.suggest_int("min_area", *space.min_area)
        trial.set_user_attr("w_deeplab", 1.0 - w)
        return score(logits, masks, w, threshold, min_area)
    return objective


def baselines(logits: dict[str, np.ndarray], masks: np.ndarray) -> dict[str, float]:
    """Single models and the 50/50 blend, at the seed's 0.4 threshold without cleaning."""
    return {"baseline_unetpp_dice": score(logits, masks, 1.0, 0.4, 0),
            "baseline_deeplab_dice": score(logits, masks, 0.0, 0.4, 0),
            "baseline_blend50_dice": score(logits, masks, 0.5, 0.4, 0)}


def enqueue_seed_default(study: optuna.Study, space: SearchSpace) -> None:
    """A new study starts from the seed's default (50/50 at threshold 0.4, smallest min-area) so
    the search can only improve on it."""
    if not study.trials:
        study.enqueue_trial({"w_unetpp": 0.5, "threshold": min(max(0.4, space.threshold[0]), space.threshold[1]),
                             "min_area": space.min_area[0]})


def log_study_plots(study: optuna.Study) -> None:
    from optuna.visualization.matplotlib import (
        plot_optimization_history,
        plot_param_importances,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tracking.log_figure(plot_optimization_history(study).figure, "plots/optimization_history.png")
        try:
            tracking.log_figure(plot_param_importances(study).figure, "plots/param_importances.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few or identical trials
            print(f"note: no param-importance plot ({exc})")
