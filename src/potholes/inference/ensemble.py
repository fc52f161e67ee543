"""The UNet++ + DeepLabV3+ ensemble: batched flip-TTA inference and its tuned post-processing.

`EnsemblePredictor` is the one inference path: tune computes its validation logits with it,
predict writes submissions with it, and the served pyfunc (`potholes.serving.pyfunc`) calls
it, so the three cannot drift apart.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from potholes.inference import openvino as openvino_runner
from potholes.inference import postprocess as pp
from potholes.inference import potholes as instances
from potholes.inference import tiling
from potholes.inference.geometry import keeps_aspect, model_hw, resize_batch, resize_to
from potholes.inference.networks import load_checkpoint
from potholes.inference.normalize import normalize_batch
from potholes.inference.onnx_runtime import OnnxMembers
from potholes.inference.runtime import resolve_runtime

MEMBERS = ("unetpp", "deeplab")


@dataclass
class EnsembleConfig:
    """The tuned ensemble: what the registered model applies after the networks."""
    w_unetpp: float = 0.5
    threshold: float = 0.4
    min_area: int = 0  # pixels at `img_size` (about img_size² pixels a photo)
    img_size: int = 256  # where blending, thresholding and min_area happen
    keep_aspect: bool = True  # photos keep their aspect at model size (False: squashed, as older versions)
    resize_first: bool = True  # resize probabilities to the image's size, then threshold
    # A member whose model shape has a side longer than this runs on overlapping windows of it
    # (`tiling`): memory and time per forward stay bounded for large `img_size`. The presets' 256 px never tile.
    tile_size: int = 512
    tile_overlap: int = 64
    members: dict = field(default_factory=dict)  # name -> model_config of its checkpoint

    def __post_init__(self):
        tiling.check(self.tile_size, self.tile_overlap)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "EnsembleConfig":
        values = json.loads(Path(path).read_text())
        values.setdefault("keep_aspect", False)  # saved before aspect was kept: its members squash
        return cls(**values)


@torch.inference_mode()
def tta_logits(model: torch.nn.Module, images: np.ndarray, mean, std) -> np.ndarray:
    """Flip-averaged logits of a uint8 NHWC batch: one forward of the batch and its horizontal
    mirror together (2N images), instead of the seed's two single-image forwards per image.
    Runs where the model lives (mixed precision on CUDA)."""
    device = next(model.parameters()).device
    x = normalize_batch(images, mean, std).to(device).contiguous(memory_format=torch.channels_last)
    n = len(x)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        out = model(torch.cat([x, torch.flip(x, dims=[3])]))[:, 0].float()
    return ((out[:n] + torch.flip(out[n:], dims=[2])) / 2).cpu().numpy()


def default_batch_size() -> int:
    """Images per forward. Measured on 2 CPU cores (BENCHMARKS.md, row 4): batches of 1-2 run
    ~25 % faster per image than 8, as bigger activations stop fitting in cache; GPUs want more."""
    return 16 if torch.cuda.is_available() else 2


class EnsemblePredictor:
    """Both members, the tuned post-processing, and the runtime that runs the networks: torch
    (``models``), ONNX Runtime (``onnx``, the graphs stored with a registered model) or OpenVINO
    (the same graphs, compiled on first use: fp32 encoders, bf16 decoders where the CPU has bf16).

    With one member alone it is that network's predictor (the model a train run logs): the same
    TTA, thresholding and pothole description, without the blend."""

    def __init__(self, models: dict[str, torch.nn.Module], config: EnsembleConfig, batch_size: int | None = None,
                 onnx: OnnxMembers | None = None, runtime: str = "auto"):
        if not (set(models) == set(MEMBERS) or (len(models) == 1 and set(models) <= set(MEMBERS))):
            raise ValueError(f"an ensemble needs the models {MEMBERS} (or one of them alone), got {sorted(models)}")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = {name: model.eval().to(self.device, memory_format=torch.channels_last)
                       for name, model in models.items()}
        self.config = config
        self.batch_size = batch_size or default_batch_size()
        self.onnx = onnx
        self.openvino: openvino_runner.OpenVinoMembers | None = None  # compiled from `onnx` on first use
        self._compile_lock = threading.Lock()
        self.runtime = self.runtime_for(runtime)  # fails early on 'onnx' without graphs
        # One forward at a time: concurrent requests would only oversubscribe the cores (and hold
        # more activations); decoding and post-processing still overlap with it.
        self._forward_lock = threading.Lock()
        if self.runtime == "openvino":
            self.openvino_members()  # compile now, not in the first request

    @classmethod
    def from_checkpoints(cls, checkpoint_dirs: dict[str, Path], config: EnsembleConfig, batch_size: int | None = None,
                         onnx_dir: Path | None = None, runtime: str = "auto"):
        models = {}
        for name, folder in checkpoint_dirs.items():
            models[name], config.members[name] = load_checkpoint(folder)
        return cls(models, config, batch_size, OnnxMembers(onnx_dir) if onnx_dir else None, runtime)

    def runtime_for(self, requested: str | None = None) -> str:
        """'torch', 'onnx' or 'openvino' for a requested 'auto' | 'onnx' | 'openvino' | 'torch' (None:
        this predictor's own); raises ParamError for anything else and for 'onnx' or 'openvino'
        without ONNX graphs."""
        requested = requested or getattr(self, "runtime", "auto")
        cuda = self.device.type == "cuda"
        prefer_openvino = (requested == "auto" and self.onnx is not None and not cuda
                           and openvino_runner.native_bf16())
        return resolve_runtime(requested, self.onnx is not None, cuda, prefer_openvino)

    def openvino_members(self) -> openvino_runner.OpenVinoMembers:
        with self._compile_lock:
            if self.openvino is None:
                self.openvino = openvino_runner.OpenVinoMembers(self.onnx.folder)
        return self.openvino

    def _member_runner(self, runtime: str):
        if runtime == "onnx":
            return self.onnx.logits
        if runtime == "openvino":
            return self.openvino_members().logits
        return lambda name, batch: tta_logits(self.models[name], batch, self.config.members[name]["mean"],
                                              self.config.members[name]["std"])

    def member_logits(self, images: list[np.ndarray], runtime: str | None = None) -> dict[str, list[np.ndarray]]:
        """Each member's TTA logits, batch by batch, at each image's model shape for the ensemble's
        size (`geometry.model_hw`): {name: [(H,W) per image]}. Images of one shape share a forward
        (or, longer than ``tile_size``, forwards of their windows)."""
        run = self._member_runner(self.runtime_for(runtime))
        size, keep = self.config.img_size, self.config.keep_aspect
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.members}
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            targets = [model_hw(image.shape[:2], size, keep) for image in chunk]
            resized: dict[tuple, np.ndarray] = {}  # members of one size share the resized batch
            for name in self.members:
                member = self.config.members[name]
                shapes = [model_hw(image.shape[:2], int(member["img_size"]), keeps_aspect(member)) for image in chunk]
                logits: list[np.ndarray | None] = [None] * len(chunk)
                for hw in dict.fromkeys(shapes):
                    index = tuple(i for i, shape in enumerate(shapes) if shape == hw)
                    if (hw, index) not in resized:
                        resized[hw, index] = resize_batch([chunk[i] for i in index], hw)
                    batch = tiling.run_tiled(lambda tiles: self._locked(run, name, tiles), resized[hw, index],
                                             self.config.tile_size, self.config.tile_overlap, self.batch_size)
                    for i, value in zip(index, batch):
                        logits[i] = resize_to(value, targets[i], cv2.INTER_LINEAR)
                out[name].extend(logits)
        return out

    def _locked(self, run, name: str, batch: np.ndarray) -> np.ndarray:
        with self._forward_lock:
            return run(name, batch)

    def member_logit_arrays(self, images: list[np.ndarray], runtime: str | None = None) -> dict[str, np.ndarray]:
        """`member_logits` of images of one shape (a cached split) as arrays {name: (N,H,W)}."""
        logits = self.member_logits(images, runtime)
        shapes = {value.shape for values in logits.values() for value in values}
        if len(shapes) > 1:
            raise ValueError(f"images of one model shape expected, got {sorted(shapes)}")
        return {name: np.stack(values) if values else np.empty((0, 0, 0), np.float32) for name, values in logits.items()}

    @property
    def members(self) -> list[str]:
        return [name for name in MEMBERS if name in self.models]

    def probabilities(self, images: list[np.ndarray], runtime: str | None = None) -> list[np.ndarray]:
        """Per image, its pothole probabilities at its model shape."""
        logits = self.member_logits(images, runtime)
        if len(logits) == 1:
            return [pp.sigmoid(value) for value in next(iter(logits.values()))]
        return [pp.sigmoid(pp.blend_logits(a, b, self.config.w_unetpp))
                for a, b in zip(logits["unetpp"], logits["deeplab"])]

    def predict_masks(self, images: list[np.ndarray], threshold: float | None = None,
                      min_area: int | None = None, runtime: str | None = None) -> list[np.ndarray]:
        """Binary masks at each image's own size."""
        return [mask for mask, _ in self.predict(images, threshold, min_area, runtime, describe=False)]

    def predict(self, images: list[np.ndarray], threshold: float | None = None, min_area: int | None = None,
                runtime: str | None = None, describe: bool = True) -> list[tuple[np.ndarray, list[dict]]]:
        """(mask at the image's own size, its potholes) per image; see `instances.describe`."""
        threshold = self.config.threshold if threshold is None else threshold
        min_area = self.config.min_area if min_area is None else min_area
        out = []
        for image, prob in zip(images, self.probabilities(images, runtime)):
            if describe:
                out.append(instances.segment(prob, threshold, min_area, image.shape[:2], self.config.resize_first))
            else:
                out.append((pp.probability_to_mask(prob, threshold, min_area, image.shape[:2],
                                                   self.config.resize_first), []))
        return out
