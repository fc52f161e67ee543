"""Figures logged by the stages. Each returns a matplotlib Figure; callers log and close it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """Tint the mask's pixels of an RGB image."""
    out = image.astype(np.float32).copy()
    tint = np.asarray(color, dtype=np.float32)
    on = mask.astype(bool)
    out[on] = (1 - alpha) * out[on] + alpha * tint
    return out.astype(np.uint8)


def histogram(values, title: str, xlabel: str, bins: int = 40, log_x: bool = False):
    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.asarray(values, dtype=np.float64)
    if log_x and len(values):
        values = values[values > 0]
        edges = np.logspace(np.log10(max(values.min(), 1)), np.log10(values.max() + 1), bins)
        ax.hist(values, bins=edges, color="#4c72b0")
        ax.set_xscale("log")
    else:
        ax.hist(values, bins=bins, color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    return fig


def overlay_grid(panels: list[tuple[str, np.ndarray]], columns: int = 4, size: float = 3.0):
    """A grid of titled RGB panels."""
    rows = max(1, int(np.ceil(len(panels) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, panel) in zip(axes.ravel(), panels):
        ax.imshow(panel)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict]):
    """Loss and Dice at the end of each round, against optimizer steps."""
    steps = [h["step"] for h in history]
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(steps, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(steps, [h["val_loss"] for h in history], label="val")
    loss_ax.set_title("loss")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.legend()
    dice_ax.plot(steps, [h["val_dice"] for h in history], color="#55a868")
    dice_ax.set_title("validation Dice @0.4")
    dice_ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
