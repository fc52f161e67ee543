"""Dice by pothole size: a mean over all images hides how small potholes fare, and small ones
are what a min-area filter can erase.

An image's bucket is the share of its pixels that the true mask marks as pothole: ``empty``
(none), ``small`` (< 0.5 %), ``medium`` (0.5-2 %), ``large`` (> 2 %).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BUCKETS = ("empty", "small", "medium", "large")
EDGES = (0.005, 0.02)  # area fractions between small | medium | large


def bucket_of(area_fraction: float) -> str:
    if area_fraction <= 0:
        return "empty"
    if area_fraction < EDGES[0]:
        return "small"
    return "medium" if area_fraction <= EDGES[1] else "large"


def summarize(dice: np.ndarray, area_fraction: np.ndarray, prefix: str) -> dict[str, float]:
    """Metrics: mean Dice and image count per bucket (buckets without images are left out) and
    the spread of per-image Dice (10th, 25th percentile, median)."""
    frame = pd.DataFrame({"dice": np.asarray(dice, float), "bucket": [bucket_of(a) for a in area_fraction]})
    metrics = {}
    for bucket, group in frame.groupby("bucket"):
        metrics[f"{prefix}_dice_{bucket}"] = float(group["dice"].mean())
        metrics[f"{prefix}_images_{bucket}"] = float(len(group))
    for q in (10, 25, 50):
        metrics[f"{prefix}_dice_p{q}"] = float(np.percentile(frame["dice"], q)) if len(frame) else 0.0
    return metrics


def figure(dice: np.ndarray, area_fraction: np.ndarray, title: str):
    """Mean Dice per bucket (with counts) beside the histogram of per-image Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = np.asarray(dice, float)
    buckets = np.array([bucket_of(a) for a in area_fraction])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [b for b in BUCKETS if (buckets == b).any()]
    means = [dice[buckets == b].mean() for b in names]
    bars = left.bar(names, means, color="#4c72b0")
    for bar, name in zip(bars, names):
        left.annotate(f"n={(buckets == name).sum()}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_ylabel("mean Dice")
    left.set_title("by true pothole area (< 0.5 %, 0.5-2 %, > 2 % of the image)", fontsize=9)
    right.hist(dice, bins=20, range=(0, 1), color="#55a868")
    right.set_xlabel("per-image Dice")
    right.set_ylabel("images")
    right.set_title("per-image Dice", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def min_area_cap(min_component_fraction: pd.Series, img_size: int, quantile: float = 0.05) -> int | None:
    """The largest min-area (pixels at ``img_size``) the tune search may try: half the area of
    the smallest true potholes (the ``quantile`` of each training image's smallest component, as
    a fraction of its image), so the filter cannot erase the small-pothole bucket wholesale.
    None when the training masks hold no pothole."""
    fractions = np.asarray(min_component_fraction, float)
    fractions = fractions[fractions > 0]
    if not len(fractions):
        return None
    return max(1, int(0.5 * np.quantile(fractions, quantile) * img_size * img_size))
