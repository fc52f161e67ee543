"""Step-keyed preview images for the MLflow UI's image grid: a fixed handful of validation images,
chosen from the split alone, drawn small with the true and predicted outlines.

Chosen from the manifest alone, the same split gives the same images under the same keys in
every run (`train` at each round, `tune` for its best blend), so the run charts' image grid
lines runs up side by side.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd

COUNT = 6
MAX_SIDE = 256  # pixels of a preview's long side: small enough for a grid of many runs
TRUTH, PREDICTION = (0, 255, 0), (255, 0, 0)  # RGB: green true outline, red predicted


def choose(val: pd.DataFrame, count: int = COUNT) -> list[int]:
    """Positions (in split order) of the preview images of a split's manifest rows: one empty
    image when there is one, the images with the smallest potholes (relative to the image) for
    half of the rest, and the others spread evenly over the range of pothole area."""
    val = val.reset_index(drop=True)
    empty = val.index[val["area_ratio"] <= 0].tolist()
    nonempty = val[val["area_ratio"] > 0]
    smallest = (nonempty["min_component_pixels"] / (nonempty["height"] * nonempty["width"])).sort_values(
        kind="stable").index.tolist()
    chosen = empty[:1]
    chosen += smallest[:max(0, (count - len(chosen)) // 2)]
    rest = nonempty.drop(index=chosen, errors="ignore").sort_values("area_ratio", kind="stable").index.tolist()
    wanted = count - len(chosen)
    if rest and wanted > 0:
        picks = np.unique(np.linspace(0, len(rest) - 1, min(wanted, len(rest))).round().astype(int))
        chosen += [rest[i] for i in picks]
    chosen += [i for i in empty[1:] if len(chosen) < count]  # a split with few potholes
    return sorted(chosen[:count])


def key(prefix: str, image_path: str) -> str:
    """An image-grid key from the file's stem, in the characters MLflow allows in keys."""
    stem = re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(image_path).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return f"{prefix}/{stem}"


def outline(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray,
            max_side: int = MAX_SIDE) -> np.ndarray:
    """The RGB image shrunk to ``max_side`` (aspect kept), the true outline in green and the
    predicted one in red (no truth: the prediction alone)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    panel = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    for mask, color in ((truth, TRUTH), (prediction, PREDICTION)):
        if mask is None:
            continue
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(panel, contours, -1, color, 1)
    return panel


def predict(model, images: np.ndarray, mean, std, threshold: float, device) -> np.ndarray:
    """A network's masks (N,H,W) of model-size uint8 images, as validation scores them: one
    forward, no TTA."""
    import torch

    from potholes.inference.normalize import normalize_batch

    with torch.inference_mode():
        logits = model.eval()(normalize_batch(images, mean, std).to(device))
    return (torch.sigmoid(logits.float()) > threshold).cpu().numpy()[:, 0]
