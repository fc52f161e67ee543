"""The networks' input: uint8 NHWC images to normalised NCHW float32, shared by training,
inference and the validation plots so that all three feed the networks the same numbers."""

from __future__ import annotations

import numpy as np
import torch


def normalize_batch(images: np.ndarray, mean, std) -> torch.Tensor:
    """NHWC uint8 -> normalised NCHW float32, vectorised over the batch."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t)
