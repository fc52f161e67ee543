"""The seed notebook's ways, kept only as references for equivalence tests and benchmarks.

Straightforward per-label and per-pixel code, written the way the seed (and most notebooks) do it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def remove_small_components_seed(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The seed's loop: one full-image comparison per connected component."""
    num_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    clean = np.zeros_like(mask, dtype=np.uint8)
    for i in range(1, num_labels):
        comp = labels == i
        if stats[i, cv2.CC_STAT_AREA] >= min_area:
            clean[comp] = 1
    return clean


def rle_encode_scan(mask: np.ndarray) -> str:
    """A per-pixel run scan in column-major order (1-indexed starts)."""
    runs, start, prev = [], 0, 0
    flat = mask.T.flatten()
    for i, value in enumerate(flat):
        if value and not prev:
            start = i + 1
        elif not value and prev:
            runs += [start, i + 1 - start]
        prev = value
    if prev:
        runs += [start, len(flat) + 1 - start]
    return " ".join(map(str, runs))


@torch.inference_mode()
def seed_tta_logits(models, image_rgb: np.ndarray, size: int, mean, std) -> list[np.ndarray]:
    """The seed's inference: per image and per model, one forward of the image and one of its
    horizontal flip (four single-image forwards for two models); flip-averaged logits."""
    x = cv2.resize(image_rgb, (size, size)).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0)
    out = []
    for model in models:
        logits = (model(x) + torch.flip(model(torch.flip(x, dims=[3])), dims=[3])) / 2.0
        out.append(logits[0, 0].numpy())
    return out
