"""Requests to the served ensemble: limits, input and param checks, and batch-by-batch answers.

Every client mistake (bad base64, not an image, too big, too many rows, a bad param) becomes an
MlflowException with INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import pandas as pd

from potholes.data.images import decode_image
from potholes.data.problems import DatasetError
from potholes.inference import postprocess as pp
from potholes.inference import potholes as instances
from potholes.inference.runtime import check_runtime
from potholes.serving.params import ParamError, check_min_area, check_threshold

# Largest image accepted (width x height); checked from the file header before decoding, so an
# oversized upload cannot exhaust the server's memory.
MAX_IMAGE_PIXELS = 40_000_000
# Most rows (images) in one request: at ~0.1-0.5 s an image on 2 CPU cores this keeps a request
# well inside the server's 60 s default timeout; send more images as more requests.
MAX_REQUEST_ROWS = 32
OUTPUT_COLUMNS = ["rle", "height", "width", "pothole_pixels", "pothole_fraction", "num_potholes", "potholes"]


def _where(row: int) -> str:
    return f"row {row} of column 'image'"


def image_bytes(value, row: int) -> bytes:
    """The raw file of a request row, after checking it is base64 and an image within the pixel
    limit (from its header: nothing is decoded yet)."""
    from PIL import Image

    where = _where(row)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: expected a base64-encoded JPEG or PNG string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DatasetError(f"{where}: not valid base64 ({exc})") from exc
    try:
        with Image.open(io.BytesIO(raw)) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours
        raise DatasetError(f"{where}: image is over the limit of {MAX_IMAGE_PIXELS} pixels ({exc})") from exc
    except Exception as exc:  # Pillow raises several types for non-images
        raise DatasetError(f"{where}: the bytes are not a JPEG or PNG image") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{where}: image is {width}x{height} = {width * height} pixels, "
                           f"over the limit of {MAX_IMAGE_PIXELS} pixels")
    return raw


def decode_row(raw: bytes, row: int) -> np.ndarray:
    try:
        return decode_image(raw, _where(row))
    except DatasetError as exc:
        raise DatasetError(f"{_where(row)}: the bytes are not a decodable JPEG or PNG image") from exc


def decode_base64_image(value, row: int) -> np.ndarray:
    """A base64 JPEG/PNG from a request row to RGB uint8, with errors a client can act on."""
    return decode_row(image_bytes(value, row), row)


def request_images(model_input) -> list[bytes]:
    """Every row's file, checked before any decoding or inference."""
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise DatasetError(f"input needs a column 'image' of base64 JPEG/PNG strings; got {found}")
    if len(model_input) > MAX_REQUEST_ROWS:
        raise DatasetError(f"the request has {len(model_input)} rows, over the limit of {MAX_REQUEST_ROWS} "
                           "rows per request; send the images in several requests")
    return [image_bytes(value, row) for row, value in enumerate(model_input["image"].tolist())]


def row_record(mask: np.ndarray, potholes: list[dict]) -> dict:
    """One output row: the mask's RLE and statistics, and its potholes as a JSON list."""
    height, width = mask.shape
    pixels = int(mask.sum())
    return {"rle": pp.rle_encode(mask), "height": height, "width": width, "pothole_pixels": pixels,
            "pothole_fraction": pixels / (height * width), "num_potholes": len(potholes),
            "potholes": instances.to_json(potholes)}


def predict_frame(predictor, model_input, params: dict | None) -> pd.DataFrame:
    """Answer a request batch by batch: only ``predictor.batch_size`` images are decoded at a time
    and each is dropped once its row is built."""
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    params = params or {}
    rows = []
    try:
        threshold = check_threshold(params.get("threshold"))
        min_area = check_min_area(params.get("min_area"))
        runtime = predictor.runtime_for(check_runtime(params.get("runtime")))
        raws = request_images(model_input)
        for start in range(0, len(raws), predictor.batch_size):
            images = [decode_row(raws[row], row) for row in range(start, min(start + predictor.batch_size, len(raws)))]
            rows.extend(row_record(mask, potholes)
                        for mask, potholes in predictor.predict(images, threshold, min_area, runtime))
            del images
    except (DatasetError, ParamError) as exc:
        raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
