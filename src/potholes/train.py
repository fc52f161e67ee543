"""Training: evaluate, train_round, fit; `run_train` is the MLflow edge (losses: `potholes.losses`).

Reads top to bottom like torchvision's segmentation reference. `fit` knows nothing of MLflow:
it reports each round (`potholes.budget`: a share of the step budget, then validation) to a
callback, which `run_train` turns into metrics and artifacts.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from potholes import augment, distributed
from potholes.budget import Plan, plan_training, warmup_cosine
from potholes.config import TrainConfig
from potholes.errors import ConfigError
from potholes.losses import criterion, dice_per_image
from potholes.models import build_model, freeze_encoder
from potholes.training_data import SegmentationDataset, load_split, make_loader, seed_everything


# ----------------------------------------------------------------------------- loops
def device_for_training(deterministic: bool = False) -> torch.device:
    """CUDA when present. On CPU the same seed already gives the same run; on CUDA that needs
    ``deterministic``: deterministic kernels (error on ops that have none), no cuDNN autotuner,
    and cuBLAS' fixed workspace; it costs speed, so it is off by default there."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
    return device


@torch.inference_mode()
def evaluate(model, loader, loss_fn, threshold: float, device) -> dict:
    """Mean loss and Dice over every image of ``loader``, and of the other ranks' shards under DDP."""
    model.eval()
    losses, dices, seen = 0.0, 0.0, 0
    for images, masks in loader:
        images, masks = images.to(device).contiguous(memory_format=torch.channels_last), masks.to(device)
        logits = model(images)  # fp32 whatever the training precision: what tune and predict will see
        losses += float(loss_fn(logits.float(), masks)) * len(images)
        dices += float(dice_per_image(torch.sigmoid(logits.float()) > threshold, masks).double().sum())
        seen += len(images)
    losses, dices, seen = distributed.all_sum(losses, dices, seen)
    return {"val_loss": losses / max(seen, 1), "val_dice": dices / seen if seen else 0.0}


def autocast(device, precision: str):
    """The forward pass's mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA); fp32 = off."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_round(model, loader, optimizer, scheduler, loss_fn, device, precision: str = "fp32", scaler=None,
                ema=None, progress: bool = True) -> dict:
    """One round's steps; the learning rate and the weight average follow each optimizer step."""
    from tqdm.auto import tqdm

    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc="train", leave=False, disable=not progress)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), masks.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn(model(images).float(), masks)  # the loss itself in fp32
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    total, seen = distributed.all_sum(total, seen)  # the round's mean over all ranks' images
    distributed.sync_buffers(model)
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(seen, 1), "train_images_per_second": seen / seconds if seconds else 0.0}


@dataclass
class TrainState:
    """Everything `fit` needs to continue where it stopped."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: Plan
    ema: torch.optim.swa_utils.AveragedModel | None = None  # the weights validated and kept, when on
    round: int = 0  # last finished round
    best_dice: float = -1.0
    best_step: int = 0
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    parallel: torch.nn.Module | None = None  # the DDP wrapper of ``model`` that trains under torchrun

    @property
    def kept(self) -> torch.nn.Module:
        """The network that is validated and saved: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def resume_payload(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
                "round": self.round, "best_dice": self.best_dice, "best_step": self.best_step, "history": self.history}

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        self.round, self.best_dice = int(payload["round"]), float(payload["best_dice"])
        self.best_step, self.history = int(payload["best_step"]), list(payload["history"])


def init_state(config: TrainConfig, plan: Plan, device) -> TrainState:
    seed_everything(config.seed)
    model = build_model(config.model, config.encoder, config.encoder_weights)
    if config.freeze_stride:
        freeze_encoder(model, config.freeze_stride)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = None
    if config.ema > 0:  # BatchNorm statistics are averaged along with the weights (use_buffers)
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
    return TrainState(model, optimizer, warmup_cosine(optimizer, plan), plan, ema)


RoundCallback = Callable[[TrainState, dict, bool], None]


def fit(config: TrainConfig, state: TrainState, train_loader, val_loader, device,
        on_round_end: RoundCallback | None = None, progress: bool = True) -> TrainState:
    """Train from round ``state.round + 1`` to the plan's last, keeping the best weights by val Dice."""
    loss_fn = criterion(config)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None  # bf16 needs no loss scaling
    plan = state.plan
    for round_ in range(state.round + 1, plan.rounds + 1):
        start = time.perf_counter()
        # Everything random in round r is a function of (seed, r): data order, augmentations and
        # the model's own draws (DeepLabV3+'s dropout), so a resumed run replays it exactly.
        train_loader.sampler.set_round(round_)
        torch.manual_seed(config.seed * 1_000_003 + round_ + 1_000_000_007 * distributed.rank())
        trained = state.model if state.parallel is None else state.parallel
        metrics = train_round(trained, train_loader, state.optimizer, state.scheduler, loss_fn, device,
                              config.precision, scaler, state.ema, progress)
        metrics |= evaluate(state.kept, val_loader, loss_fn, config.val_threshold, device)
        step = round_ * plan.steps_per_round
        metrics |= {"round": round_, "step": step, "lr": state.optimizer.param_groups[0]["lr"],
                    "passes": step * plan.images_per_step / plan.train_images,
                    "round_seconds": time.perf_counter() - start}
        state.round = round_
        state.history.append(metrics)
        improved = metrics["val_dice"] > state.best_dice
        if improved:
            state.best_dice, state.best_step = metrics["val_dice"], step
            state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in state.kept.state_dict().items()})
        if distributed.is_main():
            print(f"{config.model} | round {round_:02d}/{plan.rounds} | step {step}/{plan.total_steps} "
                  f"| train_loss {metrics['train_loss']:.4f} | val_loss {metrics['val_loss']:.4f} "
                  f"| val_dice {metrics['val_dice']:.4f}{' (best)' if improved else ''} "
                  f"| {metrics['round_seconds']:.0f}s", flush=True)
        if on_round_end is not None:
            on_round_end(state, metrics, improved)
    return state


