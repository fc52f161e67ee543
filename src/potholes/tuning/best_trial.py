"""What `tune` shows of its best trial: Dice by pothole size, a sortable per-image table, and
the blend's masks on the validation previews (the keys `train` logs at every round)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from potholes.data.dataset import component_areas
from potholes.inference import postprocess as pp
from potholes.reporting import previews, size_buckets
from potholes.tracking import runs as tracking

TABLE_FILE = "tables/val_images.json"


def best_masks(logits: dict[str, np.ndarray], params: dict) -> np.ndarray:
    """The trial's masks at the model size: blend, threshold in logit space, drop small parts."""
    blended = pp.blend_logits(logits["unetpp"], logits["deeplab"], params["w_unetpp"])
    t = float(params["threshold"])
    cut = float(np.log(t / (1.0 - t)))
    return np.stack([pp.remove_small_components(b > cut, int(params["min_area"])) for b in blended])


def image_table(masks: np.ndarray, truth: np.ndarray, val: pd.DataFrame, trial: int) -> pd.DataFrame:
    """One row per validation image; areas are counted at the model size, the bucket and the
    true pothole count come from the full-size mask (the manifest)."""
    rows = []
    for pred, true, row in zip(masks, truth, val.itertuples()):
        rows.append({"image": row.image_path, "dice": pp.dice_score(pred, true), "iou": pp.iou_score(pred, true),
                     "true_pixels": int(true.sum()), "predicted_pixels": int(pred.sum()),
                     "true_area_fraction": float(row.area_ratio), "size_bucket": size_buckets.bucket_of(row.area_ratio),
                     "true_potholes": int(row.num_components), "predicted_potholes": len(component_areas(pred)),
                     "trial": trial})
    return pd.DataFrame(rows)


def log_best_trial(logits: dict[str, np.ndarray], images: np.ndarray, truth: np.ndarray, manifest: pd.DataFrame,
                   params: dict, trial: int) -> pd.DataFrame:
    """Log the best trial's per-size metrics and figure, its per-image table and its previews
    (at step 0, where the image grid opens); returns the table. A reopened study appends its new best trial's rows
    to the same table (MLflow's log_table appends), told apart by ``trial``."""
    val = manifest[manifest["split"] == "val"].reset_index(drop=True)
    masks = best_masks(logits, params)
    table = image_table(masks, truth, val, trial)
    mlflow.log_metrics(size_buckets.summarize(table["dice"], table["true_area_fraction"], "val"))
    tracking.log_figure(size_buckets.figure(table["dice"], table["true_area_fraction"],
                                            "validation Dice by pothole size (best trial)"), "plots/val_dice_by_size.png")
    mlflow.log_table(table, TABLE_FILE)
    for i in previews.choose(val):
        mlflow.log_image(previews.outline(images[i], truth[i], masks[i]),
                         key=previews.key("val", val.loc[i, "image_path"]), step=0, synchronous=True)
    return table
