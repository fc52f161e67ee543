"""`tune`: Optuna over ensemble weight, threshold and min-area, then register the best ensemble.

Both networks see the validation images exactly once (with the same flip TTA as predict);
every trial only blends cached logits, thresholds, removes small components and scores Dice.
The seed re-ran both networks over the validation set in every trial.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from potholes import postprocess as pp
from potholes import size_buckets
from potholes import study as shared
from potholes import tracking
from potholes.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor
from potholes.errors import ConfigError
from potholes.redaction import mask_url
from potholes.registry import log_and_register


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
    workers: int = 1  # local processes sharing the study (the others attach to this one's parent run)
    promote: bool = False  # make the registered version champion even when tuned on other data or worse
    extra_callbacks: tuple[Callable, ...] = field(default=(), compare=False)

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be >= 1, got {self.n_trials}")
        if not 0 < self.threshold_min <= self.threshold_max < 1:
            raise ConfigError(f"need 0 < threshold_min <= threshold_max < 1, got {self.threshold_min}..{self.threshold_max}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.workers > 1 and (self.storage or "").startswith("sqlite"):
            print("note: several workers on SQLite storage wait on its write lock; PostgreSQL or "
                  "JournalStorage suit them better", flush=True)
        if not 0 <= self.min_area_min <= self.min_area_max:
            raise ConfigError(f"need 0 <= min_area_min <= min_area_max, got {self.min_area_min}..{self.min_area_max}")


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

    from potholes.resume import MODEL_TAG

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


def log_dice_by_size(logits: dict[str, np.ndarray], masks: np.ndarray, manifest, params: dict) -> None:
    """Validation Dice of the best trial by pothole size, and its per-image distribution."""
    blended = pp.blend_logits(logits["unetpp"], logits["deeplab"], params["w_unetpp"])
    t = params["threshold"]
    dice = pp.dice_per_image(blended, masks, float(np.log(t / (1.0 - t))), params["min_area"])
    fractions = manifest.loc[manifest["split"] == "val", "area_ratio"].to_numpy()
    mlflow.log_metrics(size_buckets.summarize(dice, fractions, "val"))
    tracking.log_figure(size_buckets.figure(dice, fractions, "validation Dice by pothole size (best trial)"),
                        "plots/val_dice_by_size.png")


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
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tracking.log_figure(plot_optimization_history(study).figure, "plots/optimization_history.png")
        try:
            tracking.log_figure(plot_param_importances(study).figure, "plots/param_importances.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few or identical trials
            print(f"note: no param-importance plot ({exc})")


# ----------------------------------------------------------------------------- the stage
def run_tune(data_dir: str, tune: TuneConfig = TuneConfig(), progress: bool = True) -> dict:
    from potholes.data import build_manifest
    from potholes.train import load_split

    tune.validate()
    prepared = build_manifest(data_dir, tune.val_fraction, tune.split_seed, progress=progress)
    digest = tracking.manifest_dataset(prepared.manifest, prepared.layout.root).digest
    runs = {"unetpp": tune.unetpp_run or latest_train_run("unetpp", digest),
            "deeplab": tune.deeplab_run or latest_train_run("deeplab", digest)}
    for name, run_id in runs.items():
        check_train_run(run_id, name, digest)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: download_best_checkpoint(run_id, Path(tmp) / name) for name, run_id in runs.items()}
        predictor = EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig())
        size = max(int(predictor.config.members[n]["img_size"]) for n in MEMBERS)
        predictor.config.img_size = size
        val_images, val_masks = load_split(prepared.layout.root, prepared.manifest, "val", size, progress)
        # The one expensive step: both networks over the validation set, once.
        logits = predictor.member_logits(list(val_images))
        space = SearchSpace(w_unetpp=(0.0, 1.0), threshold=(tune.threshold_min, tune.threshold_max),
                            min_area=min_area_range(tune, prepared.manifest, size))

        storage = tune.storage or default_storage()
        study_name = tune.study_name or f"ensemble-{runs['unetpp'][:8]}-{runs['deeplab'][:8]}-{digest}"
        study, created = shared.open_study(study_name, storage)
        found = shared.find_parent(study, created)
        # The owner samples with --seed (one process: the same trials every time); workers that
        # attach mix in their pid so they do not propose what the owner proposes.
        study.sampler = optuna.samplers.TPESampler(seed=tune.seed if found.owner else tune.seed + os.getpid())
        objective = make_objective(logits, val_masks, space)
        if not found.owner:
            print(f"attaching to study '{study_name}' (parent run {found.run_id})", flush=True)
            ran = shared.run_trials(study, objective, tune.n_trials,
                                    [lambda s, t: shared.log_trial(s, t, found.run_id), *tune.extra_callbacks])
            print(f"worker ran {ran} trial(s) of study '{study_name}'", flush=True)
            return {"run_id": found.run_id, "trials_run_now": ran, "owner": False}

        with tracking.stage_run("tune", run_name="tune", run_id=found.run_id) as parent:
            parent_id = parent.info.run_id
            shared.fail_stale_trials(study)
            enqueue_seed_default(study, space)
            if found.run_id is None:
                tracking.log_params({"data_dir": data_dir, "n_trials": tune.n_trials, "seed": tune.seed,
                                     "threshold_range": f"{tune.threshold_min}-{tune.threshold_max}",
                                     "min_area_range_at_img_size": f"{space.min_area[0]}-{space.min_area[1]}",
                                     "img_size": size, "storage": mask_url(storage), "study_name": study_name,
                                     "unetpp_run": runs["unetpp"], "deeplab_run": runs["deeplab"], "workers": tune.workers})
                tracking.log_manifest(prepared.manifest, prepared.layout.root, context="tuning")
                log_member_inputs(parent_id, runs)
            base = baselines(logits, val_masks)
            mlflow.log_metrics(base)
            # Trials finished before (an interrupted process, or an earlier tune of this study)
            # and not yet under this parent are logged now, so one parent shows the whole study.
            logged = shared.logged_trial_numbers(parent_id)
            for finished in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
                if finished.number not in logged:
                    shared.log_trial(study, finished, parent_id)
            # Published only now: workers waiting for it attach to a parent that is complete so far.
            study.set_user_attr(shared.PARENT_ATTR, parent_id)
            callbacks = [lambda s, t: shared.log_trial(s, t, parent_id), *tune.extra_callbacks]
            workers = shared.spawn_workers(data_dir, tune, storage, study_name, runs) if tune.workers > 1 else []
            ran = shared.run_trials(study, objective, tune.n_trials, callbacks)
            shared.wait_workers(workers)
            shared.wait_for_other_workers(study)
            ran += shared.run_trials(study, objective, tune.n_trials, callbacks)  # fill what a failed worker left

            best = study.best_trial
            complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            mlflow.log_metrics({"best_val_dice": best.value, "trials_run_now": ran, "trials_complete": len(complete),
                                **{f"best_{k}": float(v) for k, v in best.params.items()}})
            log_study_plots(study)
            log_dice_by_size(logits, val_masks, prepared.manifest, best.params)

            predictor.config.w_unetpp = float(best.params["w_unetpp"])
            predictor.config.threshold = float(best.params["threshold"])
            predictor.config.min_area = int(best.params["min_area"])
            example = prepared.layout.root / prepared.manifest[prepared.manifest["split"] == "val"].iloc[0]["image_path"]
            registered = log_and_register(predictor, dirs, example, tune.registered_model, best.value, base, digest, runs,
                                          force_champion=tune.promote)
            # Facts that stay true (an alias moves later; this version's promotion does not change).
            mlflow.set_tags({"registered_model": tune.registered_model, "registered_version": registered["version"],
                             "became_champion": str(registered["alias"] == "champion").lower()})
            print(f"tuned val Dice {best.value:.4f} (UNet++ {base['baseline_unetpp_dice']:.4f}, DeepLabV3+ "
                  f"{base['baseline_deeplab_dice']:.4f}, 50/50@0.4 {base['baseline_blend50_dice']:.4f}); "
                  f"params {best.params}", flush=True)
            alias = f"as @{registered['alias']}" if registered["alias"] else "without an alias"
            print(f"registered {tune.registered_model} version {registered['version']} {alias}", flush=True)
            return {"run_id": parent_id, "best_val_dice": best.value, "best_params": best.params,
                    "trials_run_now": ran, "owner": True, **base, **registered}
