"""The registered ensemble behind the real `mlflow models serve` process."""

import base64
import json
from pathlib import Path

import pandas as pd
import pytest
import requests
from helpers import ModelServer

from potholes.serving.requests import MAX_IMAGE_PIXELS, MAX_REQUEST_ROWS, OUTPUT_COLUMNS
from potholes.stages.predict import PredictConfig, run_predict


@pytest.fixture
def server(in_smoke_store, tmp_path):
    with ModelServer("models:/pothole-ensemble@champion", in_smoke_store.uri, tmp_path / "serve.log") as running:
        yield running.url


def invoke(url, body):
    return requests.post(f"{url}/invocations", json=body, timeout=60)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.slow
def test_served_model_matches_predict_and_rejects_bad_requests(in_smoke_store, server, tmp_path):
    output = tmp_path / "submission.csv"
    run_predict(str(in_smoke_store.data), PredictConfig(output=str(output)), progress=False)
    submission = pd.read_csv(output, keep_default_na=False)
    potholes = pd.read_csv(tmp_path / "submission.potholes.csv")
    # the image with the most potholes, so the potholes field is compared on real content
    expected = submission.set_index("ImageId").loc[potholes["ImageId"].value_counts().index[0]]
    image = b64(in_smoke_store.data / "test" / "images" / expected.name)
    expected_potholes = potholes[potholes["ImageId"] == expected.name]

    bodies = [{"dataframe_split": {"columns": ["image"], "data": [[image]]}},
              {"dataframe_records": [{"image": image}]},
              {"inputs": {"image": [image]}}]
    for body in bodies:
        response = invoke(server, body)
        assert response.status_code == 200, response.text
        row = response.json()["predictions"][0]
        assert row["rle"] == expected["rle"]
        assert set(row) == set(OUTPUT_COLUMNS)
        served = json.loads(row["potholes"])
        assert row["num_potholes"] == len(served) == len(expected_potholes) > 0
        assert [p["bbox"] for p in served] == expected_potholes[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].values.tolist()
        assert [p["area_pixels"] for p in served] == expected_potholes["area_pixels"].tolist()
        assert [p["mean_probability"] for p in served] == pytest.approx(expected_potholes["mean_probability"].tolist())

    torch_row = invoke(server, {"dataframe_records": [{"image": image}], "params": {"runtime": "torch"}})
    assert torch_row.status_code == 200, torch_row.text
    assert set(json.loads(torch_row.json()["predictions"][0]["potholes"])[0]) == {
        "id", "area_pixels", "area_fraction", "bbox", "mean_probability", "max_probability"}

    strict = invoke(server, {"dataframe_records": [{"image": image}], "params": {"threshold": 0.999}})
    assert strict.status_code == 200 and strict.json()["predictions"][0]["pothole_pixels"] <= row["pothole_pixels"]

    import cv2
    import numpy as np

    huge = tmp_path / "huge.png"
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10
    cv2.imwrite(str(huge), np.zeros((side, side), np.uint8))
    bad = [({"dataframe_records": [{"image": "%%% not base64"}]}, "not valid base64"),
           ({"dataframe_records": [{"image": base64.b64encode(b"plain text").decode()}]}, "not a JPEG or PNG"),
           ({"dataframe_records": [{"image": b64(huge)}]}, "over the limit"),
           ({"dataframe_records": [{"picture": image}]}, "image"),
           ({"dataframe_records": [{"image": image}] * (MAX_REQUEST_ROWS + 1)},
            f"{MAX_REQUEST_ROWS + 1} rows, over the limit of {MAX_REQUEST_ROWS} rows per request"),
           ({"dataframe_records": [{"image": image}], "params": {"threshold": 2}},
            "param 'threshold': got 2.0, expected a number strictly between 0 and 1"),
           ({"dataframe_records": [{"image": image}], "params": {"min_area": -5}},
            "param 'min_area': got -5, expected a whole number of pixels >= 0"),
           ({"dataframe_records": [{"image": image}], "params": {"runtime": "gpu"}},
            "param 'runtime': got 'gpu', expected one of ['auto', 'onnx', 'openvino', 'torch']")]
    for body, message in bad:
        response = invoke(server, body)
        assert response.status_code == 400, (message, response.status_code, response.text[:500])
        assert message in response.json()["message"], response.json()["message"]
        if "params" in body:
            assert "dataset problem" not in response.json()["message"]
    assert invoke(server, bodies[0]).status_code == 200  # still serving
