"""The model scale chosen from the training masks: the cpu preset's default, and ``--img-size
auto`` with any preset (issue 23 point 2).

The preset's ``img_size`` is the floor. The statistic is each training photo's smallest pothole,
as a share of the photo (prepare's manifest: ``min_component_pixels``); at ``img_size`` a photo is
seen at about ``img_size``² pixels, so that share times ``img_size``² is the pothole's size in
model pixels. When the 25th percentile of those sizes is under ``min_pixels``, the scale grows
until it is not, up to ``max_scale`` times the preset's. Training then runs on crops of the
preset's size at that scale, so a step costs what it did; validation and inference see whole
photos at the new scale (tiled above `EnsembleConfig.tile_size`).

``MIN_PIXELS`` sits where doubling the scale stopped paying on the mosaic copies of the dev set
(BENCHMARKS.md, rows 6f and 6g): +0.10 validation Dice when that pothole covered 9 px, +0.004
(inside the seeds' spread) at 83 px. Both shared datasets (326 and 824 px) keep the preset's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from potholes.inference.geometry import SIZE_MULTIPLE, canvas_hw

MIN_PIXELS = 64  # model pixels of the 25th-percentile smallest pothole (an 8x8 blob)
MAX_SCALE = 2.0  # validation and inference pixels grow with its square


@dataclass(frozen=True)
class Scale:
    img_size: int
    crop_size: int
    reason: str


def choose(manifest: pd.DataFrame, img_size: int, crop_size: int, keep_aspect: bool = True,
           min_pixels: int | None = None, max_scale: float = MAX_SCALE) -> Scale:
    """``img_size`` and ``crop_size`` for the training photos of ``manifest``, and why, in words."""
    min_pixels = MIN_PIXELS if min_pixels is None else min_pixels
    train = manifest[(manifest["split"] == "train") & (manifest["num_components"] > 0)]
    if train.empty:
        return Scale(img_size, crop_size, f"img_size {img_size}: no potholes in the training masks to scale by")
    shares = train["min_component_pixels"] / (train["height"] * train["width"])
    pixels = float(np.quantile(shares, 0.25)) * img_size ** 2
    said = f"the 25th-percentile smallest training pothole covers {pixels:.0f} model px at {img_size}"
    if pixels >= min_pixels:
        return Scale(img_size, crop_size, f"img_size {img_size}: {said} (at least {min_pixels})")
    cap = SIZE_MULTIPLE * int(img_size * max_scale / SIZE_MULTIPLE)
    wanted = SIZE_MULTIPLE * math.ceil(img_size * math.sqrt(min_pixels / max(pixels, 1e-9)) / SIZE_MULTIPLE)
    size = min(wanted, cap)
    shapes = zip(train["height"], train["width"])
    crop = min(crop_size or img_size, min(canvas_hw(shapes, size, keep_aspect)))
    capped = f", capped at {max_scale:g}x" if wanted > cap else ""
    return Scale(size, crop, f"img_size {size}{capped}, trained on {crop} px crops: {said}, under {min_pixels}")
