"""Copy-paste of pothole patches between training images (Ghiasi et al., "Simple Copy-Paste is a
Strong Data Augmentation Method for Instance Segmentation", 2021), for small potholes.

Every pothole component of the training masks is found once. A sample then receives one of them,
drawn uniformly over components (so a small pothole is drawn as often as a large one), from
another image, shrunk by a random factor and pasted with its own mask at a random place by
albumentations' OverlayElements. The draw is a function of (seed, pass, index), like the rest of
the sample's augmentation.
"""

from __future__ import annotations

import cv2
import numpy as np

SCALE_RANGE = (0.5, 1.0)  # pasted potholes are never enlarged: the point is more, and smaller, ones
MIN_PIXELS = 4  # components smaller than this are mask noise more often than potholes
STREAM = 1  # keys this draw apart from the sample's augmentation stream (augment.sample_seed)


class PatchBank:
    """The pothole components of ``masks`` (N,H,W, 0/1) in ``images`` (N,H,W,3), to be pasted
    into images of at most ``fit_hw`` (height, width): the crop a sample is cut to first."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, fit_hw: tuple[int, int]):
        self.images, self.masks, self.fit_hw = images, masks, fit_hw
        found = []  # (image index, component label, x, y, w, h)
        for index, mask in enumerate(masks):
            count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
            found += [(index, label, *stats[label, :4]) for label in range(1, count)
                      if stats[label, cv2.CC_STAT_AREA] >= MIN_PIXELS]
        self.components = np.array(found, dtype=np.int64).reshape(-1, 6)

    def __len__(self) -> int:
        return len(self.components)

    def draw(self, seed: int, pass_: int, index: int) -> list[dict]:
        """OverlayElements' metadata for sample (pass_, index): one pothole of another image, or
        none when no other image has one."""
        others = np.flatnonzero(self.components[:, 0] != index)
        if not len(others):
            return []
        rng = np.random.default_rng([seed, pass_, index, STREAM])
        donor, label, x, y, w, h = (int(v) for v in self.components[others[rng.integers(len(others))]])
        # cut the component's box and keep only that component's pixels (a neighbour may share the box)
        _, labels = cv2.connectedComponents((self.masks[donor] > 0).astype(np.uint8), connectivity=8)
        patch_mask = (labels[y:y + h, x:x + w] == label).astype(np.uint8)
        patch = self.images[donor, y:y + h, x:x + w]
        scale = min(rng.uniform(*SCALE_RANGE), self.fit_hw[0] / h, self.fit_hw[1] / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return [{"image": cv2.resize(patch, size, interpolation=cv2.INTER_AREA),
                 "mask": cv2.resize(patch_mask, size, interpolation=cv2.INTER_NEAREST), "mask_id": 1}]
