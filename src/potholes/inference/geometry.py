"""Where a photo's pixels go in the network: its shape at model size, and the resizes that keep it.

``img_size`` is a pixel budget: the network sees about ``img_size``² pixels of every photo, in the
photo's own aspect ratio, each side a multiple of 32 (UNet++ and DeepLabV3+ halve the input five
times). A 640x640 photo at 256 is seen at 256x256, a 640x383 one at 192x320 (not squashed into
256x256, which stretched its potholes 1.6x vertically), a 4032x3024 phone photo at 224x288.
Masks go back to the photo's own pixels exactly as before (`postprocess.probability_to_mask`).

Models trained before this (``keep_aspect`` false in their configs) squash every photo into
``img_size`` x ``img_size``, as they were trained, and keep doing so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

SIZE_MULTIPLE = 32


def _side(pixels: float) -> int:
    return max(SIZE_MULTIPLE, int(round(pixels / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def model_hw(image_hw: tuple[int, int], img_size: int, keep_aspect: bool = True) -> tuple[int, int]:
    """(height, width) at which the network sees an image of ``image_hw``: about ``img_size``²
    pixels in the image's aspect ratio (rounded to multiples of 32), or the square when
    ``keep_aspect`` is false. A shape this returns maps to itself, so already-resized arrays keep
    their shape."""
    if not keep_aspect:
        return img_size, img_size
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"an image needs a positive height and width, got {h}x{w}")

    def shape_of(height: int, width: int) -> tuple[int, int]:
        root = math.sqrt(width / height)
        return _side(img_size / root), _side(img_size * root)

    shape = shape_of(h, w)
    # Rounding both sides can move the aspect enough that the shape itself rounds elsewhere; the
    # arrays cached at a shape must map to that shape, so settle on the fixed point.
    for _ in range(4):
        again = shape_of(*shape)
        if again == shape:
            break
        shape = again
    return shape


def keeps_aspect(model_config: dict) -> bool:
    """Whether a member's checkpoint config was trained on photos in their aspect; configs saved
    before aspect was kept have no such key, and their members squash."""
    return bool(model_config.get("keep_aspect", False))


def canvas_hw(image_shapes: Iterable[tuple[int, int]], img_size: int, keep_aspect: bool = True) -> tuple[int, int]:
    """The one shape a cached split is stored at: the model shape of its most common image shape
    (a dataset from one camera has one), so that those images are resized exactly as inference
    resizes them; images of another aspect are fitted into it (`fit`)."""
    shapes = [(int(h), int(w)) for h, w in image_shapes]
    if not shapes:
        return img_size, img_size
    values, counts = np.unique(np.array(shapes), axis=0, return_counts=True)
    h, w = values[int(np.argmax(counts))]
    return model_hw((int(h), int(w)), img_size, keep_aspect)


def resize_to(image: np.ndarray, hw: tuple[int, int], interpolation: int) -> np.ndarray:
    if image.shape[:2] == tuple(hw):
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=interpolation)


def fit(image: np.ndarray, hw: tuple[int, int], interpolation: int, keep_aspect: bool = True) -> np.ndarray:
    """``image`` at shape ``hw``: resized straight when its aspect is that of ``hw`` up to the
    rounding to multiples of 32 (or aspect is not kept), else resized to fit inside with its aspect
    kept and zero-padded at the bottom and right (a pothole-free border the mask shares)."""
    h, w = image.shape[:2]
    if not keep_aspect or _same_aspect((h, w), hw):
        return resize_to(image, hw, interpolation)
    scale = min(hw[0] / h, hw[1] / w)
    inner = min(hw[0], max(1, round(h * scale))), min(hw[1], max(1, round(w * scale)))
    small = resize_to(image, inner, interpolation)
    out = np.zeros((*hw, *image.shape[2:]), image.dtype)
    out[:inner[0], :inner[1]] = small
    return out


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Aspect ratios no further apart than rounding each side of ``b`` to a multiple of 32 moves them."""
    return abs(math.log((a[1] / a[0]) / (b[1] / b[0]))) <= math.log(1 + SIZE_MULTIPLE / min(b))


def fit_pair(image: np.ndarray, mask: np.ndarray | None, hw: tuple[int, int],
             keep_aspect: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-size copies: linear for the image, nearest for the mask (stays binary)."""
    image = fit(image, hw, cv2.INTER_LINEAR, keep_aspect)
    return image, None if mask is None else fit(mask, hw, cv2.INTER_NEAREST, keep_aspect)


def resize_batch(images: list[np.ndarray], hw: tuple[int, int] | int) -> np.ndarray:
    """One uint8 batch of ``images`` resized to ``hw`` (an int: that square), as the networks take it."""
    hw = (hw, hw) if isinstance(hw, int) else hw
    return np.stack([resize_to(image, hw, cv2.INTER_LINEAR) for image in images])
