"""The UNet++ + DeepLabV3+ ensemble: batched flip-TTA inference and the MLflow pyfunc around it.

`EnsemblePredictor` is the one inference path: tune computes its validation logits with it,
predict writes submissions with it, and the pyfunc model served by `mlflow models serve` calls
it, so the three cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from potholes import postprocess as pp
from potholes.augment import normalize_batch
from potholes.data import DatasetError, decode_image
from potholes.models import load_checkpoint

MEMBERS = ("unetpp", "deeplab")
# Largest image accepted by predict and serving (width x height); checked from the file header
# before decoding, so an oversized upload cannot exhaust the server's memory.
MAX_IMAGE_PIXELS = 40_000_000
OUTPUT_COLUMNS = ["rle", "height", "width", "pothole_pixels", "pothole_fraction", "num_potholes"]


@dataclass
class EnsembleConfig:
    """The tuned ensemble: what the registered model applies after the networks."""
    w_unetpp: float = 0.5
    threshold: float = 0.4
    min_area: int = 0  # pixels at `img_size`
    img_size: int = 256  # where blending, thresholding and min_area happen
    resize_first: bool = True  # resize probabilities to the image's size, then threshold
    members: dict = field(default_factory=dict)  # name -> model_config of its checkpoint

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "EnsembleConfig":
        return cls(**json.loads(Path(path).read_text()))


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


def resize_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR) for img in images])


class EnsemblePredictor:
    def __init__(self, models: dict[str, torch.nn.Module], config: EnsembleConfig, batch_size: int | None = None):
        missing = set(MEMBERS) - set(models)
        if missing:
            raise ValueError(f"ensemble needs models {MEMBERS}, missing {sorted(missing)}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = {name: model.eval().to(device, memory_format=torch.channels_last)
                       for name, model in models.items()}
        self.config = config
        self.batch_size = batch_size or default_batch_size()

    @classmethod
    def from_checkpoints(cls, checkpoint_dirs: dict[str, Path], config: EnsembleConfig, batch_size: int | None = None):
        models = {}
        for name, folder in checkpoint_dirs.items():
            models[name], config.members[name] = load_checkpoint(folder)
        return cls(models, config, batch_size)

    def member_logits(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Each member's TTA logits at the ensemble's size, batch by batch: {name: (N,S,S)}."""
        size = self.config.img_size
        out: dict[str, list[np.ndarray]] = {name: [] for name in MEMBERS}
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            resized: dict[int, np.ndarray] = {}
            for name in MEMBERS:
                member = self.config.members[name]
                member_size = int(member["img_size"])
                if member_size not in resized:
                    resized[member_size] = resize_batch(chunk, member_size)
                logits = tta_logits(self.models[name], resized[member_size], member["mean"], member["std"])
                if member_size != size:
                    logits = np.stack([cv2.resize(l, (size, size), interpolation=cv2.INTER_LINEAR) for l in logits])
                out[name].append(logits)
        return {name: np.concatenate(parts) if parts else np.empty((0, size, size), np.float32)
                for name, parts in out.items()}

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        logits = self.member_logits(images)
        return pp.sigmoid(pp.blend_logits(logits["unetpp"], logits["deeplab"], self.config.w_unetpp))

    def predict_masks(self, images: list[np.ndarray], threshold: float | None = None,
                      min_area: int | None = None) -> list[np.ndarray]:
        """Binary masks at each image's own size."""
        threshold = self.config.threshold if threshold is None else threshold
        min_area = self.config.min_area if min_area is None else min_area
        return [pp.probability_to_mask(prob, threshold, min_area, image.shape[:2], self.config.resize_first)
                for image, prob in zip(images, self.probabilities(images))]


def mask_record(mask: np.ndarray) -> dict:
    """One output row of the served model."""
    height, width = mask.shape
    pixels = int(mask.sum())
    count = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    return {"rle": pp.rle_encode(mask), "height": height, "width": width, "pothole_pixels": pixels,
            "pothole_fraction": pixels / (height * width), "num_potholes": int(count)}


def decode_base64_image(value, row: int) -> np.ndarray:
    """A base64 JPEG/PNG from a request row to RGB uint8, with errors a client can act on."""
    from PIL import Image

    where = f"row {row} of column 'image'"
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: expected a base64-encoded JPEG or PNG string, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DatasetError(f"{where}: not valid base64 ({exc})") from exc
    try:
        with Image.open(io.BytesIO(raw)) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours
        raise DatasetError(f"{where}: image is over the limit of {MAX_IMAGE_PIXELS} pixels ({exc})") from exc
    except Exception as exc:  # Pillow raises several types for non-images
        raise DatasetError(f"{where}: the bytes are not a JPEG or PNG image") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{where}: image is {width}x{height} = {width * height} pixels, "
                           f"over the limit of {MAX_IMAGE_PIXELS} pixels")
    try:
        return decode_image(raw, where)
    except DatasetError as exc:
        raise DatasetError(f"{where}: the bytes are not a decodable JPEG or PNG image") from exc


class PotholeEnsembleModel(mlflow.pyfunc.PythonModel):
    """Input: DataFrame column ``image`` (base64 JPEG/PNG). Output: one row per image with
    RLE and statistics. Params ``threshold`` and ``min_area`` override the tuned values."""

    def load_context(self, context) -> None:
        config = EnsembleConfig.load(Path(context.artifacts["ensemble_config"]))
        dirs = {name: Path(context.artifacts[name]) for name in MEMBERS}
        self.predictor = EnsemblePredictor.from_checkpoints(dirs, config)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        params = params or {}
        try:
            if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
                found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
                raise DatasetError(f"input needs a column 'image' of base64 JPEG/PNG strings; got {found}")
            images = [decode_base64_image(v, i) for i, v in enumerate(model_input["image"].tolist())]
            threshold, min_area = params.get("threshold"), params.get("min_area")
            if threshold is not None and not 0 < float(threshold) < 1:
                raise DatasetError(f"param 'threshold' must be between 0 and 1, got {threshold}")
            if min_area is not None and int(min_area) < 0:
                raise DatasetError(f"param 'min_area' must be >= 0, got {min_area}")
        except DatasetError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        masks = self.predictor.predict_masks(
            images, threshold=None if threshold is None else float(threshold),
            min_area=None if min_area is None else int(min_area))
        return pd.DataFrame([mask_record(m) for m in masks], columns=OUTPUT_COLUMNS)
