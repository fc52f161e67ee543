"""Reading image and mask files: RGB uint8 images, binary masks, and what makes a file unreadable."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from potholes import problems as kinds
from potholes.problems import DatasetError

# Documented binarisation rule: a pixel is pothole when its value is > 127 (0/255 masks);
# masks whose maximum is 1 are 0/1 masks and use > 0 instead.
MASK_THRESHOLD = 127


class UnreadableImage(DatasetError):
    """A file or upload that does not decode; ``reason`` says why, without the name."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"'{name}' {reason}")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array // 257).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (grayscale, RGBA and 16-bit handled)."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if array is None:
        raise UnreadableImage(name, "is not a readable JPEG/PNG image (corrupt or wrong format)")
    array = _to_uint8(array)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8; raises DatasetError naming the file when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(str(path), f"cannot be read: {exc.strerror}") from exc
    return decode_image(data, str(path))


def _mask_gray(raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    return _to_uint8(raw)


def mask_notes(raw: np.ndarray) -> list[tuple[str, str]]:
    """What is unusual about a raw mask: (kind, detail) pairs for the dataset report."""
    raw = _mask_gray(raw)
    if raw.size and int(raw.max()) == 1:
        return [(kinds.ZERO_ONE_MASK, "values 0/1")]
    odd = np.count_nonzero((raw != 0) & (raw != 255))
    return [(kinds.ODD_VALUES, f"{odd} pixel(s) with values other than 0/255")] if odd else []


def binarize_mask(raw: np.ndarray) -> np.ndarray:
    """Binarise a mask to {0,1} uint8 with the documented rule (> 127; 0/1 masks: > 0)."""
    raw = _mask_gray(raw)
    if raw.size and int(raw.max()) == 1:
        return raw.astype(np.uint8)
    return (raw > MASK_THRESHOLD).astype(np.uint8)


def read_raw_mask(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UnreadableImage(str(path), "is not a readable mask image (corrupt or wrong format)")
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[..., :3]
    return raw


def read_mask(path: Path) -> np.ndarray:
    return binarize_mask(read_raw_mask(path))


def unreadable_images(paths: list[Path]) -> dict[Path, str]:
    """Files whose header does not parse as an image, with the reason; a cheap check (no full
    decode) so a stage can report every bad file before it starts work."""
    from PIL import Image

    bad = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Image.DecompressionBombError:
            continue  # a size question, answered by the pixel limit where it applies
        except Exception as exc:  # Pillow raises several types for non-images and broken files
            bad[path] = f"not a readable JPEG/PNG image ({type(exc).__name__}: {exc})"
    return bad
