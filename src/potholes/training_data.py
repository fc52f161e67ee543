"""Training data: each split decoded once into arrays, the augmenting dataset, the epoch-keyed
sampler and the loaders. Everything random here is a function of (seed, epoch, index)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from potholes import augment
from potholes.config import TrainConfig
from potholes.data import read_image, read_mask


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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

    With several ranks, training takes this rank's share of each epoch's permutation; validation
    takes every ``world_size``-th of the batches one process would make (no padding, no image
    twice, each image in the same batch as in one process, so the summed metrics are the same).
    """
    workers = config.num_workers if train else 0
    if train:
        batching = dict(batch_size=config.batch_size, sampler=EpochSampler(dataset, config.seed, rank, world_size),
                        drop_last=len(dataset) // world_size > config.batch_size)
    elif world_size > 1:
        size, n = config.batch_size * 2, len(dataset)
        batching = dict(batch_sampler=[list(range(start, min(start + size, n)))
                                       for start in range(rank * size, n, world_size * size)])
    else:
        batching = dict(batch_size=config.batch_size * 2)
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        multiprocessing_context="spawn" if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(config.seed),
    )
