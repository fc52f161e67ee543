"""Reading image and mask files: RGB uint8 images, binary masks, and what makes a file unreadable.

Every file is decoded in its display orientation: OpenCV's ``IMREAD_UNCHANGED`` ignores the EXIF
orientation tag that phone cameras write instead of rotating the pixels, so the tag is read
(Pillow, header only) and applied here, once, for images and masks alike. A mask is therefore
taken as drawn on the displayed photo, and every stage, runtime and the server see the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from potholes.data import problems as kinds
from potholes.data.problems import DatasetError

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


EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image; 1 (as stored) when it has none."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # not an image for Pillow, or a broken EXIF block: OpenCV decides below
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into the displayed image, as viewers do for EXIF orientation 2-8
    (the same transposes as Pillow's ``ImageOps.exif_transpose``)."""
    if orientation in (5, 6, 7, 8):
        array = array.swapaxes(0, 1)  # transpose first: 5 = transpose, then 6/7/8 flip it
    if orientation in (2, 3, 6, 7):
        array = array[:, ::-1]
    if orientation in (3, 4, 7, 8):
        array = array[::-1]
    return np.ascontiguousarray(array)


def _decode(data: bytes | np.ndarray) -> np.ndarray | None:
    raw = bytes(data) if not isinstance(data, (bytes, bytearray)) else data
    buffer = np.frombuffer(raw, np.uint8)
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    return None if array is None else apply_orientation(array, exif_orientation(raw))


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 in display orientation (EXIF applied; grayscale,
    RGBA and 16-bit handled)."""
    array = _decode(data)
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
    try:
        raw = _decode(Path(path).read_bytes())
    except OSError:
        raw = None
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
