"""The model scale chosen from the training masks: the cpu preset's default and `--img-size auto`
(issue 23, point 2)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from potholes.stages.train import run_train
from potholes.tracking import runs as tracking
from potholes.training import scale
from potholes.training.config import resolve_config


def manifest(smallest_share: float, n: int = 8, hw: tuple[int, int] = (400, 640), empty: int = 2) -> pd.DataFrame:
    rows = [{"split": "train", "height": hw[0], "width": hw[1], "num_components": 1,
             "min_component_pixels": round(smallest_share * hw[0] * hw[1])} for _ in range(n)]
    rows += [{"split": "train", "height": hw[0], "width": hw[1], "num_components": 0, "min_component_pixels": 0}] * empty
    rows += [{"split": "val", "height": hw[0], "width": hw[1], "num_components": 1, "min_component_pixels": 1}]
    return pd.DataFrame(rows)


def test_large_potholes_keep_the_presets_scale():
    chosen = scale.choose(manifest(0.02), img_size=256, crop_size=0)  # 1311 model px at 256: the dev sets' look
    assert (chosen.img_size, chosen.crop_size) == (256, 0)
    assert "covers 1311 model px at 256 (at least 64)" in chosen.reason


def test_small_potholes_raise_the_scale_and_train_on_crops_of_the_presets_size():
    # 0.0006 of a frame is 39 model px at 256 (the validation photo's 1 px pothole is not counted)
    chosen = scale.choose(manifest(0.0006), img_size=256, crop_size=0)
    assert (chosen.img_size, chosen.crop_size) == (352, 256)  # 256 * sqrt(64 / 39.3) = 327, up to a multiple of 32
    assert chosen.reason == ("img_size 352, trained on 256 px crops: the 25th-percentile smallest training "
                             "pothole covers 39 model px at 256, under 64")


def test_tiny_potholes_stop_at_twice_the_scale_and_crops_fit_the_short_side():
    chosen = scale.choose(manifest(1e-6, hw=(200, 1600)), img_size=256, crop_size=0)
    assert chosen.img_size == 512 and "capped at 2x" in chosen.reason
    assert chosen.crop_size == 192  # a 8:1 frame at 512 is seen at 1440x192: the crop fits its short side


def test_masks_without_potholes_keep_the_presets_scale():
    chosen = scale.choose(manifest(0.01, n=0), img_size=256, crop_size=128)
    assert (chosen.img_size, chosen.crop_size) == (256, 128) and "no potholes" in chosen.reason


def test_train_with_img_size_auto_logs_and_trains_at_the_chosen_scale(tracking_store, synth_data, monkeypatch, capsys):
    tracking.configure()
    monkeypatch.setattr(scale, "MIN_PIXELS", 10**6)  # every synthetic pothole is "small": the scale doubles
    result = run_train(resolve_config("deeplab", "smoke", img_size="auto", steps=2), str(synth_data), progress=False)
    out = capsys.readouterr().out
    assert "photos seen at 128x128 (width x height); img_size 128, capped at 2x, trained on 64 px crops" in out
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert (params["config.img_size"], params["config.crop_size"], params["config.scale_from_data"]) == ("128", "64", "True")
    member = mlflow.pyfunc.load_model(f"models:/{result['model_id']}").unwrap_python_model().predictor
    assert member.config.members["deeplab"]["img_size"] == 128 and member.config.img_size == 128


def test_the_cpu_preset_chooses_its_scale_and_a_size_asked_for_is_the_size_used():
    config = resolve_config("unetpp", "cpu", img_size="auto", precision="fp32")
    assert (config.img_size, config.scale_from_data) == (256, True)
    assert resolve_config("unetpp", "cpu", precision="fp32").scale_from_data is True  # the default
    assert resolve_config("unetpp", "cpu", img_size=256, precision="fp32").scale_from_data is False
    assert resolve_config("unetpp", "cpu", img_size=320, precision="fp32").img_size == 320
    assert resolve_config("unetpp", "smoke").scale_from_data is False  # the other presets keep their size
    with pytest.raises(Exception, match="img_size must be a multiple of 32"):
        resolve_config("unetpp", "cpu", img_size=100, precision="fp32")
