"""`prepare`: check and split the dataset, and log the seed's data analysis as an MLflow run."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlflow
import numpy as np

from potholes.data import statistics as analysis
from potholes.data.dataset import PreparedData, build_manifest, read_image, read_mask
from potholes.reporting import plots
from potholes.tracking import runs as tracking


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    seed: int = 42


def overlay_panels(prepared: PreparedData, count: int = 8, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    manifest = prepared.manifest
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(manifest), size=min(count, len(manifest)), replace=False)
    panels = []
    for i in sorted(chosen):
        row = manifest.iloc[i]
        image = read_image(prepared.layout.root / row["image_path"])
        mask = read_mask(prepared.layout.root / row["mask_path"])
        panels.append((f"{row['id']} ({row['split']}, {row['area_ratio']:.1%})", plots.overlay(image, mask)))
    return panels


def run_prepare(data_dir: str, split: SplitConfig = SplitConfig(), progress: bool = True) -> dict:
    """Build the manifest, log it with its statistics and plots; return the summary."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = build_manifest(data_dir, split.val_fraction, split.seed, progress=progress)
    for warning in caught:
        print(f"warning: {warning.message}")
    summary = analysis.summarize(prepared.manifest, prepared.component_areas)
    summary["images_without_mask"] = [p.name for p in prepared.images_without_mask]
    summary["masks_without_image"] = [p.name for p in prepared.masks_without_image]
    summary["warnings"] = [{"kind": w.kind, "file": w.file, "detail": w.detail} for w in prepared.warnings]

    with tracking.stage_run("prepare", run_name="prepare"):
        tracking.log_params({"data_dir": data_dir, "dataset_root": str(prepared.layout.root),
                           "val_fraction": split.val_fraction, "seed": split.seed})
        digest = tracking.log_manifest(prepared.manifest, prepared.layout.root, context="prepare")
        summary["dataset_digest"] = digest
        mlflow.log_metrics(analysis.flatten_metrics(summary))
        mlflow.set_tag("feasibility", summary["feasibility"])
        tracking.log_json(summary, "summary.json")
        tracking.log_figure(
            plots.histogram(prepared.manifest["area_ratio"], "pothole area ratio per image", "area ratio"),
            "plots/area_ratio_hist.png")
        tracking.log_figure(
            plots.histogram(prepared.component_areas, "connected component areas", "pixels", log_x=True),
            "plots/component_area_hist.png")
        tracking.log_figure(plots.overlay_grid(overlay_panels(prepared)), "plots/overlays.png")

    print(analysis.format_summary(summary))
    print(f"dataset digest        : {digest}")
    return summary
