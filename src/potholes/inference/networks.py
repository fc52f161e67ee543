"""The two architectures and their checkpoint files: what inference needs to rebuild a member.

A checkpoint is ``model.safetensors`` (weights, no pickle) plus ``model_config.json``, which
names everything needed to rebuild the network without the training code's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ARCHITECTURES = {"unetpp": "UnetPlusPlus", "deeplab": "DeepLabV3Plus"}
LITE0 = "tu-tf_efficientnet_lite0"
LITE1 = "tu-tf_efficientnet_lite1"
LITE2 = "tu-tf_efficientnet_lite2"


def new_network(arch: str, encoder: str, encoder_weights: str | None = None) -> torch.nn.Module:
    """An smp UNet++ or DeepLabV3+ with one output channel (logits); ``encoder_weights`` as smp takes it."""
    import segmentation_models_pytorch as smp

    from potholes.errors import ConfigError

    if arch not in ARCHITECTURES:
        raise ConfigError(f"model must be one of {sorted(ARCHITECTURES)}, got '{arch}'")
    return getattr(smp, ARCHITECTURES[arch])(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3,
                                             classes=1)


def save_checkpoint(state_dict: dict[str, torch.Tensor], model_config: dict, folder: str | Path) -> Path:
    """Write a model's ``state_dict()`` and its config as a checkpoint folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(state, folder / "model.safetensors")
    (folder / "model_config.json").write_text(json.dumps(model_config, indent=2))
    return folder


def load_checkpoint(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from ``model_config.json`` and load ``model.safetensors`` (eval mode)."""
    folder = Path(folder)
    config = json.loads((folder / "model_config.json").read_text())
    model = new_network(config["arch"], config["encoder"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), config
