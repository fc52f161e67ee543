"""Row 5: training input pipeline vs training step, cpu preset. The DataLoader alone (augment,
normalise, collate, with the preset's worker) must deliver images at least 3x faster than the
training step consumes them. Also reports peak resident memory."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

from common import dataset, parser, report
from potholes import augment
from potholes.config import resolve_config
from potholes.data import build_manifest
from potholes.train import SegmentationDataset, criterion, init_state, load_split, make_loader, plan_training


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="unetpp", choices=["unetpp", "deeplab"])
    args = p.parse_args()
    config = resolve_config(args.model, "cpu", encoder_weights="none")
    steps = 3 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args, Path(tmp), n_train=48)
        prepared = build_manifest(data, progress=False)
        images, masks = load_split(prepared.layout.root, prepared.manifest, "train", config.img_size, progress=False)
        loader = make_loader(SegmentationDataset(images, masks, config.mean, config.std, augment.train_transform(config.seed), config.seed),
                             config, train=True, steps_per_round=len(images) // config.batch_size)
        iterator = iter(loader)
        next(iterator)  # worker start-up is paid once per run (persistent workers)
        seen, start = 0, time.perf_counter()
        for _ in range(2 * steps):
            try:
                batch, _ = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                batch, _ = next(iterator)
            seen += len(batch)
        loader_rate = seen / (time.perf_counter() - start)

        plan = plan_training(train_images=len(images), batch_size=config.batch_size, steps=steps + 1)
        state = init_state(config, plan, torch.device("cpu"))
        loss_fn = criterion(config)
        x = torch.randn(config.batch_size, 3, config.img_size, config.img_size).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(config.batch_size, 1, config.img_size, config.img_size) > 0.8).float()
        state.model.train()

        def step():
            state.optimizer.zero_grad(set_to_none=True)
            loss_fn(state.model(x), y).backward()
            state.optimizer.step()

        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        step_rate = steps * config.batch_size / (time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [{"row": "5 train input", "model": args.model, "img_size": config.img_size, "batch": config.batch_size,
             "workers": config.num_workers, "loader_img_per_s": loader_rate, "step_img_per_s": step_rate,
             "loader_vs_step": loader_rate / step_rate, "target": ">= 3x", "peak_rss_mb": peak_mb}]
    report("loader", rows, {}, args)


if __name__ == "__main__":
    main()