# ----------------------------------------------------------------------------- MLflow edge
def _log_round(config: TrainConfig, model_id: str, logged_steps: set[int]):
    """The callback that makes each round visible in MLflow the moment it ends, at the optimizer
    step where it ends (so runs of different lengths and datasets line up in the UI).

    Order matters for ``kill -9``: the best checkpoint, then the metrics, then the resume point.
    A kill between them makes the resumed run redo that round, identically; ``logged_steps``
    (steps already on the run) keeps it from logging the same step twice.
    """
    import mlflow

    from potholes.models import save_checkpoint

    def callback(state: TrainState, metrics: dict, improved: bool) -> None:
        step = metrics["step"]
        with tempfile.TemporaryDirectory() as tmp:
            if improved:  # the best checkpoint is safe on the store as soon as it exists
                folder = save_checkpoint(state.best_state, config.model_config() | {"step": step, "val_dice": metrics["val_dice"]},
                                         Path(tmp) / "best")
                mlflow.log_artifacts(str(folder), "checkpoints/best")
                mlflow.MlflowClient().log_model_artifacts(model_id, str(folder))
            if step not in logged_steps:
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=step, model_id=model_id)
                if improved:
                    mlflow.log_metrics({"best_val_dice": metrics["val_dice"], "best_step": step}, step=step,
                                       model_id=model_id)
            last = Path(tmp) / "last.pt"
            torch.save(state.resume_payload(), last)
            mlflow.log_artifact(str(last), "checkpoints/last")

    return callback


def run_train(config: TrainConfig, data_dir: str, progress: bool = True) -> dict:
    """Train one model as an MLflow run; returns its run id and best validation Dice.

    Under torchrun every rank calls this; rank 0 alone touches MLflow (`potholes.distributed`).
    """
    import mlflow

    from potholes import plots, resume, tracking
    from potholes.data import build_manifest

    if config.world_size != distributed.size():
        raise ConfigError(f"world_size={config.world_size}, but this process is one of {distributed.size()}")
    main = distributed.is_main()
    progress = progress and main
    if main:
        print("resolved config:", ", ".join(f"{k}={v}" for k, v in config.as_params().items()), flush=True)
    device = device_for_training(config.deterministic)
    prepared = build_manifest(data_dir, config.val_fraction, config.split_seed, progress=progress)
    root, manifest = prepared.layout.root, prepared.manifest
    plan = plan_training(train_images=int((manifest["split"] == "train").sum()), batch_size=config.batch_size,
                         world_size=config.world_size, steps=config.steps, epochs=config.epochs,
                         rounds=config.rounds, warmup=config.warmup, val_images=int((manifest["split"] == "val").sum()))
    if main:
        print(f"{config.model}: {plan.describe()}", flush=True)
    state = init_state(config, plan, device)  # fails here, before any run, when weights are unavailable
    train_images, train_masks = load_split(root, manifest, "train", config.img_size, progress)
    val_images, val_masks = load_split(root, manifest, "val", config.img_size, progress)
    train_loader = make_loader(SegmentationDataset(train_images, train_masks, config.mean, config.std,
                                                   augment.train_transform(config.seed, config.crop_size),
                                                   config.seed),
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
                params={k: str(v) for k, v in config.model_config().items()}, tags={"potholes.stage": "train"}).model_id
            mlflow.set_tags({resume.MODEL_TAG: model_id, "preset_reason": config.preset_reason})
            tracking.log_params(config.as_params() | {"data_dir": data_dir, "device": device.type,
                                                      "num_train": len(train_images), "num_val": len(val_images)})
            mlflow.log_params({f"config.plan.{k}": v for k, v in plan.as_params().items()})
            mlflow.log_metric("parameter_count", sum(p.numel() for p in state.model.parameters()))
        digest = tracking.log_manifest(manifest, root, context="training")
        fit(config, state, train_loader, val_loader, device, on_round_end=_log_round(config, model_id, logged_steps),
            progress=progress)
        tracking.log_figure(plots.training_curves(state.history), "plots/curves.png")
        best = copy.deepcopy(state.kept)
        if state.best_state is not None:
            best.load_state_dict(state.best_state)
        tracking.log_figure(plots.validation_overlays(best, val_images, val_masks, config.mean, config.std,
                                                      config.val_threshold, device), "plots/val_predictions.png")
        mlflow.finalize_logged_model(model_id, "READY")
        print(f"{config.model}: best val_dice {state.best_dice:.4f} at step {state.best_step}", flush=True)
        return {"run_id": run.info.run_id, "best_val_dice": state.best_dice, "best_step": state.best_step,
                "dataset_digest": digest, "model_id": model_id}
