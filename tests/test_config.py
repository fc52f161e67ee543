import pytest

from potholes.training.config import LITE0_MEAN, ConfigError, resolve_config


def test_full_preset_is_the_seed_recipe():
    u = resolve_config("unetpp", "full")
    d = resolve_config("deeplab", "full")
    # the seed's 28 / 20 epochs of 202 images at batch 4 (50 steps each), as a step budget
    assert (u.encoder, u.img_size, u.batch_size, u.steps, u.lr, u.weight_decay) == ("efficientnet-b4", 512, 4, 1400, 1e-4, 1e-4)
    assert (d.encoder, d.steps) == ("resnet101", 1000)
    assert u.epochs is None
    assert u.mean == (0.485, 0.456, 0.406) and u.encoder_weights == "imagenet"
    assert u.focal_weight == 0.6 and u.focal_gamma == 2.0 and u.val_threshold == 0.4


def test_cpu_preset_uses_offline_lite0_with_its_normalisation():
    c = resolve_config("deeplab", "cpu")
    assert c.encoder == "tu-tf_efficientnet_lite0" and c.encoder_weights == "imagenet"
    assert c.mean == LITE0_MEAN == (0.5, 0.5, 0.5)
    # chosen on validation (BENCHMARKS.md, row 6a); the seed's GPU recipe keeps its loss
    assert c.loss == "image_dice_focal" and resolve_config("unetpp", "full").loss == "dice_focal"


def test_an_encoder_override_brings_its_own_normalisation():
    # Lite weights on the GPU recipe (BENCHMARKS.md row 9, full_lite2) must see (x - 0.5) / 0.5 as
    # they were trained, not the preset encoder's ImageNet mean / std; and the other way round
    lite2 = resolve_config("unetpp", "full", cuda_available=True, encoder="tu-tf_efficientnet_lite2")
    assert (lite2.mean, lite2.std) == (LITE0_MEAN, (0.5, 0.5, 0.5))
    resnet = resolve_config("unetpp", "cpu", cuda_available=False, encoder="resnet34", freeze_stride=0)
    assert (resnet.mean, resnet.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    timm_resnet = resolve_config("unetpp", "cpu", cuda_available=False, encoder="tu-resnet34")
    assert timm_resnet.mean == (0.485, 0.456, 0.406)
    # an explicit mean / std wins
    own = resolve_config("unetpp", "cpu", cuda_available=False, encoder="resnet34", mean=(0.5, 0.5, 0.5))
    assert own.mean == (0.5, 0.5, 0.5)


def test_auto_follows_cuda_and_says_why():
    assert resolve_config("unetpp", "auto", cuda_available=True).preset == "full"
    cpu = resolve_config("unetpp", "auto", cuda_available=False)
    assert cpu.preset == "cpu" and "no CUDA" in cpu.preset_reason


def test_precision_auto_is_bf16_only_on_cpus_with_bfloat16_units(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    plain = resolve_config("unetpp", "cpu", cuda_available=False)
    assert plain.precision == "fp32" and "without bfloat16 units" in plain.preset_reason
    # fp32 UNet++ steps cost ~1.75x (frozen encoder, BENCHMARKS.md row 6d): a smaller budget keeps the minutes
    assert plain.steps == 290 and resolve_config("deeplab", "cpu", cuda_available=False).steps == 320
    assert resolve_config("unetpp", "cpu", cuda_available=False, steps=400).steps == 400
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    amx = resolve_config("unetpp", "cpu", cuda_available=False)
    assert amx.precision == "bf16" and "bfloat16 units -> bf16" in amx.preset_reason
    assert amx.steps == 330 and resolve_config("deeplab", "cpu", cuda_available=False).steps == 320
    assert resolve_config("unetpp", "cpu", precision="fp32").precision == "fp32"
    assert resolve_config("unetpp", "auto", cuda_available=True).precision == "fp16"
    assert resolve_config("unetpp", "smoke").precision == "fp32"


def test_cpu_preset_freezes_pretrained_encoder_layers_only():
    assert resolve_config("unetpp", "cpu").freeze_stride == 8
    assert resolve_config("deeplab", "cpu").freeze_stride == 8
    # random or non-timm encoders have nothing worth keeping: the preset's freeze falls away
    assert resolve_config("unetpp", "cpu", encoder_weights="none").freeze_stride == 0
    assert resolve_config("unetpp", "cpu", freeze_stride=0).freeze_stride == 0
    assert resolve_config("unetpp", "full").freeze_stride == 0 and resolve_config("unetpp", "smoke").freeze_stride == 0


def test_explicit_values_beat_the_preset():
    c = resolve_config("unetpp", "smoke", epochs=5, img_size=96, lr=None)
    assert (c.epochs, c.img_size, c.lr) == (5, 96, 1e-3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(model="segformer"), "model must be one of"),
    (dict(preset="huge"), "preset must be one of"),
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(rounds=-2), "rounds must be a positive integer, got -2"),
    (dict(warmup=1.5), r"warmup must be a share of the steps in \[0, 1\), got 1.5"),
    (dict(ema=1.0), r"ema must be a decay in \[0, 1\)"),
    (dict(loss="bce"), "loss must be one of \\['dice_focal', 'tversky_focal', 'image_dice_focal', 'lovasz_focal'\\], got 'bce'"),
    (dict(precision="bf8"), r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\], got 'bf8'"),
    (dict(precision="fp16", cuda_available=False), "precision 'fp16' needs CUDA; use bf16 or fp32 on CPU"),
    (dict(img_size=100), "img_size must be a multiple of 32"),
    (dict(crop_size=80), r"crop_size must be a multiple of 32 from 32 to img_size \(64\), or 0 for whole images, got 80"),
    (dict(crop_size=96), r"crop_size must be .* got 96"),
    (dict(batch_size=-1), "batch_size"),
    (dict(encoder_weights="ssl"), "encoder_weights must be"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(freeze_stride=3), r"freeze_stride must be one of \[0, 2, 4, 8, 16\] \(0 = train every encoder layer\), got 3"),
    (dict(freeze_stride=8), "freeze_stride 8 keeps pretrained .* encoder_weights 'none' has none: use freeze_stride=0"),
    (dict(preset="full", freeze_stride=8), "encoder 'efficientnet-b4' with encoder_weights 'imagenet' has none"),
])
def test_invalid_values_name_the_parameter(kwargs, message):
    model = kwargs.pop("model", "unetpp")
    preset = kwargs.pop("preset", "smoke")
    with pytest.raises(ConfigError, match=message):
        resolve_config(model, preset, **kwargs)


def test_threads_are_fixed_per_run_from_the_cores_a_process_owns_or_potholes_threads(monkeypatch):
    import os

    from potholes.errors import ParamError
    from potholes.inference.runtime import cpu_cores

    monkeypatch.delenv("POTHOLES_THREADS", raising=False)
    owned = len(os.sched_getaffinity(0))
    assert resolve_config("unetpp", "smoke").threads == owned
    assert resolve_config("unetpp", "smoke", world_size=2).threads == max(1, owned // 2)  # shared by the ranks
    assert resolve_config("unetpp", "smoke", threads=1).threads == 1
    monkeypatch.setenv("POTHOLES_THREADS", "3")
    assert cpu_cores() == 3 and resolve_config("unetpp", "smoke").threads == 3
    monkeypatch.setenv("POTHOLES_THREADS", "two")
    with pytest.raises(ParamError, match="POTHOLES_THREADS.*'two'"):
        cpu_cores()
