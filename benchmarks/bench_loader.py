"""Row 5: training input pipeline vs training step, cpu preset. The DataLoader alone (augment,
normalise, collate, with the preset's worker) must deliver images at least 3x faster than the
training step consumes them. Also reports peak resident memory."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from common import dataset, parser, report, seconds_per_train_step

from potholes.data.dataset import build_manifest
from potholes.training import augment
from potholes.training.config import resolve_config
from potholes.training.loader import SegmentationDataset, load_split, make_loader


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

        # fp32 as this row was measured (BENCHMARKS.md, row 5); bf16 steps are row 6b
        step_rate = config.batch_size / seconds_per_train_step(config, steps, "fp32")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [{"row": "5 train input", "model": args.model, "img_size": config.img_size, "batch": config.batch_size,
             "workers": config.num_workers, "loader_img_per_s": loader_rate, "step_img_per_s": step_rate,
             "loader_vs_step": loader_rate / step_rate, "target": ">= 3x", "peak_rss_mb": peak_mb}]
    report("loader", rows, {}, args)


if __name__ == "__main__":
    main()
