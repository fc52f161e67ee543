"""Row 6a: the recipe search. Each candidate recipe trains one model with the same step budget for
each of several seeds, and is judged on the validation split only (best validation Dice at the
0.4 threshold, no TTA): mean +- spread over the seeds, and the minutes it costs. The test images
are never looked at here; `bench_quality.py` measures the chosen recipe on them.

    python benchmarks/bench_recipes.py --model deeplab --steps 200 --seeds 1 2 \\
        --candidates base lite1 ema tversky px320
    python benchmarks/bench_recipes.py --model unetpp --seeds 1 2 --candidates base geo_strong
    python benchmarks/bench_recipes.py --model unetpp --seeds 1 2 --candidates dice_focal base
    python benchmarks/bench_recipes.py --model deeplab --seeds 1 2 --mosaic 2x4 --val-fraction 0.3 \
        --candidates img_256 img_auto
    python benchmarks/bench_recipes.py --model deeplab --seeds 1 2 --mosaic 1x2 --val-fraction 0.3 \
        --candidates base px512crop256
    python benchmarks/bench_recipes.py --model deeplab --seeds 1 2 --mosaic 2x4 --val-fraction 0.3 \
        --candidates base os8
    python benchmarks/bench_recipes.py --model unetpp --seeds 1 2 --mosaic 2x4 --val-fraction 0.3 \
        --candidates base depth4
    python benchmarks/bench_recipes.py --model deeplab --seeds 1 2 --mosaic 2x4 --val-fraction 0.3 \
        --candidates base copy_paste small_weight
    python benchmarks/bench_recipes.py --model deeplab --seeds 1 2 --split-seeds 42 7 \
        --data-dir ../shared/data/potholes-closeup --candidates base copy_paste

``--split-seeds`` repeats every seed on each of several train/validation splits (the preset's
split seed, 42, by default): one split's few validation photos separate ideas of +-0.01 poorly.
``--mosaic RxC`` judges on the zoomed-out copy of the data (`potholes mosaic`: frames of R x C
downscaled photos, 640x320), built from the training photos only, for small-pothole ideas.

"base" is the cpu preset as it is now; rows measured before its loss became ``image_dice_focal``
reproduce with ``dice_focal`` in front of their change.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from common import dataset, parser, report

from potholes.inference.networks import LITE1, LITE2
from potholes.training import augment
from potholes.training.config import TrainConfig

SEED_TRANSFORM = augment.train_transform

# Each candidate changes one thing of the cpu preset (names in BENCHMARKS.md, row 6a).
CANDIDATES = {
    "base": {},
    "lite1": {"encoder": LITE1},
    "lite2": {"encoder": LITE2},
    "ema": {"ema": 0.99},
    "tversky": {"loss": "tversky_focal"},
    "px320": {"img_size": 320},
    "px384": {"img_size": 384},
    "lr3e-3": {"lr": 3e-3},
    "dice_focal": {"loss": "dice_focal"},  # the seed's loss: one Dice over the batch's pixels (base until row 6a's loss change)
    "batch4": {"batch_size": 4},
    "px384crop256": {"img_size": 384, "crop_size": 256},
    "geo_strong": {},  # the augmentation below, not a config value
    "lovasz": {"loss": "lovasz_focal"},
    "aspp369": {},  # the architecture change below
    "scse220": {"steps": 220},  # scSE costs 1.55x a step: ~330 / 1.55 steps (whole rounds) take the base's time
    "unfrozen": {"freeze_stride": 0},  # every encoder layer trained (the cpu preset until row 6d)
    "frozen8": {"freeze_stride": 8},  # the cpu preset since row 6d; with --steps 410, the measured candidate
    "px288": {"img_size": 288},  # on the frozen preset: ~1.27x the pixels a step, paid by the time freezing saved
    "img_auto": {"img_size": "auto"},  # the scale from the training masks (training/scale.py; the cpu preset's since row 6g)
    "img_256": {"img_size": 256},  # the preset's size, never scaled ("base" until the scale came from the data)
    # the scale auto picks at its 2x cap, whatever the masks, with the random crops of row 6f
    "px512crop256": {"img_size": 512, "crop_size": 256, "pothole_crops": 0.0},
    "random_crops": {"pothole_crops": 0.0},  # crops anywhere (the cpu preset's until row 6h)
    "os8": {},  # the architecture change below
    "depth4": {},  # the architecture change below
    "copy_paste": {"copy_paste": 0.5},  # half the samples get a pothole of another image (training/copy_paste.py)
    "small_weight": {"small_pothole_weight": 3.0},  # 4x the loss weight of potholes up to 64 model px (losses.py)
}
# Candidates that change the augmentation pipeline rather than a config value (not product options).
TRANSFORMS = {"geo_strong": dict(scale=(0.8, 1.2), translate_percent=(-0.08, 0.08), rotate=(-10, 10), shear=(-3, 3),
                                 p=0.7)}


# Candidates that change an smp architecture's construction: {smp class name: keyword arguments}.
# DeepLabV3+'s default atrous rates (12, 24, 36) suit 512 px inputs; at 256 px its output-stride-16
# map is 16x16, where dilations 24 and 36 see only their centre tap (a 1x1 conv); (3, 6, 9) keeps
# the 3x3 taps inside the map, as the DeepLabV3 paper's (6, 12, 18) do on its 33x33 map.
# At output stride 8 the encoder's last stages are dilated instead of strided: DeepLabV3+'s ASPP
# sees a map 4x as large (32x32 on a 256 px crop), so a pothole of a few model pixels still has a
# feature of its own; smp's rates (12, 24, 36) are the paper's for that stride.
# UNet++ at encoder depth 4 drops the stride-32 stage and its nested decoder column, and keeps the
# channels the base decoder has at each stride (16 at full size): one change, not a wider decoder.
ARCHITECTURE_KWARGS = {"aspp369": {"DeepLabV3Plus": {"decoder_atrous_rates": (3, 6, 9)}},
                       "scse220": {"UnetPlusPlus": {"decoder_attention_type": "scse"}},
                       "os8": {"DeepLabV3Plus": {"encoder_output_stride": 8}},
                       "depth4": {"UnetPlusPlus": {"encoder_depth": 4, "decoder_channels": (128, 64, 32, 16)}}}
SMP_CLASSES: dict = {}


def use_architecture(changes: dict | None) -> None:
    """Build smp's classes with ``changes``' keyword arguments from now on (None restores them);
    `potholes.training.models.build_model` looks the class up at each call."""
    import functools

    import segmentation_models_pytorch as smp

    for name, cls in SMP_CLASSES.items():
        setattr(smp, name, cls)
    for name, kwargs in (changes or {}).items():
        SMP_CLASSES.setdefault(name, getattr(smp, name))
        setattr(smp, name, functools.partial(SMP_CLASSES[name], **kwargs))


def use_affine(affine: dict | None) -> None:
    """Swap the seed's Affine for ``affine`` in every training pipeline built from now on (None
    restores the seed's). Patched in this process, which builds the pipeline the loader's workers
    receive."""
    import albumentations as A
    import cv2

    if affine is None:
        augment.train_transform = SEED_TRANSFORM
        return

    def patched(seed: int = 0, crop_size: int = 0, pothole_crops: float = 0.0, copy_paste: float = 0.0) -> A.Compose:
        steps = [A.Affine(**affine, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101)
                 if isinstance(t, A.Affine) else t
                 for t in SEED_TRANSFORM(seed, crop_size, pothole_crops, copy_paste).transforms]
        transform = A.Compose(steps)
        augment.seed_transform(transform, seed)
        return transform

    augment.train_transform = patched


def train_once(data: Path, model: str, preset: str, steps: int | None, seed: int, overrides: dict) -> dict:
    from potholes.stages.train import run_train
    from potholes.training.config import resolve_config

    config = resolve_config(model, preset, seed=seed, **({"steps": steps} | overrides))
    start = time.perf_counter()
    result = run_train(config, str(data), progress=False)
    minutes = (time.perf_counter() - start) / 60
    print(f"  split {config.split_seed}, seed {seed}: best val Dice {result['best_val_dice']:.4f} at step "
          f"{result['best_step']}, {minutes:.1f} min", flush=True)
    return {"val_dice": result["best_val_dice"], "best_step": result["best_step"], "minutes": minutes}


def mosaic_of(data: Path, tmp: Path, shape: str) -> Path:
    """The mosaic copy of ``data``'s training photos (its test photos are never looked at here)."""
    from potholes.data.dataset import find_dataset
    from potholes.data.mosaic import build

    rows, cols = (int(n) for n in shape.lower().split("x"))
    train_only = tmp / "train_only"
    layout = find_dataset(data)
    (train_only / "train").mkdir(parents=True)
    for folder in (layout.train_images, layout.train_masks):
        (train_only / "train" / folder.name).symlink_to(folder.resolve())
    out = tmp / f"mosaic{rows}x{cols}"
    print("mosaic frames:", build(train_only, out, rows=rows, cols=cols, seed=0), flush=True)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="deeplab", choices=["unetpp", "deeplab"])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="step budget of every candidate (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--candidates", nargs="+", default=["base", "lite1", "ema", "tversky", "px320"],
                   choices=sorted(CANDIDATES))
    p.add_argument("--mosaic", default=None, help="ROWSxCOLS: judge on the mosaic copy of the data's training photos")
    p.add_argument("--val-fraction", type=float, default=None, help="validation share (default: the preset's)")
    p.add_argument("--split-seeds", type=int, nargs="+", default=[TrainConfig.split_seed],
                   help=f"train/validation splits to repeat every seed on (default: {TrainConfig.split_seed})")
    args = p.parse_args()
    if args.quick:
        args.preset, args.steps, args.candidates = "smoke", 4, ["base", "geo_strong"]
        args.seeds, args.split_seeds = [1], [42, 7]  # two runs a candidate, on two splits
    from potholes.tracking import runs as tracking

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args, Path(tmp), n_train=16, n_test=4, size=64)
        if args.mosaic:
            data = mosaic_of(data, Path(tmp), args.mosaic)
        extra = {} if args.val_fraction is None else {"val_fraction": args.val_fraction}
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        tracking.configure("recipes", project_root=tmp)
        for name in args.candidates:
            use_affine(TRANSFORMS.get(name))
            use_architecture(ARCHITECTURE_KWARGS.get(name))
            runs = [train_once(data, args.model, args.preset, args.steps, seed,
                               CANDIDATES[name] | extra | {"split_seed": split})
                    for split in args.split_seeds for seed in args.seeds]
            dice = [r["val_dice"] for r in runs]
            # Splits differ by more than seeds do (BENCHMARKS.md row 6k), so the seeds' spread is
            # taken within each split, and the spread over all runs is named as such.
            per_split = [dice[i:i + len(args.seeds)] for i in range(0, len(dice), len(args.seeds))]
            row = {"candidate": name, "overrides": CANDIDATES[name], "model": args.model, "steps": args.steps,
                   "seeds": args.seeds, "split_seeds": args.split_seeds, "val_dice": dice,
                   "val_dice_mean": statistics.mean(dice),
                   "val_dice_spread": max(dice) - min(dice),
                   "val_dice_seed_spread": max(max(d) - min(d) for d in per_split),
                   "best_steps": [r["best_step"] for r in runs],
                   "minutes_per_run": statistics.mean(r["minutes"] for r in runs)}
            rows.append(row)
            several = len(args.split_seeds) > 1 and len(args.seeds) > 1  # else one of the spreads is the other or 0
            within = f"; seeds within a split {row['val_dice_seed_spread']:.4f}" if several else ""
            print(f"{name:>8}: val Dice {row['val_dice_mean']:.4f} (spread over all runs {row['val_dice_spread']:.4f}"
                  f"{within}; {', '.join(f'{d:.4f}' for d in dice)}), {row['minutes_per_run']:.1f} min a run",
                  flush=True)
    base = next((r for r in rows if r["candidate"] == "base"), None)
    for row in rows:
        row["vs_base"] = row["val_dice_mean"] - base["val_dice_mean"] if base else None
        # The same split and seed against the base's: what "n of m pairs up" in BENCHMARKS.md counts.
        row["vs_base_pairs"] = [d - b for d, b in zip(row["val_dice"], base["val_dice"])] if base else None
        if base and row is not base:
            pairs = row["vs_base_pairs"]
            print(f"{row['candidate']:>8}: {row['vs_base']:+.4f} against base, {sum(p > 0 for p in pairs)} of "
                  f"{len(pairs)} (split, seed) pairs up ({', '.join(f'{p:+.4f}' for p in pairs)})", flush=True)
    report("recipes", rows, {"model": args.model, "preset": args.preset, "steps": args.steps,
                             "mosaic": args.mosaic, "val_fraction": args.val_fraction,
                             "judged_on": "validation split, best val Dice @0.4, no TTA"}, args)


if __name__ == "__main__":
    main()
