"""A deterministic, pothole-like synthetic dataset in the competition layout.

It lets a fresh machine run the whole pipeline and lets tests run without the real photos.
Scenes: asphalt texture, lane markings, soft shadows, and irregular dark potholes with a lighter
rim, some holding water. About 10 % of images have no pothole.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from potholes.errors import ConfigError

EMPTY_SHARE = 0.10


def _asphalt(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(85, 125)
    coarse = cv2.resize(rng.normal(0, 12, (size // 16 + 1, size // 16 + 1)), (size, size), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 9, (size, size))
    speckle = (rng.random((size, size)) < 0.02) * rng.normal(35, 10, (size, size))
    gray = base + coarse + grain + speckle
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.03, 3)
    return np.clip(gray[..., None] * tint, 0, 255)


def _lane_marking(rng: np.random.Generator, image: np.ndarray) -> None:
    size = image.shape[0]
    color = (235, 235, 230) if rng.random() < 0.7 else (225, 190, 60)
    x0, x1 = rng.integers(0, size, 2)
    thickness = max(2, size // int(rng.integers(25, 45)))
    dashed = rng.random() < 0.5
    segments = 8 if dashed else 1
    for s in range(segments):
        if dashed and s % 2:
            continue
        t0, t1 = s / segments, (s + 1) / segments
        p0 = (int(x0 + (x1 - x0) * t0), int(size * t0))
        p1 = (int(x0 + (x1 - x0) * t1), int(size * t1))
        cv2.line(image, p0, p1, color, thickness, lineType=cv2.LINE_AA)


def _blob(rng: np.random.Generator, center: tuple[float, float], radius: float, size: int) -> np.ndarray:
    """Irregular closed outline: an ellipse with random low-frequency radial wobble."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = np.ones_like(angles)
    for k in range(2, 6):
        wobble += rng.normal(0, 0.12 / k * 2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.55, 1.0)
    rotation = rng.uniform(0, np.pi)
    x = radius * wobble * np.cos(angles)
    y = radius * wobble * np.sin(angles) * stretch
    xr = x * np.cos(rotation) - y * np.sin(rotation) + center[0]
    yr = x * np.sin(rotation) + y * np.cos(rotation) + center[1]
    points = np.stack([xr, yr], axis=1).round().astype(np.int32).clip(0, size - 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return mask


def _pothole(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    size = image.shape[0]
    radius = size * rng.uniform(0.05, 0.22)
    center = (rng.uniform(radius, size - radius), rng.uniform(size * 0.3, size - radius * 0.6))
    hole = _blob(rng, center, radius, size)
    if hole.sum() < 20:
        return
    rim = cv2.dilate(hole, np.ones((5, 5), np.uint8), iterations=max(1, size // 128)) - hole
    image[rim.astype(bool)] = image[rim.astype(bool)] * 0.6 + 170 * 0.4
    inside = hole.astype(bool)
    depth = cv2.GaussianBlur(hole.astype(np.float32), (0, 0), radius / 4 + 1)
    darkness = 0.35 + 0.35 * (1 - depth[inside] / max(depth.max(), 1e-6))
    image[inside] = image[inside] * darkness[:, None] + rng.normal(0, 6, (inside.sum(), 1))
    if rng.random() < 0.3:  # standing water: smooth, bluish, with a highlight
        water = cv2.erode(hole, np.ones((3, 3), np.uint8), iterations=max(1, size // 96)).astype(bool)
        image[water] = image[water] * 0.3 + np.array([70, 85, 105]) * 0.7
        hx, hy = int(center[0] - radius * 0.3), int(center[1] - radius * 0.2)
        cv2.ellipse(image, (hx, hy), (max(1, int(radius * 0.25)), max(1, int(radius * 0.08))), 0, 0, 360,
                    (190, 200, 210), -1)
    mask[inside] = 1


def _shadow(rng: np.random.Generator, image: np.ndarray) -> None:
    size = image.shape[0]
    shade = _blob(rng, (rng.uniform(0, size), rng.uniform(0, size)), size * rng.uniform(0.2, 0.45), size)
    soft = cv2.GaussianBlur(shade.astype(np.float32), (0, 0), size / 40)
    image *= (1 - 0.45 * soft)[..., None]


def make_scene(rng: np.random.Generator, size: int, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its {0,1} mask."""
    image = _asphalt(rng, size)
    if rng.random() < 0.6:
        _lane_marking(rng, image)
    mask = np.zeros((size, size), np.uint8)
    if not empty:
        for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
            _pothole(rng, image, mask)
    if rng.random() < 0.4:
        _shadow(rng, image)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(out_dir: str | Path, n_train: int = 40, n_test: int = 10, size: int = 256, seed: int = 0) -> Path:
    """Write ``train/images``, ``train/mask``, ``test/images``, ``test/mask`` and
    ``sample_submission.csv`` (rows in a shuffled, non-alphabetical order, like the competition's)."""
    if n_train < 2 or n_test < 1 or size < 32:
        raise ConfigError(f"need n_train >= 2, n_test >= 1 and size >= 32 (got {n_train}, {n_test}, {size})")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(np.arange(1, n_train + n_test + 1))
    empties = set(rng.choice(n_train + n_test, size=max(1, round((n_train + n_test) * EMPTY_SHARE)), replace=False).tolist())
    test_ids = []
    for i, number in enumerate(numbers):
        split = "train" if i < n_train else "test"
        image, mask = make_scene(rng, size, empty=i in empties)
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "mask").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / split / "images" / f"pothole_{number}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(out / split / "mask" / f"mask_{number}.png"), mask * 255)
        if split == "test":
            test_ids.append(f"pothole_{number}.jpg")
    pd.DataFrame({"ImageId": test_ids, "rle": ""}).to_csv(out / "sample_submission.csv", index=False)
    return out
