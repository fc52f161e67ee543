"""The seed's augmentations, ported to albumentations 2.0.8 argument names.

albumentations 2.x silently ignores the 1.x names the seed used, so each is translated:
``Affine(mode=)`` -> ``border_mode=``, ``RandomShadow(num_shadows_lower/upper)`` ->
``num_shadows_limit``, ``GaussNoise(var_limit=(4, 15))`` (pixel variance) -> ``std_range`` as a
fraction of 255: sqrt(4)/255 ~= 0.0078 to sqrt(15)/255 ~= 0.0152.

Images are resized once when the dataset is cached, so these pipelines work at model size.
"""

from __future__ import annotations

import math
import random

import albumentations as A
import cv2
import numpy as np
import torch

from potholes.inference.normalize import normalize_batch

GAUSS_NOISE_STD_RANGE = (math.sqrt(4) / 255, math.sqrt(15) / 255)
PASTE_KEY = "overlay_metadata"


def train_transform(seed: int = 0, crop_size: int = 0, pothole_crops: float = 0.0, copy_paste: float = 0.0) -> A.Compose:
    """The seed's augmentations; with ``crop_size``, first a random square crop of that size, so
    a step costs what a ``crop_size`` image costs while the model learns at the cached (larger)
    scale it will predict at. A ``pothole_crops`` share of those crops holds a pothole pixel
    (any one, uniformly; albumentations' CropNonEmptyMaskIfExists): in a wide frame with one small
    pothole most random crops hold none (BENCHMARKS.md, row 6h). A ``copy_paste`` share of samples
    then gets a pothole of another image pasted in (`copy_paste.PatchBank` supplies it as
    ``overlay_metadata``)."""
    crop = [_crop(crop_size, pothole_crops)] if crop_size else []
    # only when asked for: a transform that is there draws from the stream even when it does not apply
    paste = [A.OverlayElements(metadata_key=PASTE_KEY, p=copy_paste)] if copy_paste else []
    transform = A.Compose([
        *crop,
        *paste,
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.97, 1.05), translate_percent=(0.0, 0.03), rotate=(-2.0, 2.0), shear=(-1.5, 1.5),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101, p=0.4),
        A.OneOf([
            A.GridDistortion(num_steps=5, distort_limit=0.02, border_mode=cv2.BORDER_REFLECT_101),
            A.ElasticTransform(alpha=8, sigma=12, border_mode=cv2.BORDER_REFLECT_101),
        ], p=0.12),
        A.RandomBrightnessContrast(brightness_limit=0.18, contrast_limit=0.18, p=0.65),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=5, p=0.3),
        A.RandomShadow(shadow_roi=(0, 0.45, 1, 1), num_shadows_limit=(1, 2), shadow_dimension=4, p=0.22),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 3)),
            A.GaussNoise(std_range=GAUSS_NOISE_STD_RANGE),
        ], p=0.15),
    ])
    seed_transform(transform, seed)
    return transform


def _crop(size: int, pothole_crops: float) -> A.BasicTransform | A.OneOf:
    if not pothole_crops:  # exactly the random crop models were trained with before the option
        return A.RandomCrop(size, size, p=1.0)
    return A.OneOf([A.CropNonEmptyMaskIfExists(size, size, p=pothole_crops),
                    A.RandomCrop(size, size, p=1.0 - pothole_crops)], p=1.0)


def seed_transform(transform: A.BaseCompose, seed: int | np.random.SeedSequence) -> None:
    """Give a whole pipeline one random stream derived from ``seed``.

    Global seeds do not reach albumentations 2: each Compose owns its generators. Its own
    ``set_random_seed`` hands every child transform the *same* seed, so every child draws the
    same numbers (HorizontalFlip and Affine would apply together, always); ``set_random_state``
    shares one stream instead, through nested OneOf/Compose too.
    """
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    transform.set_random_state(np.random.default_rng(sequence), random.Random(int(sequence.generate_state(1)[0])))


def sample_seed(seed: int, epoch: int, index: int) -> np.random.SeedSequence:
    """The augmentation stream of one sample in one epoch.

    Keyed by (seed, epoch, index) rather than by worker, so a sample gets the same augmentation
    whichever worker draws it, however many workers there are, and after a resume.
    """
    return np.random.SeedSequence([seed, epoch, index])


def to_tensor(image: np.ndarray, mean, std) -> torch.Tensor:
    """HWC uint8 RGB -> normalised CHW float32."""
    return normalize_batch(np.ascontiguousarray(image)[None], mean, std)[0]
