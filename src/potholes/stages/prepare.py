"""`prepare`: check and split the dataset, and log the seed's data analysis as an MLflow run."""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import mlflow
import numpy as np

from potholes.data import statistics as analysis
from potholes.data.dataset import build_manifest, find_dataset
from potholes.data.fingerprint import files_digest
from potholes.reporting import plots
from potholes.tracking import runs as tracking
from potholes.tracking.prepared import prepared_key


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    seed: int = 42


class OverlaySample:
    """Keeps the overlays of ``count`` pairs while the manifest scan decodes them (no second read):
    the pairs whose ids hash lowest, a fixed choice for the same files that needs no count upfront."""

    def __init__(self, count: int = 8):
        self.count, self.kept = count, {}

    def __call__(self, pair_id: str, image: np.ndarray, mask: np.ndarray) -> None:
        rank = zlib.crc32(pair_id.encode())
        if len(self.kept) < self.count or rank < max(self.kept):
            self.kept[rank] = (pair_id, plots.overlay(image, mask))
            if len(self.kept) > self.count:
                del self.kept[max(self.kept)]

    def panels(self, manifest) -> list[tuple[str, np.ndarray]]:
        rows = manifest.set_index("id")
        chosen = sorted(self.kept.values(), key=lambda kept: int(kept[0]) if kept[0].isdigit() else kept[0])
        return [(f"{i} ({rows.at[i, 'split']}, {rows.at[i, 'area_ratio']:.1%})", panel) for i, panel in chosen]


def run_prepare(data_dir: str, split: SplitConfig = SplitConfig(), progress: bool = True) -> dict:
    """Build the manifest, log it with its statistics and plots; return the summary. Each file is
    decoded once; `train` and `tune` find the logged manifest again by the files' digest."""
    layout = find_dataset(data_dir)
    key = prepared_key(files_digest(layout.root, [layout.train_images, layout.train_masks]), split.val_fraction,
                       split.seed)
    sample = OverlaySample()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = build_manifest(data_dir, split.val_fraction, split.seed, progress=progress, keep=sample)
    for warning in caught:
        print(f"warning: {warning.message}")
    summary = analysis.summarize(prepared.manifest, prepared.component_areas)
    summary["images_without_mask"] = [p.name for p in prepared.images_without_mask]
    summary["masks_without_image"] = [p.name for p in prepared.masks_without_image]
    summary["warnings"] = [{"kind": w.kind, "file": w.file, "detail": w.detail} for w in prepared.warnings]

    with tracking.stage_run("prepare", run_name="prepare"):
        tracking.log_params({"data_dir": data_dir, "dataset_root": str(prepared.layout.root),
                           "val_fraction": split.val_fraction, "seed": split.seed})
        digest = tracking.log_manifest(prepared.manifest, prepared.layout.root, context="prepare", key=key).digest
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
        tracking.log_figure(plots.overlay_grid(sample.panels(prepared.manifest)), "plots/overlays.png")

    print(analysis.format_summary(summary))
    print(f"dataset digest        : {digest}")
    return summary
