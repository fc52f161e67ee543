"""What `train` and `tune` read: the manifest and the model-size arrays of a split, each training
file decoded once per stage.

When a finished run of this experiment (`prepare`, or a `train` or `tune` after it) split the same
files (same content digest) with the same fraction and seed, the manifest it logged is the one
used, and only the pixels are decoded. Otherwise the files are checked and split here and, when
the model size is known already (`train`), the pixels are kept from that one decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from potholes.data.dataset import build_manifest, find_dataset
from potholes.data.fingerprint import files_digest
from potholes.inference.geometry import fit_pair, model_hw
from potholes.tracking.prepared import find_logged_manifest, prepared_key
from potholes.training import distributed
from potholes.training.loader import load_split, split_hw


@dataclass
class StageData:
    root: Path
    manifest: pd.DataFrame
    img_size: int | None
    keep_aspect: bool  # False: squash into img_size x img_size, as models trained before aspect was kept
    manifest_run: str | None  # the run whose logged manifest this is; None when scanned here
    key: str  # files digest, val_fraction and seed: the tag that finds this manifest again
    progress: bool = True
    _kept: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def count(self, split: str) -> int:
        return int((self.manifest["split"] == split).sum())

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the cached splits: the model shape of the dataset's photos."""
        if self.img_size is None:
            raise ValueError("set img_size before reading a split")
        return split_hw(self.manifest, self.img_size, self.keep_aspect)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N,H,W,3) and masks (N,H,W) of one split at `hw`, in manifest order."""
        hw = self.hw
        if not self._kept:
            return load_split(self.root, self.manifest, split, self.img_size, self.keep_aspect, self.progress)
        ids = self.manifest.loc[self.manifest["split"] == split, "id"]
        # Handed over once (the stage holds one copy); kept at each photo's own model shape, so a
        # photo of another aspect than most is fitted into the split's shape now.
        pairs = [fit_pair(*self._kept.pop(i), hw, self.keep_aspect) for i in ids]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def open_stage_data(data_dir: str, val_fraction: float, split_seed: int, img_size: int | None,
                    progress: bool = True, keep_aspect: bool = True) -> StageData:
    layout = find_dataset(data_dir)
    key = prepared_key(files_digest(layout.root, [layout.train_images, layout.train_masks]), val_fraction, split_seed)
    found = distributed.from_main(lambda: find_logged_manifest(key))  # rank 0 alone asks MLflow
    if found is not None:
        run_id, manifest = found
        if distributed.is_main():
            print(f"data: the manifest logged by run {run_id} (same files, val_fraction={val_fraction}, "
                  f"split_seed={split_seed})", flush=True)
        return StageData(layout.root, manifest, img_size, keep_aspect, run_id, key, progress)
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def keep(i, image, mask):
        kept[i] = fit_pair(image, mask, model_hw(image.shape[:2], img_size, keep_aspect), keep_aspect)

    prepared = build_manifest(data_dir, val_fraction, split_seed, progress=progress,
                              keep=None if img_size is None else keep)
    return StageData(prepared.layout.root, prepared.manifest, img_size, keep_aspect, None, key, progress, kept)
