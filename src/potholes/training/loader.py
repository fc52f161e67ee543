"""Training data: each split decoded once into arrays, the augmenting dataset, the epoch-keyed
sampler and the loaders. Everything random here is a function of (seed, epoch, index)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from potholes.data.dataset import read_image, read_mask
from potholes.inference.geometry import canvas_hw, fit_pair
from potholes.training import augment, cpu_affinity
from potholes.training.config import TrainConfig
from potholes.training.copy_paste import PatchBank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_hw(manifest: pd.DataFrame, img_size: int, keep_aspect: bool = True) -> tuple[int, int]:
    """The (height, width) every split of this manifest is cached at (`geometry.canvas_hw`)."""
    return canvas_hw(zip(manifest["height"], manifest["width"]), img_size, keep_aspect)


def load_split(root: Path, manifest: pd.DataFrame, split: str, img_size: int, keep_aspect: bool = True,
               progress: bool = True):
    """Decode and resize one split once, into uint8 arrays (N,H,W,3) and (N,H,W) at `split_hw`.

    Decoding a JPEG costs more than all the augmentations at model size, and the split is
    small, so each image is decoded once instead of once per epoch.
    """
    from tqdm.auto import tqdm

    rows = manifest[manifest["split"] == split]
    hw = split_hw(manifest, img_size, keep_aspect)
    images = np.empty((len(rows), *hw, 3), np.uint8)
    masks = np.empty((len(rows), *hw), np.uint8)
    for i, row in enumerate(tqdm(rows.itertuples(), total=len(rows), desc=f"loading {split}", disable=not progress)):
        images[i], masks[i] = fit_pair(read_image(root / row.image_path), read_mask(root / row.mask_path), hw,
                                       keep_aspect)
    return images, masks


class SegmentationDataset(Dataset):
    """Cached uint8 arrays in, normalised tensors out.

    With a transform, items are fetched by ``(pass, index)`` keys from `StepSampler`, and the
    transform is re-seeded from (seed, pass, index) before each sample: augmentations then
    depend on nothing else (worker count, which worker, where a resumed run restarted).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, mean, std, transform=None, seed: int = 0,
                 patches: PatchBank | None = None):
        self.images, self.masks, self.mean, self.std = images, masks, mean, std
        self.transform, self.seed, self.patches = transform, seed, patches

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        pass_, index = key if isinstance(key, tuple) else (0, key)
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            augment.seed_transform(self.transform, augment.sample_seed(self.seed, pass_, index))
            pasted = {}
            if self.patches is not None:  # OverlayElements writes into the mask: never into the cache's
                mask, pasted = mask.copy(), {augment.PASTE_KEY: self.patches.draw(self.seed, pass_, index)}
            out = self.transform(image=image, mask=mask, **pasted)
            image, mask = out["image"], out["mask"]
        return augment.to_tensor(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


class StepSampler(Sampler):
    """The training sample stream of one round, as ``(pass, index)`` keys.

    The stream is one shuffled permutation of the training split after another (pass p's from
    ``seed + p``, as DistributedSampler does); round r takes the ``steps_per_round`` steps that
    follow round r - 1, and this rank takes its ``batch_size`` of each step's ``batch_size x
    world_size`` images. Nothing is dropped at the end of a pass: the stream runs on into the
    next. Order and augmentations are functions of (seed, round), so a resumed run replays round
    r exactly as a straight run would. ``set_round`` must be called before each round.
    """

    def __init__(self, size: int, seed: int, batch_size: int, steps_per_round: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.batch_size, self.steps = size, seed, batch_size, steps_per_round
        self.rank, self.world_size, self.round = rank, world_size, 1
        self._permutation: tuple[int, torch.Tensor] | None = None

    def set_round(self, round_: int) -> None:
        self.round = round_

    def _index(self, position: int) -> tuple[int, int]:
        pass_, offset = divmod(position, self.size)
        if self._permutation is None or self._permutation[0] != pass_:
            generator = torch.Generator().manual_seed(self.seed + pass_)
            self._permutation = (pass_, torch.randperm(self.size, generator=generator))
        return pass_, int(self._permutation[1][offset])

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self):
        per_step = self.batch_size * self.world_size
        first_step = (self.round - 1) * self.steps
        for step in range(first_step, first_step + self.steps):
            start = step * per_step + self.rank * self.batch_size
            for position in range(start, start + self.batch_size):
                yield self._index(position)


def _worker_init(_: int, cores: tuple[int, ...] = ()) -> None:
    from torch.utils.data import get_worker_info

    # Started from the training thread, which may be bound to one core: run on all of ours again.
    cpu_affinity.release(list(cores))

    # One OpenCV thread per worker so augmentation does not fight the training step for the cores.
    cv2.setNumThreads(1)
    # Spawned workers would otherwise all start from the same global random state. Each gets
    # torch's per-worker seed (drawn from the loader's seeded generator) for any global draw;
    # the augmentation pipeline is re-seeded per sample in SegmentationDataset.
    seed_everything(get_worker_info().seed % 2**32)


def make_loader(dataset: Dataset, config: TrainConfig, train: bool, rank: int = 0, world_size: int = 1,
                steps_per_round: int = 1) -> DataLoader:
    """Training batches come from worker processes; validation (no augmentation) needs none.

    Workers are spawned, not forked: OpenCV's thread pool, used by the parent while decoding,
    deadlocks in a forked child. Persistent workers pay the start-up once per run.

    Training yields ``steps_per_round`` batches a round. With several ranks, training takes this
    rank's share of each step; validation
    takes every ``world_size``-th of the batches one process would make (no padding, no image
    twice, each image in the same batch as in one process, so the summed metrics are the same).
    """
    workers = config.num_workers if train else 0
    if train:
        batching = dict(batch_size=config.batch_size, sampler=StepSampler(
            len(dataset), config.seed, config.batch_size, steps_per_round, rank, world_size))
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
        worker_init_fn=functools.partial(_worker_init, cores=tuple(cpu_affinity.owned_cores())) if workers > 0 else None,
        multiprocessing_context="spawn" if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(config.seed),
    )
