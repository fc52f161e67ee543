"""Training: dataset, criterion, evaluate, train_one_epoch, fit; `run_train` is the MLflow edge.

Reads top to bottom like torchvision's segmentation reference. `fit` knows nothing of MLflow:
it reports each epoch to a callback, which `run_train` turns into metrics and artifacts.
"""

from __future__ import annotations

import copy
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from potholes import augment
from potholes.config import TrainConfig
from potholes.data import read_image, read_mask
from potholes.models import build_model


# ----------------------------------------------------------------------------- data
def load_split(root: Path, manifest: pd.DataFrame, split: str, img_size: int, progress: bool = True):
    """Decode and resize one split once, into uint8 arrays (N,H,W,3) and (N,H,W).

    Decoding a JPEG costs more than all the augmentations at model size, and the split is
    small, so each image is decoded once instead of once per epoch.
    """
    from tqdm.auto import tqdm

    rows = manifest[manifest["split"] == split]
    images = np.empty((len(rows), img_size, img_size, 3), np.uint8)
    masks = np.empty((len(rows), img_size, img_size), np.uint8)
    for i, row in enumerate(tqdm(rows.itertuples(), total=len(rows), desc=f"loading {split}", disable=not progress)):
        images[i], masks[i] = augment.resize_pair(read_image(root / row.image_path), read_mask(root / row.mask_path), img_size)
    return images, masks


class SegmentationDataset(Dataset):
    """Cached uint8 arrays in, normalised tensors out.

    With a transform, items are fetched by ``(epoch, index)`` keys from `EpochSampler`, and the
    transform is re-seeded from (seed, epoch, index) before each sample: augmentations then
    depend on nothing else (worker count, which worker, where a resumed run restarted).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, mean, std, transform=None, seed: int = 0):
        self.images, self.masks, self.mean, self.std = images, masks, mean, std
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            augment.seed_transform(self.transform, augment.sample_seed(self.seed, epoch, index))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return augment.to_tensor(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (a permutation from seed + epoch, this rank's share of it) that
    yields ``(epoch, index)`` keys, so each worker knows which epoch a sample belongs to.

    Order and augmentations are functions of (seed, epoch): a resumed run replays epoch k
    exactly as a straight run would. ``set_epoch`` must be called before each epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        return ((self.epoch, index) for index in super().__iter__())


def _worker_init(_: int) -> None:
    from torch.utils.data import get_worker_info

    # One OpenCV thread per worker so augmentation does not fight the training step for the cores.
    cv2.setNumThreads(1)
    # Spawned workers would otherwise all start from the same global random state. Each gets
    # torch's per-worker seed (drawn from the loader's seeded generator) for any global draw;
    # the augmentation pipeline is re-seeded per sample in SegmentationDataset.
    seed_everything(get_worker_info().seed % 2**32)


def make_loader(dataset: Dataset, config: TrainConfig, train: bool, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training batches come from worker processes; validation (no augmentation) needs none.

    Workers are spawned, not forked: OpenCV's thread pool, used by the parent while decoding,
    deadlocks in a forked child. Persistent workers pay the start-up once per run.
    """
    workers = config.num_workers if train else 0
    sampler = EpochSampler(dataset, config.seed, rank, world_size) if train else None
    return DataLoader(
        dataset,
        batch_size=config.batch_size if train else config.batch_size * 2,
        sampler=sampler,
        drop_last=train and len(dataset) // world_size > config.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        multiprocessing_context="spawn" if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(config.seed),
    )


