"""Each pothole of a mask, and the inference params' errors (no model needed)."""

import json

import numpy as np
import pytest

from potholes.inference import potholes as instances
from potholes.inference.postprocess import probability_to_mask
from potholes.inference.runtime import resolve_runtime
from potholes.serving.params import ParamError, check_min_area, check_threshold


def blobs() -> np.ndarray:
    prob = np.full((40, 60), 0.1, np.float32)
    prob[5:15, 10:30] = 0.8  # 200 px
    prob[8, 12] = 0.95
    prob[30:33, 50:53] = 0.6  # 9 px: removed by min_area 10
    prob[25:35, 2:6] = 0.7  # 40 px
    return prob


def test_potholes_are_the_components_left_after_min_area_removal():
    mask, found = instances.segment(blobs(), 0.5, 10, (40, 60))
    np.testing.assert_array_equal(mask, probability_to_mask(blobs(), 0.5, 10, (40, 60)))
    assert [p["id"] for p in found] == [1, 2]
    first, second = found
    assert first == {"id": 1, "area_pixels": 200, "area_fraction": round(200 / 2400, 8), "bbox": [10, 5, 20, 10],
                     "mean_probability": pytest.approx((199 * 0.8 + 0.95) / 200, abs=1e-6),
                     "max_probability": pytest.approx(0.95, abs=1e-6)}
    assert second["bbox"] == [2, 25, 4, 10] and second["area_pixels"] == 40
    assert second["mean_probability"] == pytest.approx(0.7, abs=1e-6)
    assert json.loads(instances.to_json(found)) == found
    rows = instances.csv_rows("a.jpg", found)
    assert list(rows[0]) == instances.CSV_COLUMNS
    assert [r["bbox_x"] for r in rows] == [10, 2] and rows[1]["bbox_h"] == 10


def test_boxes_are_in_original_image_pixels():
    prob = blobs()
    mask, found = instances.segment(prob, 0.5, 10, (80, 180))  # 2x taller, 3x wider than the model's map
    assert mask.shape == (80, 180) and sum(p["area_pixels"] for p in found) == int(mask.sum())
    x, y, w, h = found[0]["bbox"]
    assert abs(x - 30) <= 2 and abs(y - 10) <= 2 and abs(w - 60) <= 3 and abs(h - 20) <= 3
    assert found[0]["area_fraction"] == round(found[0]["area_pixels"] / (80 * 180), 8)
    assert all(0.5 < p["mean_probability"] <= p["max_probability"] <= 1 for p in found)


def test_no_potholes_and_size_mismatch():
    assert instances.segment(np.zeros((16, 16), np.float32), 0.5, 0, (16, 16))[1] == []
    with pytest.raises(ValueError, match="same size"):
        instances.describe(np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.float32))


@pytest.mark.parametrize("check, value, expected", [
    (check_threshold, 2, "param 'threshold': got 2, expected a number strictly between 0 and 1"),
    (check_threshold, "abc", "param 'threshold': got 'abc'"),
    (check_threshold, float("nan"), "param 'threshold': got nan"),
    (check_min_area, -1, "param 'min_area': got -1, expected a whole number of pixels >= 0"),
    (check_min_area, 2.5, "param 'min_area': got 2.5"),
])
def test_bad_params_name_the_param_the_value_and_what_is_expected(check, value, expected):
    with pytest.raises(ParamError) as err:
        check(value)
    assert str(err.value).startswith(expected)


def test_good_params_and_runtime_choice():
    assert check_threshold("0.3") == 0.3 and check_threshold(None) is None
    assert check_min_area(12.0) == 12 and check_min_area(0) == 0
    assert resolve_runtime("auto", has_onnx=True, cuda=False) == "onnx"
    assert resolve_runtime("auto", has_onnx=True, cuda=True) == "torch"
    assert resolve_runtime("auto", has_onnx=False, cuda=False) == "torch"
    assert resolve_runtime("onnx", has_onnx=True, cuda=True) == "onnx"
    assert resolve_runtime("torch", has_onnx=True, cuda=False) == "torch"
    with pytest.raises(ParamError, match=r"param 'runtime': got 'gpu', expected one of \['auto', 'onnx', 'openvino', 'torch'\]"):
        resolve_runtime("gpu", has_onnx=True, cuda=False)
    with pytest.raises(ParamError, match="param 'runtime': got 'onnx'.*no ONNX graphs"):
        resolve_runtime("onnx", has_onnx=False, cuda=False)
