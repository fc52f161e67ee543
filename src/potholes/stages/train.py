"""`train`: one model as one MLflow run. The loop (`potholes.training.loop`) knows nothing of
MLflow; this stage turns each round it reports into metrics, checkpoints and a resume point."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch

from potholes.errors import ConfigError
from potholes.reporting import previews
from potholes.training import augment, cpu_affinity, distributed, scale
from potholes.training.config import TrainConfig
from potholes.training.copy_paste import PatchBank
from potholes.training.loader import SegmentationDataset, make_loader
from potholes.training.loop import TrainState, device_for_training, fit, init_state
from potholes.training.schedule import plan_training


def _log_round(config: TrainConfig, model_id: str, logged_steps: set[int], dataset, preview):
    """The callback that makes each round visible in MLflow the moment it ends, at the optimizer
    step where it ends (so runs of different lengths and datasets line up in the UI): metrics
    linked to the run's LoggedModel and to the manifest dataset, the preview images by step, and
    the best checkpoint and resume point as artifacts.

    Order matters for ``kill -9``: the best checkpoint, then the metrics, then the resume point.
    A kill between them makes the resumed run redo that round, identically; ``logged_steps``
    (steps already on the run) keeps it from logging the same step twice.
    """
    import mlflow

    from potholes.inference.networks import save_checkpoint
    from potholes.tracking import runs as tracking

    keys, images, masks, device = preview

    def show(state: TrainState, step: int) -> None:
        """The kept network as validation scores it (no TTA), on the same images every round."""
        predicted = previews.predict(state.kept, images, config.mean, config.std, config.val_threshold,
                                     device) if keys else []
        for key, image, truth, mask in zip(keys, images, masks, predicted):
            mlflow.log_image(previews.outline(image, truth, mask), key=key, step=step, synchronous=True)

    def callback(state: TrainState, metrics: dict, improved: bool) -> None:
        step = metrics["step"]
        with tempfile.TemporaryDirectory() as tmp:
            if improved:  # the best checkpoint is safe on the store as soon as it exists
                folder = save_checkpoint(state.best_state, config.model_config() | {"step": step, "val_dice": metrics["val_dice"]},
                                         Path(tmp) / "best")
                mlflow.log_artifacts(str(folder), "checkpoints/best")
            if step not in logged_steps:
                tracking.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step, model_id, dataset)
                if improved:
                    tracking.log_metrics({"best_val_dice": metrics["val_dice"], "best_step": step}, step, model_id,
                                         dataset)
                show(state, step)
            last = Path(tmp) / "last.pt"
            torch.save(state.resume_payload(), last)
            mlflow.log_artifact(str(last), "checkpoints/last")

    callback.show = show
    return callback


def _log_member_model(config: TrainConfig, state: TrainState, model_id: str, example_image: Path) -> None:
    """The best weights as the run's LoggedModel: the served pyfunc with this one network, so
    ``mlflow.pyfunc.load_model("models:/<model_id>")`` takes it alone."""
    from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
    from potholes.inference.networks import save_checkpoint
    from potholes.packaging.logged_model import log_pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_checkpoint(state.best_state, config.model_config() | {"step": state.best_step,
                                                                           "val_dice": state.best_dice},
                                 Path(tmp) / config.model)
        predictor = EnsemblePredictor.from_checkpoints(
            {config.model: folder}, EnsembleConfig(threshold=config.val_threshold, img_size=config.img_size,
                                                   keep_aspect=config.keep_aspect))
        log_pyfunc(predictor, {config.model: folder}, example_image, config.model, model_id=model_id,
                   step=state.best_step)


def run_train(config: TrainConfig, data_dir: str, progress: bool = True) -> dict:
    """Train one model as an MLflow run; returns its run id and best validation Dice.

    Under torchrun every rank calls this; rank 0 alone touches MLflow (`potholes.distributed`).
    """
    import mlflow

    from potholes.reporting import plots
    from potholes.stages.stage_data import open_stage_data
    from potholes.tracking import runs as tracking
    from potholes.training import resume

    if config.world_size != distributed.size():
        raise ConfigError(f"world_size={config.world_size}, but this process is one of {distributed.size()}")
    main = distributed.is_main()
    progress = progress and main
    data = open_stage_data(data_dir, config.val_fraction, config.split_seed,
                           None if config.scale_from_data else config.img_size, progress, keep_aspect=config.keep_aspect)
    chosen = None
    if config.scale_from_data:  # every rank chooses the same from the same manifest
        chosen = scale.choose(data.manifest, config.img_size, config.crop_size, config.keep_aspect)
        config = dataclasses.replace(config, img_size=chosen.img_size, crop_size=chosen.crop_size)
        data.img_size = config.img_size
    if main:
        print("resolved config:", ", ".join(f"{k}={v}" for k, v in config.as_params().items()), flush=True)
    device = device_for_training(config.deterministic)
    torch.set_num_threads(config.threads)  # fixed for the run: on CPU the results depend on it
    root, manifest = data.root, data.manifest
    if config.crop_size > min(data.hw):
        raise ConfigError(f"crop_size {config.crop_size} does not fit the {data.hw[1]}x{data.hw[0]} (width x height) "
                          f"the photos are seen at with img_size {config.img_size}; use at most {min(data.hw)} or 0")
    plan = plan_training(train_images=data.count("train"), batch_size=config.batch_size,
                         world_size=config.world_size, steps=config.steps, epochs=config.epochs,
                         rounds=config.rounds, warmup=config.warmup, val_images=data.count("val"))
    if main:
        print(f"{config.model}: {plan.describe()}; photos seen at {data.hw[1]}x{data.hw[0]} (width x height)"
              + (f"; {chosen.reason}" if chosen else ""), flush=True)
    state = init_state(config, plan, device)  # fails here, before any run, when weights are unavailable
    train_images, train_masks = data.split("train")
    val_images, val_masks = data.split("val")
    patches = PatchBank(train_images, train_masks, (config.crop_size,) * 2 if config.crop_size else data.hw) \
        if config.copy_paste else None
    transform = augment.train_transform(config.seed, config.crop_size, config.pothole_crops, config.copy_paste)
    train_loader = make_loader(SegmentationDataset(train_images, train_masks, config.mean, config.std, transform,
                                                   config.seed, patches),
                               config, train=True, rank=distributed.rank(), world_size=config.world_size,
                               steps_per_round=plan.steps_per_round)
    val_loader = make_loader(SegmentationDataset(val_images, val_masks, config.mean, config.std), config, train=False,
                             rank=distributed.rank(), world_size=config.world_size)

    run_id, logged_steps = None, set()
    if config.resume:
        run_id = config.resume
        digest = tracking.manifest_dataset(manifest, root).digest  # the data it trained on must be this data
        point = distributed.from_main(lambda: resume.load(config, run_id, digest))  # every rank, the same last.pt
        state.restore(point.payload)
        state.best_state, logged_steps = point.best_state, point.logged_steps
        if main:
            print(f"resuming run {run_id} after round {state.round} (step {state.round * plan.steps_per_round})",
                  flush=True)
        if main and os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` made a fresh run: point it at the real one
            launcher_run = os.environ.pop("MLFLOW_RUN_ID")
            mlflow.MlflowClient().set_tag(launcher_run, "potholes.continued_in", run_id)
    state.parallel = distributed.wrap(state.model, device)
    if not main:  # the other ranks train alongside rank 0 and leave MLflow to it
        with cpu_affinity.pinned(config.threads):
            fit(config, state, train_loader, val_loader, device, progress=False)
        return {"run_id": run_id, "best_val_dice": state.best_dice, "best_step": state.best_step}

    with tracking.stage_run("train", run_name=f"train-{config.model}", tags={"model": config.model},
                            run_id=run_id, log_system_metrics=True) as run:
        if config.resume:
            model_id = mlflow.MlflowClient().get_run(run_id).data.tags[resume.MODEL_TAG]
        else:
            # The run's best model as an MLflow 3 LoggedModel: its artifacts are the best checkpoint
            # and the epoch metrics are linked to it, so "Logged models" lists it with its Dice.
            model_id = mlflow.initialize_logged_model(
                name=f"{config.model}-{config.encoder.removeprefix('tu-')}", model_type="pothole-segmentation",
                params={k: str(v) for k, v in (config.as_params() | config.model_config()).items()},
                tags={"potholes.stage": "train", "model": config.model}).model_id
            mlflow.set_tags({resume.MODEL_TAG: model_id, "preset_reason": config.preset_reason})
            tracking.log_params(config.as_params() | {"data_dir": data_dir, "device": device.type,
                                                      "num_train": len(train_images), "num_val": len(val_images)})
            if data.manifest_run:
                mlflow.set_tag("potholes.manifest_from_run", data.manifest_run)
            mlflow.log_params({f"config.plan.{k}": v for k, v in plan.as_params().items()})
            mlflow.log_metric("parameter_count", sum(p.numel() for p in state.model.parameters()))
        dataset = tracking.log_manifest(manifest, root, context="training", key=data.key)
        val_rows = manifest[manifest["split"] == "val"].reset_index(drop=True)
        shown = previews.choose(val_rows)
        preview = ([previews.key("val", val_rows.loc[i, "image_path"]) for i in shown], val_images[shown],
                   val_masks[shown], device)
        on_round_end = _log_round(config, model_id, logged_steps, dataset, preview)
        if not config.resume:  # step 0, where the image grid opens: the network before its first step
            on_round_end.show(state, 0)
        with cpu_affinity.pinned(config.threads) as bound:  # a busy neighbour then costs its share of the CPU
            mlflow.set_tag("potholes.threads_bound", str(bound).lower())
            fit(config, state, train_loader, val_loader, device, on_round_end=on_round_end, progress=progress)
        tracking.log_figure(plots.training_curves(state.history), "plots/curves.png")
        _log_member_model(config, state, model_id, root / val_rows.loc[0, "image_path"])
        mlflow.finalize_logged_model(model_id, "READY")
        print(f"{config.model}: best val_dice {state.best_dice:.4f} at step {state.best_step}", flush=True)
        return {"run_id": run.info.run_id, "best_val_dice": state.best_dice, "best_step": state.best_step,
                "dataset_digest": dataset.digest, "model_id": model_id}
