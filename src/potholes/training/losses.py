"""The training loss (the seed's Dice + Focal, or a variant) and the per-image Dice that
validation reports; both on torch tensors."""

from __future__ import annotations

from typing import Callable

import torch

from potholes.training.config import TrainConfig


def criterion(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dice + 0.6 x Focal(gamma=2) on logits, as the seed; ``loss="tversky_focal"`` swaps Dice for
    Tversky(alpha=0.3, beta=0.7), which weighs missed pothole pixels above false alarms,
    ``"image_dice_focal"`` for the soft Dice of each image, averaged, and ``"lovasz_focal"`` for
    each image's Lovasz hinge (a convex surrogate of that image's IoU, which Dice orders the same
    way), averaged."""
    from segmentation_models_pytorch.losses import (
        DiceLoss,
        FocalLoss,
        LovaszLoss,
        TverskyLoss,
    )

    if config.loss == "tversky_focal":
        overlap = TverskyLoss(mode="binary", from_logits=True, alpha=0.3, beta=0.7)
    elif config.loss == "image_dice_focal":
        overlap = soft_dice_per_image_loss
    elif config.loss == "lovasz_focal":
        overlap = LovaszLoss(mode="binary", per_image=True, from_logits=True)
    else:
        overlap = DiceLoss(mode="binary", from_logits=True)
    focal = FocalLoss(mode="binary", gamma=config.focal_gamma)
    return lambda logits, target: overlap(logits, target) + config.focal_weight * focal(logits, target)


def soft_dice_per_image_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each image, averaged: the metric is a mean over images, so a small pothole
    weighs as much as a large one (smp's DiceLoss pools every pixel of the batch into one Dice)."""
    prob, target = torch.sigmoid(logits).flatten(1), target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of each image of binary (N,1,H,W) tensors; an empty prediction of an empty mask scores 1."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
