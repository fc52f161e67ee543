"""Row 6h: how many training crops contain a pothole (issue 23, point 2). For each dataset the cpu
preset's scale is chosen from its training masks as `train` chooses it; when that scale trains on
crops, the augmented training samples of the first passes are drawn exactly as the loader draws
them ((seed, pass, index) streams) and counted: the share with any pothole pixel, against the
share of whole training images with one, for random crops and for the preset's `pothole_crops`;
and the same with each mask reduced to its smallest pothole (a frame with one small pothole). No
model is trained; the test photos are never read.

    python benchmarks/bench_crops.py --mosaic 1x2 2x4

``--mosaic`` adds the zoomed-out copies of each dataset's training photos (`potholes mosaic`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from bench_quality import shared_datasets
from bench_recipes import mosaic_of
from common import dataset, parser, report


def crop_counts(data: Path, seeds: list[int], passes: int, min_pixels: int | None = None) -> dict:
    from potholes.stages.stage_data import open_stage_data
    from potholes.training import augment, scale
    from potholes.training.config import resolve_config

    config = resolve_config("unetpp", "cpu", precision="fp32")
    stage = open_stage_data(str(data), config.val_fraction, config.split_seed, None, False,
                            keep_aspect=config.keep_aspect)
    chosen = scale.choose(stage.manifest, config.img_size, config.crop_size, config.keep_aspect, min_pixels)
    stage.img_size = chosen.img_size
    images, masks = stage.split("train")
    row = {"img_size": chosen.img_size, "crop_size": chosen.crop_size, "model_hw": "x".join(map(str, stage.hw)),
           "train_images": len(images), "images_with_pothole": float(np.mean([m.any() for m in masks]))}
    if not chosen.crop_size:
        return row
    # The sparse case the shared sets lack (a wide frame with one small pothole): each frame's mask
    # reduced to its smallest pothole, drawn through the same seeded pipeline.
    single = [_smallest_only(m) for m in masks]
    for name, share in (("random", 0.0), ("preset", config.pothole_crops)):
        for kind, pick in (("", masks), ("_one_small_pothole", single)):
            shares = []
            for seed in seeds:
                transform = augment.train_transform(seed, chosen.crop_size, share)
                hits = []
                for pass_ in range(passes):
                    for index, (image, mask) in enumerate(zip(images, pick)):
                        augment.seed_transform(transform, augment.sample_seed(seed, pass_, index))
                        hits.append(bool(transform(image=image, mask=mask)["mask"].any()))
                shares.append(float(np.mean(hits)))
            row |= {f"{name}_crops_with_pothole{kind}": float(np.mean(shares)),
                    f"{name}{kind}_spread": max(shares) - min(shares)}
    return row | {"pothole_crops": config.pothole_crops}


def _smallest_only(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if count < 2:
        return mask
    smallest = 1 + int(np.argmin(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == smallest).astype(mask.dtype)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--passes", type=int, default=4, help="passes over the training photos per seed")
    p.add_argument("--mosaic", nargs="*", default=[], help="ROWSxCOLS shapes of mosaic copies to add")
    p.add_argument("--min-pixels", type=int, default=None, help="the scale's threshold (default: scale.MIN_PIXELS)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.passes, args.mosaic, args.min_pixels = [1, 2], 2, [], 10**6  # every pothole "small"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = [args.data_dir] if args.quick else shared_datasets() or [args.data_dir]
        for source in sources:
            args.data_dir = source  # `dataset` reads it from there, as in bench_quality
            data = dataset(args, Path(tmp) / Path(source).name, n_train=12, n_test=2, size=256)
            name = Path(data).name if Path(data) == Path(source) else "synthetic"
            rows.append({"dataset": name, **crop_counts(Path(data), args.seeds, args.passes, args.min_pixels)})
            for shape in args.mosaic:
                out = mosaic_of(Path(data), Path(tmp) / f"{name}-{shape}", shape)
                rows.append({"dataset": f"{name} mosaic {shape}", **crop_counts(out, args.seeds, args.passes, args.min_pixels)})
            print(rows[-1], flush=True)
    report("crops", rows, {"seeds": args.seeds, "passes": args.passes}, args)


if __name__ == "__main__":
    main()
