"""`tune`: Optuna over ensemble weight, threshold and min-area, then register the best ensemble.

Both networks see the validation images exactly once (with the same flip TTA as predict);
every trial only blends cached logits, thresholds, removes small components and scores Dice
(`potholes.tuning.search`). The seed re-ran both networks over the validation set in every trial.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from potholes.inference.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor
from potholes.inference.geometry import keeps_aspect
from potholes.tracking import runs as tracking
from potholes.tracking.redaction import mask_url
from potholes.tuning import workers as shared
from potholes.tuning.best_trial import log_best_trial
from potholes.tuning.registry import log_and_register
from potholes.tuning.search import (
    SearchSpace,
    TuneConfig,
    baselines,
    check_train_run,
    choose_train_run,
    default_storage,
    download_best_checkpoint,
    enqueue_seed_default,
    log_member_inputs,
    log_study_plots,
    make_objective,
    min_area_range,
)


def run_tune(data_dir: str, tune: TuneConfig = TuneConfig(), progress: bool = True) -> dict:
    from potholes.stages.stage_data import open_stage_data

    started_at = time.time()
    tune.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # every trial is an MLflow run; no line per trial too
    # The model size comes from the members' checkpoints, which are found by the manifest's digest.
    data = open_stage_data(data_dir, tune.val_fraction, tune.split_seed, img_size=None, progress=progress)
    digest = tracking.manifest_dataset(data.manifest, data.root).digest
    runs = {"unetpp": choose_train_run("unetpp", tune.unetpp_run, digest),
            "deeplab": choose_train_run("deeplab", tune.deeplab_run, digest)}
    for name, run_id in runs.items():
        check_train_run(run_id, name, digest)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: download_best_checkpoint(run_id, Path(tmp) / name) for name, run_id in runs.items()}
        predictor = EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig())
        size = max(int(predictor.config.members[n]["img_size"]) for n in MEMBERS)
        # Photos keep their aspect when both members were trained so (older members squash).
        keep = all(keeps_aspect(predictor.config.members[n]) for n in MEMBERS)
        predictor.config.img_size, predictor.config.keep_aspect = size, keep
        data.img_size, data.keep_aspect = size, keep
        val_images, val_masks = data.split("val")
        # The one expensive step: both networks over the validation set, once.
        logits = predictor.member_logit_arrays(list(val_images))
        space = SearchSpace(w_unetpp=(0.0, 1.0), threshold=(tune.threshold_min, tune.threshold_max),
                            min_area=min_area_range(tune, data.manifest, size))

        storage = tune.storage or default_storage()
        study_name = tune.study_name or f"ensemble-{runs['unetpp'][:8]}-{runs['deeplab'][:8]}-{digest}"
        study, created = shared.open_study(study_name, storage)
        found = shared.find_parent(study, created, storage)
        if shared.finished_by_a_twin(study, found, tune.n_trials, started_at):
            print(f"study '{study_name}' was completed by another process (parent run {found.finished_parent}) "
                  "while this one started: nothing left to run or register", flush=True)
            return {"run_id": found.finished_parent, "trials_run_now": 0, "owner": False}
        # The owner samples with --seed (one process: the same trials every time), offset by the
        # trials the study holds so that a reopened study does not propose its first trials again;
        # workers that attach mix in their pid so they do not propose what the owner proposes.
        held = len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=tune.seed + held if found.owner else tune.seed + os.getpid())
        objective = make_objective(logits, val_masks, space)
        if not found.owner:
            print(f"attaching to study '{study_name}' (parent run {found.run_id})", flush=True)
            ran = shared.run_trials(study, objective, tune.n_trials,
                                    [lambda s, t: shared.log_trial(s, t, found.run_id), *tune.extra_callbacks])
            print(f"worker ran {ran} trial(s) of study '{study_name}'", flush=True)
            return {"run_id": found.run_id, "trials_run_now": ran, "owner": False}

        with tracking.stage_run("tune", run_name="tune", run_id=found.run_id, log_system_metrics=True) as parent:
            parent_id = parent.info.run_id
            heartbeats = shared.has_heartbeats(storage)
            shared.fail_stale_trials(study, heartbeats)
            enqueue_seed_default(study, space)
            if found.run_id is None:
                tracking.log_params({"data_dir": data_dir, "n_trials": tune.n_trials, "seed": tune.seed,
                                     "threshold_range": f"{tune.threshold_min}-{tune.threshold_max}",
                                     "min_area_range_at_img_size": f"{space.min_area[0]}-{space.min_area[1]}",
                                     "img_size": size, "storage": mask_url(storage), "study_name": study_name,
                                     "unetpp_run": runs["unetpp"], "deeplab_run": runs["deeplab"]})
                tracking.log_manifest(data.manifest, data.root, context="tuning", key=data.key)
                log_member_inputs(parent_id, runs)
            base = baselines(logits, val_masks)
            mlflow.log_metrics(base)
            # Trials finished before (an interrupted process, or an earlier tune of this study)
            # and not yet under this parent are logged now, so one parent shows the whole study.
            shared.log_missing_trials(study, parent_id)
            # Published only now: workers waiting for it attach to a parent that is complete so far.
            study.set_user_attr(shared.PARENT_ATTR, parent_id)
            callbacks = [lambda s, t: shared.log_trial(s, t, parent_id), *tune.extra_callbacks]
            ran = shared.run_trials(study, objective, tune.n_trials, callbacks)
            shared.wait_for_other_workers(study, heartbeats)  # processes on other hosts, or attached by hand
            # Fill what a failed worker left (its stale trials are FAIL now and do not count).
            ran += shared.run_trials(study, objective, tune.n_trials, callbacks)

            best = study.best_trial
            complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            mlflow.log_metrics({"best_val_dice": best.value, "trials_run_now": ran, "trials_complete": len(complete),
                                **{f"best_{k}": float(v) for k, v in best.params.items()}})
            log_study_plots(study)
            log_best_trial(logits, val_images, val_masks, data.manifest, best.params, best.number)

            predictor.config.w_unetpp = float(best.params["w_unetpp"])
            predictor.config.threshold = float(best.params["threshold"])
            predictor.config.min_area = int(best.params["min_area"])
            example = data.root / data.manifest[data.manifest["split"] == "val"].iloc[0]["image_path"]
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
