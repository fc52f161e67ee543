"""The registered ensemble behind the real `mlflow models serve` process."""

import base64
from pathlib import Path

import pandas as pd
import pytest
import requests

from common import ModelServer

from potholes.ensemble import MAX_IMAGE_PIXELS
from potholes.predict import PredictConfig, run_predict


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
    expected = pd.read_csv(output, keep_default_na=False).iloc[0]
    image = b64(in_smoke_store.data / "test" / "images" / expected["ImageId"])

    bodies = [{"dataframe_split": {"columns": ["image"], "data": [[image]]}},
              {"dataframe_records": [{"image": image}]},
              {"inputs": {"image": [image]}}]
    for body in bodies:
        response = invoke(server, body)
        assert response.status_code == 200, response.text
        row = response.json()["predictions"][0]
        assert row["rle"] == expected["rle"]
        assert set(row) == {"rle", "height", "width", "pothole_pixels", "pothole_fraction", "num_potholes"}

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
           ({"dataframe_records": [{"image": image}], "params": {"threshold": 7}}, "threshold")]
    for body, message in bad:
        response = invoke(server, body)
        assert response.status_code == 400, (message, response.status_code, response.text[:500])
        assert message in response.json()["message"]
    assert invoke(server, bodies[0]).status_code == 200  # still serving
