import pandas as pd
import pytest

from potholes.data import statistics as analysis


def manifest():
    # Four 10x10 images: one empty, one tiny (1 px), two with several components.
    return pd.DataFrame({
        "split": ["train", "train", "train", "val"],
        "pothole_pixels": [0, 1, 30, 50],
        "area_ratio": [0.0, 0.01, 0.30, 0.50],
        "num_components": [0, 1, 2, 3],
        "max_component_pixels": [0, 1, 20, 30],
    })


COMPONENTS = [1, 10, 20, 5, 15, 30]


def test_summary_numbers_match_hand_computation():
    s = analysis.summarize(manifest(), COMPONENTS)
    assert (s["num_pairs"], s["num_train"], s["num_val"]) == (4, 3, 1)
    assert (s["with_pothole"], s["without_pothole"]) == (3, 1)
    assert s["empty_mask_ratio"] == 0.25
    # numpy linear quantiles of [0, .01, .3, .5]: p50 = (0.01 + 0.3) / 2
    assert s["area_ratio_quantiles"]["p50"] == pytest.approx(0.155)
    assert s["area_ratio_quantiles"]["p10"] == pytest.approx(0.003)
    assert s["components_per_image_mean"] == 1.5 and s["components_per_image_max"] == 3
    # dominant share per non-empty image: 1/1, 20/30, 30/50
    assert s["dominant_component_ratio_mean"] == pytest.approx((1 + 2 / 3 + 0.6) / 3)
    # sorted areas [1,5,10,15,20,30]; p10 at position 0.5 -> 3
    assert s["component_area_quantiles"]["p10"] == pytest.approx(3.0)
    assert s["min_area_candidate"] == 3
    assert s["component_area_quantiles"]["p50"] == pytest.approx(12.5)
    # < 1 %: the empty image only (the 1 % image is not below)
    assert s["tiny_pothole_share"] == 0.25
    assert s["feasibility"] == "FAVORABLE"


@pytest.mark.parametrize("share,label", [(0.61, "HARD"), (0.6, "MODERATE"), (0.41, "MODERATE"), (0.4, "FAVORABLE")])
def test_feasibility_rule(share, label):
    assert analysis.feasibility_label(share) == label


def test_flatten_and_format():
    s = analysis.summarize(manifest(), COMPONENTS)
    flat = analysis.flatten_metrics(s)
    assert flat["area_ratio_quantiles_p50"] == pytest.approx(0.155)
    assert flat["threshold_prior_start"] == 0.30
    assert "feasibility" not in flat
    text = analysis.format_summary(s)
    assert "MIN_AREA candidate    : 3 px" in text
