"""Dice by pothole size, and a min-area search that cannot erase the small potholes."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import artifacts
from mlflow.tracking import MlflowClient

from potholes.reporting import size_buckets
from potholes.stages.predict import PredictConfig, run_predict


def test_buckets_follow_the_true_area_share():
    assert [size_buckets.bucket_of(a) for a in (0.0, 0.001, 0.0049, 0.005, 0.02, 0.021, 0.4)] == [
        "empty", "small", "small", "medium", "medium", "large", "large"]


def test_summary_is_per_bucket_means_counts_and_spread():
    dice = np.array([1.0, 0.2, 0.4, 0.9, 0.8])
    fractions = np.array([0.0, 0.001, 0.003, 0.01, 0.3])
    metrics = size_buckets.summarize(dice, fractions, "val")
    assert metrics["val_dice_empty"] == 1.0 and metrics["val_images_empty"] == 1
    assert metrics["val_dice_small"] == pytest.approx(0.3) and metrics["val_images_small"] == 2
    assert metrics["val_dice_medium"] == 0.9 and metrics["val_dice_large"] == 0.8
    assert metrics["val_dice_p50"] == pytest.approx(0.8)
    assert metrics["val_dice_p10"] == pytest.approx(np.percentile(dice, 10))


def test_min_area_cap_keeps_half_the_smallest_true_potholes():
    # smallest components cover 0.1 % .. 5 % of their images; at 256 px the 5th percentile of
    # 0.001.. is ~0.0011 -> ~72 px; half of it is the cap
    fractions = pd.Series([0.0, 0.001, 0.002, 0.01, 0.05] * 4)
    cap = size_buckets.min_area_cap(fractions, 256)
    expected = int(0.5 * np.quantile([f for f in fractions if f > 0], 0.05) * 256 * 256)
    assert cap == expected and 30 <= cap <= 40
    assert size_buckets.min_area_cap(pd.Series([0.0, 0.0]), 256) is None


def test_tune_and_predict_log_dice_by_size(in_smoke_store, tmp_path):
    client = MlflowClient()
    tune = client.get_run(in_smoke_store.tune["run_id"])
    assert {"val_dice_p10", "val_dice_p50"} <= set(tune.data.metrics)
    assert any(k.startswith("val_dice_") and k.split("_")[-1] in size_buckets.BUCKETS for k in tune.data.metrics)
    assert "plots/val_dice_by_size.png" in artifacts(tune.info.run_id)
    uri = f"models:/pothole-ensemble/{in_smoke_store.tune['version']}"
    result = run_predict(str(in_smoke_store.data), PredictConfig(model_uri=uri, output=str(tmp_path / "s.csv")),
                         progress=False)
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`potholes.stage` = 'predict'",
                             order_by=["attributes.start_time DESC"], output_format="list")[0]
    counts = {k: v for k, v in run.data.metrics.items() if k.startswith("test_images_")}
    assert sum(counts.values()) == len(pd.read_csv(tmp_path / "s.csv"))  # every scored image in one bucket
    assert result["test_dice_p50"] == run.data.metrics["test_dice_p50"]
    assert "plots/test_dice_by_size.png" in artifacts(run.info.run_id)
