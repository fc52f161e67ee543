"""Tiled inference: a network run on overlapping windows of an image too large to run whole, the
windows' logits blended back into one map at the image's model shape.

A photo is tiled only when a side of its model shape (`geometry.model_hw`) is longer than
``tile_size``; at the presets' sizes (256 px) no photo is, and the network sees the whole image as
before. Windows are as few as cover the side with at least ``overlap`` pixels shared between
neighbours, and equal-sized (multiples of 32), so all windows of a batch share one forward.

Blending: across each shared strip the weight ramps linearly from one window to the next, and is
zero in the strip's outer quarter on each side, where a window's zero padding at its own edge
would show. Weights of overlapping windows sum to one everywhere. For a network that sees no more
than ``overlap / 4`` pixels around an output pixel, the tiled logits equal the whole-image logits;
UNet++ and DeepLabV3+ see further (DeepLabV3+ pools its whole input), so for them tiling is an
approximation that keeps memory and time per window bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from potholes.errors import raise_all
from potholes.inference.geometry import SIZE_MULTIPLE


def check(tile_size: int, overlap: int) -> None:
    """Raises one ConfigError naming every problem of a (tile_size, tile_overlap) pair."""
    problems = []
    size_ok = isinstance(tile_size, int) and tile_size > 0 and not tile_size % SIZE_MULTIPLE
    if not size_ok:
        problems.append(f"tile_size must be a positive multiple of {SIZE_MULTIPLE}, got {tile_size!r}")
    most = tile_size // 2 if size_ok else None  # half of a valid tile_size; unknown otherwise
    if not isinstance(overlap, int) or overlap < 0 or (most is not None and overlap > most):
        bound = f"half of tile_size ({most})" if most is not None else "half of tile_size"
        problems.append(f"tile_overlap must be an integer from 0 to {bound}, got {overlap!r}")
    raise_all(problems, "tiling parameters")


def windows(length: int, tile_size: int, overlap: int) -> tuple[int, list[int]]:
    """(window length, window starts) along one side of ``length`` pixels: the fewest windows of
    at most ``tile_size`` that cover it with at least ``overlap`` pixels between neighbours, all
    of one length (a multiple of 32 up to ``length``). One window of ``length`` when it fits."""
    check(tile_size, overlap)
    if length <= tile_size:
        return length, [0]
    count = math.ceil((length - overlap) / (tile_size - overlap))
    size = min(tile_size, SIZE_MULTIPLE * math.ceil((length + (count - 1) * overlap) / count / SIZE_MULTIPLE))
    last = length - size
    return size, [round(k * last / (count - 1)) for k in range(count)]


def _ramp(shared: int) -> np.ndarray:
    """Weights, rising from 0 to 1, of the window that enters across a strip of ``shared`` pixels."""
    margin = shared // 4
    position = np.arange(shared, dtype=np.float64) + 0.5
    return np.clip((position - margin) / max(shared - 2 * margin, 1), 0, 1)


def axis_weights(length: int, size: int, starts: list[int]) -> list[np.ndarray]:
    """Per window along one side, its blend weight at each of its ``size`` pixels."""
    out = []
    for k, start in enumerate(starts):
        weight = np.ones(size)
        if k > 0:  # the strip shared with the previous window
            shared = starts[k - 1] + size - start
            weight[:shared] = np.minimum(weight[:shared], _ramp(shared))
        if k + 1 < len(starts):  # the strip shared with the next one: the previous ramp's complement
            shared = start + size - starts[k + 1]
            weight[size - shared:] = np.minimum(weight[size - shared:], 1 - _ramp(shared))
        out.append(weight)
    return out


def run_tiled(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tile_size: int, overlap: int,
              batch_size: int) -> np.ndarray:
    """``forward``'s (N, H, W) logits of a uint8 (N, H, W, 3) batch, computed window by window when
    H or W is longer than ``tile_size`` (``batch_size`` windows a forward), else in one call."""
    n, height, width = images.shape[:3]
    if height <= tile_size and width <= tile_size:
        return forward(images)
    (tile_h, ys), (tile_w, xs) = windows(height, tile_size, overlap), windows(width, tile_size, overlap)
    weights_y, weights_x = axis_weights(height, tile_h, ys), axis_weights(width, tile_w, xs)
    places = [(i, a, b) for i in range(n) for a in range(len(ys)) for b in range(len(xs))]
    out = np.zeros((n, height, width), np.float64)
    total = np.zeros((height, width), np.float64)  # 1 everywhere unless windows overlap three deep
    for a in range(len(ys)):
        for b in range(len(xs)):
            total[ys[a]:ys[a] + tile_h, xs[b]:xs[b] + tile_w] += np.outer(weights_y[a], weights_x[b])
    for start in range(0, len(places), batch_size):
        chunk = places[start:start + batch_size]
        tiles = np.stack([images[i, ys[a]:ys[a] + tile_h, xs[b]:xs[b] + tile_w] for i, a, b in chunk])
        for (i, a, b), logits in zip(chunk, forward(tiles)):
            out[i, ys[a]:ys[a] + tile_h, xs[b]:xs[b] + tile_w] += np.outer(weights_y[a], weights_x[b]) * logits
    return (out / np.maximum(total, 1e-12)).astype(np.float32)
