"""A zoomed-out copy of a dataset: frames of rows x cols downscaled photos (issue 23, point 4).

No public dataset with many small potholes could be had, so small-pothole ideas are chosen on
this: with the defaults (2 x 4 photos in a 640x320 frame) a 640x640 photo becomes a 160x160
cell, and each pothole covers an eighth of the frame share it had. Each split's photos stay in
that split (train photos make the train frames, test photos the test frames), so nothing leaks
from test into training. It is for choosing between settings on its validation split, never a
quality claim: the frames are not real road scenes. Generated, never committed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from potholes.data.dataset import find_dataset, list_images, pair_files
from potholes.data.images import read_image, read_mask
from potholes.errors import ConfigError


def _cell(image: np.ndarray, cell_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    """``image`` fitted inside a cell with its aspect kept, centred on black."""
    h, w = image.shape[:2]
    scale = min(cell_hw[0] / h, cell_hw[1] / w)
    inner = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(image, (inner[1], inner[0]), interpolation=interpolation)
    out = np.zeros((*cell_hw, *image.shape[2:]), image.dtype)
    top, left = (cell_hw[0] - inner[0]) // 2, (cell_hw[1] - inner[1]) // 2
    out[top:top + inner[0], left:left + inner[1]] = small
    return out


def frames(photos: list[tuple[Path, Path | None]], rows: int, cols: int, frame_hw: tuple[int, int],
           rng: np.random.Generator):
    """Yield (frame, mask or None) of ``rows`` x ``cols`` of the (image, mask) files each, in a
    shuffled order, reading a frame's photos at a time; the last frame's empty cells reuse the
    first photos, so every photo appears at least once."""
    cells = rows * cols
    order = rng.permutation(len(photos)).tolist()
    order += [order[i % len(order)] for i in range(-len(order) % cells)]
    cell_hw = frame_hw[0] // rows, frame_hw[1] // cols
    for start in range(0, len(order), cells):
        frame = np.zeros((*frame_hw, 3), np.uint8)
        mask = None if photos[order[start]][1] is None else np.zeros(frame_hw, np.uint8)
        for k, index in enumerate(order[start:start + cells]):
            image_path, mask_path = photos[index]
            y, x = (k // cols) * cell_hw[0], (k % cols) * cell_hw[1]
            frame[y:y + cell_hw[0], x:x + cell_hw[1]] = _cell(read_image(image_path), cell_hw, cv2.INTER_AREA)
            if mask is not None:  # area-averaged, then a pixel is pothole when half of it was
                share = _cell(read_mask(mask_path).astype(np.float32), cell_hw, cv2.INTER_AREA)
                mask[y:y + cell_hw[0], x:x + cell_hw[1]] = share >= 0.5
        yield frame, mask


def _split_files(images_dir: Path, masks_dir: Path | None) -> list[tuple[Path, Path | None]]:
    if masks_dir is None:
        return [(path, None) for path in list_images(images_dir)]
    return [(image, mask) for _, image, mask in pair_files(images_dir, masks_dir).pairs]


def build(source: str | Path, out_dir: str | Path, rows: int = 2, cols: int = 4,
          frame_hw: tuple[int, int] = (320, 640), seed: int = 0) -> dict[str, int]:
    """Write the mosaic dataset of ``source`` to ``out_dir`` (the competition layout); returns
    frames per split. ``out_dir`` must not exist yet; it appears complete or not at all."""
    out = Path(out_dir)
    problems = []
    if out.exists():
        problems.append(f"out_dir '{out}' exists; the mosaic set is written to a new folder")
    if rows < 1 or cols < 1:
        problems.append(f"rows and cols must be at least 1, got {rows} and {cols}")
    elif frame_hw[0] < rows * 32 or frame_hw[1] < cols * 32:
        problems.append(f"a frame of {frame_hw[1]}x{frame_hw[0]} (width x height) leaves cells under 32 px "
                        f"for {cols} x {rows} photos")
    if problems:
        raise ConfigError("; ".join(problems))
    layout = find_dataset(source)
    rng = np.random.default_rng(seed)
    counts = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "data"
        splits = [("train", layout.train_images, layout.train_masks)]
        if layout.test_images is not None:
            splits.append(("test", layout.test_images, layout.test_masks))
        number = 0
        for split, images_dir, masks_dir in splits:
            (staging / split / "images").mkdir(parents=True)
            if masks_dir is not None:
                (staging / split / "mask").mkdir(parents=True)
            ids = []
            for frame, mask in frames(_split_files(images_dir, masks_dir), rows, cols, frame_hw, rng):
                number += 1
                name = f"mosaic_{number}.jpg"
                cv2.imwrite(str(staging / split / "images" / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                if mask is not None:
                    cv2.imwrite(str(staging / split / "mask" / f"mask_{number}.png"), mask * 255)
                ids.append(name)
            counts[split] = len(ids)
            if split == "test":
                pd.DataFrame({"ImageId": ids, "rle": ""}).to_csv(staging / "sample_submission.csv", index=False)
        staging.rename(out)
    return counts
