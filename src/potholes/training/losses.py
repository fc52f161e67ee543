"""The training loss (the seed's Dice + Focal, or a variant) and the per-image Dice that
validation reports; both on torch tensors."""

from __future__ import annotations

import functools
from typing import Callable

import cv2
import numpy as np
import torch

from potholes.training.config import TrainConfig
from potholes.training.scale import MIN_PIXELS


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
    if config.small_pothole_weight:  # config.validate: only with image_dice_focal
        return functools.partial(small_pothole_weighted_loss, extra=config.small_pothole_weight,
                                 focal_weight=config.focal_weight, gamma=config.focal_gamma)
    return lambda logits, target: overlap(logits, target) + config.focal_weight * focal(logits, target)


def pothole_weights(target: torch.Tensor, extra: float, reference: int = MIN_PIXELS) -> torch.Tensor:
    """Per-pixel weights of binary (N,1,H,W) targets: 1 on background, ``1 + extra x min(1,
    sqrt(reference / area))`` on each pothole component of ``area`` pixels. A pothole of up to
    ``reference`` pixels (the size train's scale aims for, `training.scale`) gets ``1 + extra``; one
    four times as large half the extra, and so on, so large potholes stay near 1 and small ones
    are not drowned by them in the same crop. Components are found by OpenCV on the CPU."""
    masks = (target.detach().cpu().numpy()[:, 0] > 0.5).astype(np.uint8)
    weights = np.ones(masks.shape, np.float32)
    for mask, weight in zip(masks, weights):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 1:
            area = stats[:, cv2.CC_STAT_AREA].astype(np.float32)
            per_label = 1 + extra * np.minimum(1.0, np.sqrt(reference / area))
            per_label[0] = 1.0  # background
            weight[:] = per_label[labels]
    return torch.from_numpy(weights)[:, None].to(target.device)


def small_pothole_weighted_loss(logits: torch.Tensor, target: torch.Tensor, extra: float, focal_weight: float,
                                gamma: float) -> torch.Tensor:
    """``image_dice_focal`` with `pothole_weights`: each image's weighted soft Dice, averaged,
    plus ``focal_weight`` x the weighted mean of the focal term (torchvision's, which is smp's
    binary focal loss per pixel)."""
    from torchvision.ops import sigmoid_focal_loss

    weights = pothole_weights(target, extra)
    prob, t, w = torch.sigmoid(logits).flatten(1), target.flatten(1), weights.flatten(1)
    inter = (w * prob * t).sum(1)
    dice = 1 - (2 * inter + 1.0) / ((w * prob).sum(1) + (w * t).sum(1) + 1.0)
    focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=gamma, reduction="none")
    return dice.mean() + focal_weight * (weights * focal).sum() / weights.sum()


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
