"""Row 6a, extra TTA: which test-time views would pay, judged on the validation split only.

Takes the two members of finished pipelines (the stores `bench_quality.py --keep` leaves, one
per seed), computes each member's validation logits once per view set, and reports, per seed,
the best blend over a small grid of weight and threshold (the smallest min-area tune searches)
for each TTA variant. The product's TTA is the horizontal flip at the training size
("h@256"); the variants add the vertical flip (4 views) and other input scales, whose logits are
resized to the model size and averaged.

With two or more stores (pipelines of different seeds on the same split), it also asks whether
more ensemble members would pay: every combination of the stores' members (product TTA, equal
weights, best threshold of the grid) against the pairs the product trains.

    python benchmarks/bench_quality.py --seeds 1 2 --keep /tmp/quality
    python benchmarks/bench_tta.py --stores /tmp/quality/seed1 /tmp/quality/seed2
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import dataset, parser, report

THRESHOLDS = (0.3, 0.35, 0.4, 0.45)  # tune's default range, in steps
FLIPS = {"h": ([], [3]), "hv": ([], [3], [2], [2, 3])}  # flip dims of each view, NCHW
# name -> [(input scale as a share of the model size, flips)]
VARIANTS = {
    "h@1.0 (ours)": [(1.0, "h")],
    "hv@1.0": [(1.0, "hv")],
    "h@1.25": [(1.25, "h")],
    "h@1.0+1.25": [(1.0, "h"), (1.25, "h")],
    "h@0.875+1.0+1.25": [(0.875, "h"), (1.0, "h"), (1.25, "h")],
    "h@1.0+1.25+1.5": [(1.0, "h"), (1.25, "h"), (1.5, "h")],
}


def view_logits(model, images: np.ndarray, mean, std, flips: str, size: int) -> np.ndarray:
    """Mean logits over the flipped views of a uint8 batch, resized to ``size``."""
    import cv2
    import torch

    from potholes.inference.normalize import normalize_batch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 4):
            x = normalize_batch(images[start:start + 4], mean, std).contiguous(memory_format=torch.channels_last)
            views = [torch.flip(model(torch.flip(x, d) if d else x), d) if d else model(x) for d in FLIPS[flips]]
            out.append(torch.stack(views).mean(0)[:, 0].numpy())
    logits = np.concatenate(out)
    if logits.shape[-1] == size:
        return logits
    return np.stack([cv2.resize(l, (size, size), interpolation=cv2.INTER_LINEAR) for l in logits])


def best_blend(logits: dict, masks: np.ndarray, min_area: int) -> tuple[float, float, float]:
    from potholes.tuning.search import (
        score,  # a tune trial's score: blend, threshold, clean, mean Dice
    )

    scores = {(w, t): score(logits, masks, float(w), t, min_area)
              for w in np.round(np.arange(0.2, 0.81, 0.1), 1) for t in THRESHOLDS}
    (w, t), dice = max(scores.items(), key=lambda kv: kv[1])
    return dice, float(w), t


def store_rows(store: Path, data: Path) -> tuple[list[dict], dict, np.ndarray, int]:
    """Every variant's best validation blend for the members of one store; also the members'
    product-TTA logits, the validation masks and the min-area (for `member_rows`)."""
    import mlflow
    import torch

    from potholes.data.dataset import build_manifest
    from potholes.inference.networks import load_checkpoint
    from potholes.tracking import runs as tracking
    from potholes.training.loader import load_split
    from potholes.tuning.search import (
        TuneConfig,
        download_best_checkpoint,
        latest_train_run,
        min_area_range,
    )

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    prepared = build_manifest(str(data), 0.15, 42, progress=False)
    digest = tracking.manifest_dataset(prepared.manifest, prepared.layout.root).digest
    members = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("unetpp", "deeplab"):  # the members tune would pick: newest finished, same split
            run_id = latest_train_run(name, digest)
            members[name] = load_checkpoint(download_best_checkpoint(run_id, Path(tmp) / name))
    size = int(members["unetpp"][1]["img_size"])
    scales = sorted({scale for parts in VARIANTS.values() for scale, _ in parts})
    images = {s: load_split(prepared.layout.root, prepared.manifest, "val", int(round(size * s / 32)) * 32, False)[0]
              for s in scales}
    masks = load_split(prepared.layout.root, prepared.manifest, "val", size, False)[1]
    cache = {}
    for name, (model, config) in members.items():
        model = model.to(memory_format=torch.channels_last)
        for s in scales:
            for flips in FLIPS:
                cache[name, s, flips] = view_logits(model, images[s], config["mean"], config["std"], flips, size)
    min_area = min_area_range(TuneConfig(), prepared.manifest, size)[0]  # the smallest tune searches
    rows = []
    for variant, parts in VARIANTS.items():
        logits = {name: np.mean([cache[name, s, f] for s, f in parts], axis=0) for name in members}
        dice, w, t = best_blend(logits, masks, min_area)
        rows.append({"store": store.name, "variant": variant, "views": sum(len(FLIPS[f]) for _, f in parts),
                     "val_dice": dice, "w_unetpp": w, "threshold": t})
    return rows, {name: cache[name, 1.0, "h"] for name in members}, masks, min_area


def member_rows(pools: dict[str, dict], masks: np.ndarray, min_area: int) -> list[dict]:
    """Equal-weight blends of every combination of members across stores (same validation split),
    at the best threshold of the grid: does a third or fourth member pay over the product's pair?"""
    from potholes.inference import postprocess as pp

    logits = {f"{name}@{store}": pool[name] for store, pool in pools.items() for name in pool}
    rows = []
    for k in range(1, len(logits) + 1):
        for combo in itertools.combinations(sorted(logits), k):
            blend = np.mean([logits[c] for c in combo], axis=0)
            dice, t = max((pp.mean_dice(blend, masks, float(np.log(t / (1 - t))), min_area), t)
                          for t in THRESHOLDS)
            product_pair = k == 2 and len({c.split("@")[1] for c in combo}) == 1
            rows.append({"members": " + ".join(combo), "n_members": k, "product_pair": product_pair,
                         "val_dice": dice, "threshold": t})
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--stores", nargs="+", default=[], help="tracking stores of finished pipelines (bench_quality --keep)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args, Path(tmp), n_train=16, n_test=4, size=64)
        stores = [Path(s).resolve() for s in args.stores]
        if args.quick:  # two smoke members in a fresh store
            from potholes.stages.train import run_train
            from potholes.tracking import runs as tracking
            from potholes.training.config import resolve_config

            store = Path(tmp) / "quick"
            store.mkdir()
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
            tracking.configure("tta", project_root=str(store))
            for name in ("unetpp", "deeplab"):
                run_train(resolve_config(name, "smoke", steps=4), str(data), progress=False)
            stores = [store]
        if not stores:
            p.error("--stores is required (the folders bench_quality.py --keep leaves), or --quick")
        per_store = {store.name: store_rows(store, data) for store in stores}
        rows = [row for variant_rows, *_ in per_store.values() for row in variant_rows]
        _, _, masks, min_area = next(iter(per_store.values()))  # the same split and data in every store
        members = member_rows({name: pool for name, (_, pool, _, _) in per_store.items()}, masks, min_area)
    ours = {r["store"]: r["val_dice"] for r in rows if r["variant"].endswith("(ours)")}
    for row in rows:
        row["vs_ours"] = row["val_dice"] - ours[row["store"]]
    means = {v: statistics.mean(r["vs_ours"] for r in rows if r["variant"] == v) for v in VARIANTS}
    print("\nmean change against ours: " + ", ".join(f"{v} {d:+.4f}" for v, d in means.items()))
    by_size = {k: statistics.mean(r["val_dice"] for r in members if r["n_members"] == k)
               for k in sorted({r["n_members"] for r in members})}
    pairs = [r["val_dice"] for r in members if r["product_pair"]]
    print("\nmembers (equal weights, product TTA), val Dice:")
    for r in members:
        pair = "  (a product pair)" if r["product_pair"] else ""
        print(f"  {r['val_dice']:.4f} @ {r['threshold']}  {r['members']}{pair}")
    print("mean val Dice by ensemble size: " + ", ".join(f"{k}: {d:.4f}" for k, d in by_size.items())
          + f"; the product's pairs {statistics.mean(pairs):.4f}\n")
    report("tta", rows, {"judged_on": "validation split, best blend on a weight x threshold grid",
                         "mean_vs_ours": means, "members": members, "mean_val_dice_by_members": by_size,
                         "mean_val_dice_product_pairs": statistics.mean(pairs)}, args)


if __name__ == "__main__":
    main()
