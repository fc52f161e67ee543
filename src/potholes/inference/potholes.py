"""Each pothole of a predicted mask: the 8-connected components left after min-area removal, with
area, bounding box and probability statistics in the original image's pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np

from potholes.inference import postprocess as pp

FIELDS = ["id", "area_pixels", "area_fraction", "bbox", "mean_probability", "max_probability"]
CSV_COLUMNS = ["ImageId", "id", "area_pixels", "area_fraction", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
               "mean_probability", "max_probability"]


def probability_at(prob: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The model-size probability map resized (bilinear, as `probability_to_mask`) to ``out_hw``."""
    if prob.shape == tuple(out_hw):
        return prob
    return cv2.resize(prob.astype(np.float32), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)


def describe(mask: np.ndarray, prob: np.ndarray) -> list[dict]:
    """One dict per 8-connected component of ``mask`` (ids 1.. in OpenCV's raster order).

    ``prob`` is the probability map at the mask's size. Mean and max are taken inside each
    component's bounding box only, so the cost follows the potholes' size, not the image's.
    """
    if mask.shape != prob.shape:
        raise ValueError(f"mask {mask.shape} and probabilities {prob.shape} must have the same size")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8, copy=False), connectivity=8)
    total = mask.shape[0] * mask.shape[1]
    potholes = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label, :5])
        inside = prob[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label]
        potholes.append({"id": label, "area_pixels": area, "area_fraction": round(area / total, 8),
                         "bbox": [x, y, w, h], "mean_probability": round(float(inside.mean()), 6),
                         "max_probability": round(float(inside.max()), 6)})
    return potholes


def segment(prob: np.ndarray, threshold: float, min_area: int, out_hw: tuple[int, int],
            resize_first: bool = True) -> tuple[np.ndarray, list[dict]]:
    """The binary mask at ``out_hw`` (exactly `postprocess.probability_to_mask`) and its potholes."""
    mask = pp.probability_to_mask(prob, threshold, min_area, out_hw, resize_first)
    return mask, describe(mask, probability_at(prob, out_hw))


def to_json(potholes: list[dict]) -> str:
    """Compact JSON list for the served ``potholes`` column."""
    return json.dumps(potholes, separators=(",", ":"))


def csv_rows(image_id: str, potholes: list[dict]) -> list[dict]:
    """Rows of potholes.csv for one image (bbox split into four columns)."""
    rows = []
    for p in potholes:
        flat = {"ImageId": image_id, **p, **dict(zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), p["bbox"]))}
        rows.append({column: flat[column] for column in CSV_COLUMNS})
    return rows
