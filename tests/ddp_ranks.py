"""The two ranks of tests/test_distributed.py's in-process DDP test: a module of its own, so the
spawned processes import only what they run (not MLflow, Optuna and the other test modules)."""

import os

import numpy as np
import torch

from potholes.training import augment, distributed
from potholes.training import loop as train_mod
from potholes.training.config import resolve_config
from potholes.training.loader import SegmentationDataset, make_loader
from potholes.training.losses import criterion


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 1, 1)).to(memory_format=torch.channels_last)


def arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, 20, 2)
        masks[i, y:y + 12, x:x + 12] = 1
    return images, masks


CONFIG = dict(model="unetpp", preset="smoke", batch_size=2, seed=7)
N_TRAIN, N_VAL = 9, 5  # uneven on purpose: the stream runs across passes; validation batches are (4, 1) on ranks (0, 1)


def datasets(config):
    return (SegmentationDataset(*arrays(N_TRAIN, 1), config.mean, config.std,
                                          augment.train_transform(config.seed), config.seed),
            SegmentationDataset(*arrays(N_VAL, 2), config.mean, config.std))


def rank_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    config = resolve_config(**CONFIG, world_size=2)
    device = torch.device("cpu")
    with distributed.process_group() as world:
        assert (world.rank, world.size, distributed.rank(), distributed.size()) == (rank, 2, rank, 2)
        model = tiny_model()
        parallel = distributed.wrap(model, device)
        # lr 0: the weights stay put, so each batch's loss is what one process computes for that batch
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        train_set, val_set = datasets(config)
        loader = make_loader(train_set, config, train=True, rank=rank, world_size=2, steps_per_round=2)
        loader.sampler.set_round(3)
        loss_fn = criterion(config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        trained = train_mod.train_round(parallel, loader, optimizer, scheduler, loss_fn, device, progress=False)
        val_loader = make_loader(val_set, config, train=False, rank=rank, world_size=2)
        validated = train_mod.evaluate(model, val_loader, loss_fn, 0.4, device)
        torch.save({"train": trained, "val": validated, "state": model.state_dict(),
                    "val_batches": [len(masks) for _, masks in val_loader]}, f"{out_dir}/rank{rank}.pt")