# ----------------------------------------------------------------------------- loss and metric
def criterion(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dice + 0.6 x Focal(gamma=2) on logits, as the seed."""
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

    dice = DiceLoss(mode="binary", from_logits=True)
    focal = FocalLoss(mode="binary", gamma=config.focal_gamma)
    return lambda logits, target: dice(logits, target) + config.focal_weight * focal(logits, target)


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of each image of binary (N,1,H,W) tensors; an empty prediction of an empty mask scores 1."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


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
    model.eval()
    losses, dices, seen = 0.0, [], 0
    for images, masks in loader:
        images, masks = images.to(device).contiguous(memory_format=torch.channels_last), masks.to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(images)
        losses += float(loss_fn(logits.float(), masks)) * len(images)
        dices.append(dice_per_image(torch.sigmoid(logits.float()) > threshold, masks))
        seen += len(images)
    return {"val_loss": losses / max(seen, 1), "val_dice": float(torch.cat(dices).mean()) if dices else 0.0}


def train_one_epoch(model, loader, optimizer, loss_fn, device, scaler=None, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc="train", leave=False, disable=not progress)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), masks.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = loss_fn(model(images).float(), masks)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(seen, 1), "train_images_per_second": seen / seconds if seconds else 0.0}


@dataclass
class TrainState:
    """Everything `fit` needs to continue where it stopped."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # last finished epoch
    best_dice: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)

    def resume_payload(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best_dice": self.best_dice,
                "best_epoch": self.best_epoch, "history": self.history}

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.epoch, self.best_dice = int(payload["epoch"]), float(payload["best_dice"])
        self.best_epoch, self.history = int(payload["best_epoch"]), list(payload["history"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_state(config: TrainConfig, device) -> TrainState:
    seed_everything(config.seed)
    model = build_model(config.model, config.encoder, config.encoder_weights)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return TrainState(model, optimizer, scheduler)


EpochCallback = Callable[[TrainState, dict, bool], None]


def fit(config: TrainConfig, state: TrainState, train_loader, val_loader, device,
        on_epoch_end: EpochCallback | None = None, progress: bool = True) -> TrainState:
    """Train from ``state.epoch + 1`` to ``config.epochs``, keeping the best weights by val Dice."""
    loss_fn = criterion(config)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    for epoch in range(state.epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        # Everything random in epoch k is a function of (seed, k): data order, augmentations and
        # the model's own draws (DeepLabV3+'s dropout), so a resumed run replays it exactly.
        train_loader.sampler.set_epoch(epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        lr = state.optimizer.param_groups[0]["lr"]
        metrics = train_one_epoch(state.model, train_loader, state.optimizer, loss_fn, device, scaler, progress)
        metrics |= evaluate(state.model, val_loader, loss_fn, config.val_threshold, device)
        state.scheduler.step()
        metrics |= {"epoch": epoch, "lr": lr, "epoch_seconds": time.perf_counter() - start}
        state.epoch = epoch
        state.history.append(metrics)
        improved = metrics["val_dice"] > state.best_dice
        if improved:
            state.best_dice, state.best_epoch = metrics["val_dice"], epoch
            state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in state.model.state_dict().items()})
        print(f"{config.model} | epoch {epoch:02d}/{config.epochs} | train_loss {metrics['train_loss']:.4f} "
              f"| val_loss {metrics['val_loss']:.4f} | val_dice {metrics['val_dice']:.4f}"
              f"{' (best)' if improved else ''} | {metrics['epoch_seconds']:.0f}s", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(state, metrics, improved)
    return state


# ----------------------------------------------------------------------------- MLflow edge
def _log_epoch(config: TrainConfig):
    """The callback that makes each epoch visible in MLflow the moment it ends."""
    import mlflow

    from potholes.models import save_checkpoint

    def callback(state: TrainState, metrics: dict, improved: bool) -> None:
        epoch = metrics["epoch"]
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            if improved:  # the best checkpoint is safe on the store as soon as it exists
                folder = save_checkpoint(state.best_state, config.model_config() | {"epoch": epoch, "val_dice": metrics["val_dice"]},
                                         Path(tmp) / "best")
                mlflow.log_artifacts(str(folder), "checkpoints/best")
                mlflow.log_metrics({"best_val_dice": metrics["val_dice"], "best_epoch": epoch}, step=epoch)
            last = Path(tmp) / "last.pt"
            torch.save(state.resume_payload(), last)
            mlflow.log_artifact(str(last), "checkpoints/last")

    return callback


def _validation_overlays(state: TrainState, images: np.ndarray, masks: np.ndarray, config: TrainConfig, device, count: int = 8):
    from potholes import plots

    model = copy.deepcopy(state.model)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    take = min(count, len(images))
    with torch.inference_mode():
        x = augment.normalize_batch(images[:take], config.mean, config.std).to(device)
        pred = (torch.sigmoid(model(x)) > config.val_threshold).cpu().numpy()[:, 0]
    panels = []
    for i in range(take):
        truth = plots.overlay(images[i], masks[i], color=(0, 255, 0))
        panels.append((f"truth #{i}", truth))
        score = float(dice_per_image(torch.from_numpy(pred[i:i + 1, None]), torch.from_numpy(masks[i:i + 1, None])))
        panels.append((f"prediction #{i} dice {score:.2f}", plots.overlay(images[i], pred[i], color=(255, 0, 0))))
    return plots.overlay_grid(panels, columns=4)


def run_train(config: TrainConfig, data_dir: str, progress: bool = True) -> dict:
    """Train one model as an MLflow run; returns its run id and best validation Dice."""
    import mlflow

    from potholes import plots, tracking
    from potholes.data import build_manifest

    print("resolved config:", ", ".join(f"{k}={v}" for k, v in config.as_params().items()), flush=True)
    device = device_for_training(config.deterministic)
    state = init_state(config, device)  # fails here, before any run, when weights are unavailable
    prepared = build_manifest(data_dir, config.val_fraction, config.split_seed, progress=progress)
    root, manifest = prepared.layout.root, prepared.manifest
    train_images, train_masks = load_split(root, manifest, "train", config.img_size, progress)
    val_images, val_masks = load_split(root, manifest, "val", config.img_size, progress)
    train_loader = make_loader(SegmentationDataset(train_images, train_masks, config.mean, config.std,
                                                   augment.train_transform(config.seed), config.seed),
                               config, train=True)
    val_loader = make_loader(SegmentationDataset(val_images, val_masks, config.mean, config.std), config, train=False)

    run_id = None
    if config.resume:
        run_id = config.resume
        payload = _download_resume_payload(config.resume)
        _check_resumable(config, config.resume)
        state.restore(payload)
        print(f"resuming run {config.resume} after epoch {state.epoch}", flush=True)
        if os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` made a fresh run: point it at the real one
            launcher_run = os.environ.pop("MLFLOW_RUN_ID")
            mlflow.MlflowClient().set_tag(launcher_run, "potholes.continued_in", config.resume)

    with tracking.stage_run("train", run_name=f"train-{config.model}", tags={"model": config.model},
                            run_id=run_id, log_system_metrics=True) as run:
        if not config.resume:
            # Under `config.*`, so runs compare the same way however they were launched.
            mlflow.log_params({f"config.{k}": v for k, v in config.as_params().items()})
            tracking.log_params({"data_dir": data_dir, "device": device.type,
                                 "num_train": len(train_images), "num_val": len(val_images)})
            mlflow.log_metric("parameter_count", sum(p.numel() for p in state.model.parameters()))
            mlflow.set_tag("preset_reason", config.preset_reason)
        digest = tracking.log_manifest(manifest, root, context="training")
        fit(config, state, train_loader, val_loader, device, on_epoch_end=_log_epoch(config), progress=progress)
        tracking.log_figure(plots.training_curves(state.history), "plots/curves.png")
        tracking.log_figure(_validation_overlays(state, val_images, val_masks, config, device),
                            "plots/val_predictions.png")
        print(f"{config.model}: best val_dice {state.best_dice:.4f} at epoch {state.best_epoch}", flush=True)
        return {"run_id": run.info.run_id, "best_val_dice": state.best_dice, "best_epoch": state.best_epoch,
                "dataset_digest": digest}


def _download_resume_payload(run_id: str) -> dict:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last/last.pt", dst_path=tmp)
        except Exception as exc:
            raise ValueError(f"resume: run '{run_id}' has no checkpoints/last/last.pt to resume from ({exc})") from exc
        return torch.load(path, map_location="cpu", weights_only=True)


def _check_resumable(config: TrainConfig, run_id: str) -> None:
    import mlflow

    params = mlflow.MlflowClient().get_run(run_id).data.params
    for key in ("model", "encoder", "img_size", "epochs"):
        logged = params.get(f"config.{key}")
        if logged is not None and logged != str(getattr(config, key)):
            raise ValueError(f"resume: run '{run_id}' was trained with {key}={logged}, "
                             f"not {getattr(config, key)}; pass the same {key} (or preset) to resume it")
