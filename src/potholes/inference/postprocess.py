"""Pure post-processing shared by tune, predict and serving: blending, thresholds, small-component
removal, resizing back, RLE, and Dice/IoU."""

from __future__ import annotations

import cv2
import numpy as np


def blend_logits(logits_unetpp: np.ndarray, logits_deeplab: np.ndarray, w_unetpp: float) -> np.ndarray:
    """Logit-space ensemble (as the seed): w * a + (1 - w) * b."""
    return w_unetpp * logits_unetpp + (1.0 - w_unetpp) * logits_deeplab


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels.

    One labelling pass and a per-label lookup table, instead of comparing the whole label image
    once per component (the seed's loop, quadratic in the number of components).
    """
    mask = mask.astype(np.uint8, copy=False)
    if min_area <= 1:
        return mask.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # background
    return keep.astype(np.uint8)[labels]


def scaled_min_area(min_area_at_512: float, img_size: int) -> int:
    """The seed's min-area range is in pixels at 512 px; scale it to another model size."""
    return int(round(min_area_at_512 * (img_size / 512) ** 2))


def probability_to_mask(prob: np.ndarray, threshold: float, min_area: int, out_hw: tuple[int, int] | None = None,
                        resize_first: bool = True) -> np.ndarray:
    """Threshold a model-size probability map, remove small components, and bring it to ``out_hw``.

    ``resize_first`` resizes the probabilities (bilinear) and thresholds at the image's own size,
    with ``min_area`` (model-size pixels) scaled by the area ratio; otherwise the seed's order:
    threshold and clean at model size, then resize the mask (nearest).
    """
    h, w = prob.shape
    if out_hw is None or out_hw == (h, w):
        return remove_small_components(prob > threshold, min_area)
    oh, ow = out_hw
    if resize_first:
        big = cv2.resize(prob.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
        return remove_small_components(big > threshold, int(round(min_area * (oh * ow) / (h * w))))
    small = remove_small_components(prob > threshold, min_area)
    return cv2.resize(small, (ow, oh), interpolation=cv2.INTER_NEAREST)


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE: column-major (top to bottom, then left to right), 1-indexed 'start length' pairs.
    An empty mask encodes as ''."""
    pixels = np.asarray(mask, dtype=bool).ravel(order="F")
    padded = np.concatenate([[False], pixels, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(map(str, changes))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of `rle_encode`; raises ValueError on malformed or out-of-range runs."""
    h, w = shape
    flat = np.zeros(h * w, np.uint8)
    if isinstance(rle, str) and rle.strip():
        numbers = np.asarray(rle.split(), dtype=np.int64)
        if len(numbers) % 2:
            raise ValueError("RLE must hold an even count of numbers (start length pairs)")
        starts, lengths = numbers[0::2] - 1, numbers[1::2]
        if (starts < 0).any() or (lengths <= 0).any() or (starts + lengths > h * w).any():
            raise ValueError(f"RLE run outside a {h}x{w} mask")
        for start, length in zip(starts, lengths):
            flat[start:start + length] = 1
    return flat.reshape((h, w), order="F")


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; empty vs empty scores 1 (as the seed's dice_coef)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(pred, truth).sum() / total


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else np.logical_and(pred, truth).sum() / union


def dice_per_image(scores: np.ndarray, masks: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Dice of each image: (N,H,W) scores thresholded at ``threshold`` (probabilities, or logits
    with a logit threshold), small components removed, against (N,H,W) binary masks."""
    return np.array([dice_score(remove_small_components(s > threshold, min_area), m) for s, m in zip(scores, masks)])


def mean_dice(scores: np.ndarray, masks: np.ndarray, threshold: float, min_area: int) -> float:
    return float(np.mean(dice_per_image(scores, masks, threshold, min_area)))
