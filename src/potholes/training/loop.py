"""Training: evaluate, train_round, fit (the stage around it: `potholes.stages.train`).

Reads top to bottom like torchvision's segmentation reference. `fit` knows nothing of MLflow:
it reports each round (`potholes.training.schedule`: a share of the step budget, then
validation) to a callback, which the train stage turns into metrics and artifacts.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from potholes.training import distributed
from potholes.training.config import TrainConfig
from potholes.training.loader import (
    seed_everything,
)
from potholes.training.losses import criterion, dice_per_image
from potholes.training.models import build_model, freeze_encoder
from potholes.training.schedule import Plan, warmup_cosine


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
