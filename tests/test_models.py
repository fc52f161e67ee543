import glob
import warnings

import numpy as np
import pytest
import torch
from helpers import REPO

from potholes.inference.networks import load_checkpoint, save_checkpoint
from potholes.training import augment
from potholes.training.models import (
    WeightsUnavailable,
    build_model,
    freeze_encoder,
    lite_timm_state_dict,
)

REFERENCE = glob.glob(str(REPO.parent / "shared" / "weights" / "hf_cache" / "models--timm--tf_efficientnet_lite0.in1k"
                          / "snapshots" / "*" / "model.safetensors"))


@pytest.mark.skipif(not REFERENCE, reason="reference Lite0 weights (../shared/weights) not present")
def test_lite0_conversion_equals_the_reference_copy():
    from safetensors.torch import load_file

    reference = load_file(REFERENCE[0])
    ours = lite_timm_state_dict()
    assert set(ours) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(ours[key], tensor), key


def test_lite0_imagenet_weights_reach_the_encoder():
    model = build_model("deeplab", "tu-tf_efficientnet_lite0", "imagenet")
    converted = lite_timm_state_dict()
    assert torch.equal(model.encoder.model.state_dict()["conv_stem.weight"], converted["conv_stem.weight"])
    assert torch.equal(model.encoder.model.state_dict()["blocks.5.3.conv_pwl.weight"], converted["blocks.5.3.conv_pwl.weight"])


def test_unavailable_weights_fail_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="preset=cpu"):
        build_model("unetpp", "resnet18", "imagenet")


@pytest.mark.parametrize("arch", ["unetpp", "deeplab"])
def test_freeze_encoder_stops_gradients_up_to_the_stride(arch):
    model = build_model(arch, "tu-tf_efficientnet_lite0", None)
    frozen = freeze_encoder(model, 8)
    # Lite0 reaches stride 8 after its stem and stages 0-2 (blocks.2 outputs the 40-channel map)
    names = [n for n, p in model.encoder.model.named_parameters() if not p.requires_grad]
    assert {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n in names} == \
        {"conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"}
    assert frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    model.train()(torch.randn(2, 3, 64, 64)).mean().backward()
    for name, param in model.named_parameters():  # backward stops at the first trainable layer
        assert (param.grad is not None) == param.requires_grad, name
    with pytest.raises(ValueError, match="freeze_stride 3: the encoder has no timm feature at that stride"):
        freeze_encoder(model, 3)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("unetpp", "tu-tf_efficientnet_lite0", None).eval()
    config = {"arch": "unetpp", "encoder": "tu-tf_efficientnet_lite0", "img_size": 64}
    save_checkpoint(model.state_dict(), config, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded, loaded_config = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded_config == config


def test_augmentation_keeps_masks_binary_and_warns_nothing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 1
    transform = augment.train_transform()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [transform(image=image, mask=mask) for _ in range(150)]
    for out in outs:
        assert set(np.unique(out["mask"])) <= {0, 1}
        assert out["image"].dtype == np.uint8 and out["image"].shape == image.shape


def test_augmentation_uses_albumentations_2_names():
    import albumentations as A

    transforms = {type(t).__name__: t for t in augment.train_transform().transforms}
    nested = {type(t).__name__: t for t in transforms["OneOf"].transforms}
    # GaussNoise(var_limit=(4, 15)) in pixel variance == std 2..3.87 of 255
    noise = next(t for o in augment.train_transform().transforms if isinstance(o, A.OneOf)
                 for t in o.transforms if isinstance(t, A.GaussNoise))
    assert noise.std_range == pytest.approx((2 / 255, 15 ** 0.5 / 255))
    assert transforms["RandomShadow"].num_shadows_limit == (1, 2)
    assert transforms["Affine"].border_mode is not None
    assert nested  # the geometric OneOf exists
