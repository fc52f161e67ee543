"""What `predict` writes and keeps as it goes, so its memory does not grow with the test set: the
submission and its pothole table written row by row and renamed into place only when complete,
and the per-image test scores (numbers, plus the few worst masks for the figure)."""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from potholes.data.dataset import (
    DatasetLayout,
    component_areas,
    file_number,
    list_images,
    read_mask,
)
from potholes.inference import postprocess as pp
from potholes.reporting import size_buckets


def potholes_path(output: Path) -> Path:
    """The pothole table beside a submission, named after it: two predictions into one folder
    (``a.csv``, ``b.csv``) keep their own tables (``a.potholes.csv``, ``b.potholes.csv``)."""
    return output.with_name(f"{output.stem}.potholes.csv")


class AtomicCsv:
    """A CSV written row by row to a hidden file beside ``path`` and renamed over it when the
    block ends without an error; after an error the hidden file is removed and ``path`` is as it
    was. The file is created with mode 0666 and the kernel applies the umask, as for any file the
    user's tools create; the process's umask is never read by changing it."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = Path(path), columns

    def __enter__(self) -> AtomicCsv:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._handle = os.fdopen(fd, "w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns, lineterminator="\n")
        self._writer.writeheader()
        self.rows = 0
        return self

    def write(self, rows: list[dict]) -> None:
        self._writer.writerows(rows)
        self.rows += len(rows)

    def __exit__(self, kind, error, traceback) -> None:
        self._handle.close()
        if kind is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_csv_atomically(frame: pd.DataFrame, output: Path) -> Path:
    """A whole frame through `AtomicCsv`."""
    with AtomicCsv(output, list(frame.columns)) as out:
        out.write(frame.to_dict("records"))
    return Path(output)


class ImageScores:
    """Per-image Dice and IoU against ``test/mask`` as predictions come, when test masks exist.
    Keeps one row of numbers per image and the masks of the ``worst`` lowest-Dice images only."""

    def __init__(self, layout: DatasetLayout, worst: int = 8):
        self.truth = {} if layout.test_masks is None else {file_number(p): p for p in list_images(layout.test_masks)}
        self.records: list[dict] = []
        self.worst_count, self._worst = worst, []  # (dice, position, image_id, mask), lowest first

    def add(self, image_id: str, path: Path, mask: Callable[[], np.ndarray], potholes: int) -> None:
        """``mask`` is called only when this image has a true mask (Spark hands RLE, decoded here);
        ``potholes`` is how many the prediction found."""
        truth_path = self.truth.get(file_number(path))
        if truth_path is None:
            return
        truth, pred = read_mask(truth_path), mask()
        dice = pp.dice_score(pred, truth)
        self.records.append({"ImageId": image_id, "dice": dice, "iou": pp.iou_score(pred, truth),
                             "true_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum()),
                             "true_area_fraction": float(truth.mean()),
                             "size_bucket": size_buckets.bucket_of(float(truth.mean())),
                             "true_potholes": len(component_areas(truth)), "predicted_potholes": int(potholes),
                             "image_path": str(path), "mask_path": str(truth_path)})
        key = (dice, len(self.records))  # ties: the earlier image, as pandas' nsmallest keeps
        if len(self._worst) < self.worst_count or key < self._worst[-1][:2]:
            self._worst = sorted([*self._worst, (*key, image_id, pred)], key=lambda kept: kept[:2])[:self.worst_count]

    def frame(self) -> pd.DataFrame | None:
        return pd.DataFrame(self.records) if self.records else None

    def worst_masks(self) -> dict[str, np.ndarray]:
        return {image_id: mask for _, _, image_id, mask in self._worst}
