"""The seed's "Data Understanding" statistics, as a pure function of the manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd

AREA_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)
TINY_AREA_RATIO = 0.01  # "tiny pothole": less than 1 % of the image
# The seed's search range for the binarisation threshold ("small-object dominated Dice regime").
THRESHOLD_PRIOR = (0.30, 0.45)


def feasibility_label(tiny_share: float) -> str:
    """The seed's rule on the share of images whose pothole area is below 1 %."""
    if tiny_share > 0.6:
        return "HARD"
    if tiny_share > 0.4:
        return "MODERATE"
    return "FAVORABLE"


def summarize(manifest: pd.DataFrame, component_areas: list[int] | np.ndarray) -> dict:
    """Dataset statistics logged by `prepare` (plain Python types, JSON-ready)."""
    areas = np.asarray(component_areas, dtype=np.float64)
    ratio = manifest["area_ratio"].to_numpy(dtype=np.float64)
    has_pothole = manifest["pothole_pixels"].to_numpy() > 0
    nonempty = manifest[has_pothole]
    dominant = (nonempty["max_component_pixels"] / nonempty["pothole_pixels"]).to_numpy()
    tiny_share = float(np.mean(ratio < TINY_AREA_RATIO)) if len(ratio) else 0.0

    def quantiles(values: np.ndarray) -> dict[str, float]:
        if not len(values):
            return {f"p{int(q * 100)}": 0.0 for q in AREA_QUANTILES}
        return {f"p{int(q * 100)}": float(np.quantile(values, q)) for q in AREA_QUANTILES}

    split_counts = manifest["split"].value_counts() if "split" in manifest else pd.Series(dtype=int)
    return {
        "num_pairs": int(len(manifest)),
        "num_train": int(split_counts.get("train", 0)),
        "num_val": int(split_counts.get("val", 0)),
        "with_pothole": int(has_pothole.sum()),
        "without_pothole": int((~has_pothole).sum()),
        "empty_mask_ratio": float(np.mean(~has_pothole)) if len(has_pothole) else 0.0,
        "area_ratio_quantiles": quantiles(ratio),
        "components_per_image_mean": float(manifest["num_components"].mean()) if len(manifest) else 0.0,
        "components_per_image_max": int(manifest["num_components"].max()) if len(manifest) else 0,
        "dominant_component_ratio_mean": float(dominant.mean()) if len(dominant) else 0.0,
        "num_components_total": int(len(areas)),
        "component_area_quantiles": quantiles(areas),
        "min_area_candidate": int(np.quantile(areas, 0.10)) if len(areas) else 0,
        "tiny_pothole_share": tiny_share,
        "feasibility": feasibility_label(tiny_share),
        "threshold_prior": {"start": THRESHOLD_PRIOR[0], "end": THRESHOLD_PRIOR[1]},
    }


def flatten_metrics(summary: dict) -> dict[str, float]:
    """Numeric leaves of the summary as MLflow metric names (nested keys joined by '_')."""
    metrics: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            for sub, inner in flatten_metrics(value).items():
                metrics[f"{key}_{sub}"] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def format_summary(summary: dict) -> str:
    """A readable block for the terminal."""
    q = summary["area_ratio_quantiles"]
    c = summary["component_area_quantiles"]
    lines = [
        f"pairs                 : {summary['num_pairs']} (train {summary['num_train']}, val {summary['num_val']})",
        f"with / without pothole: {summary['with_pothole']} / {summary['without_pothole']}"
        f"  (empty-mask ratio {summary['empty_mask_ratio']:.2%})",
        "area ratio quantiles  : " + "  ".join(f"{k}={v:.4f}" for k, v in q.items()),
        f"components per image  : mean {summary['components_per_image_mean']:.2f}, max {summary['components_per_image_max']}",
        f"dominant component    : {summary['dominant_component_ratio_mean']:.2%} of an image's pothole area (mean)",
        "component area (px)   : " + "  ".join(f"{k}={v:.0f}" for k, v in c.items()),
        f"MIN_AREA candidate    : {summary['min_area_candidate']} px (10th percentile of component areas)",
        f"tiny (<1%) share      : {summary['tiny_pothole_share']:.2%} -> {summary['feasibility']}",
        f"threshold prior       : {summary['threshold_prior']['start']:.2f}-{summary['threshold_prior']['end']:.2f}",
    ]
    return "\n".join(lines)
