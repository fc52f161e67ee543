"""OpenVINO CPU inference of the exported ensemble members, in mixed precision.

The same ONNX graphs that ONNX Runtime runs (see `potholes.inference.export`) are split at load time into the
encoder (uint8 images -> the features the decoder takes) and the rest (features -> flip-averaged
logits). The encoder runs in fp32, the decoder in bf16 where this CPU computes bf16 natively
(OpenVINO defaults to bf16 only on CPUs with AMX). Measured on the dev test set (BENCHMARKS.md
row 8): all-bf16 moves the masks away from torch's (mean per-image Dice 0.991, worst image 0.94),
bf16 encoder + fp32 decoder just as much, while fp32 encoder + bf16 decoder keeps them (0.9998) -
and the decoders are ~80 % of the FLOPs, so most of the bf16 speed stays. On a CPU without native
bf16 both parts run in fp32, which OpenVINO runs no faster than ONNX Runtime here, so `auto` only
picks this path where `native_bf16()` holds.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np

from potholes.inference.onnx_runtime import MANIFEST
from potholes.inference.runtime import cpu_cores

ENCODER_PREFIX = "/model/encoder/"  # node names torch.onnx gives FlipTTA.model.encoder
INPUT, OUTPUT = "images", "logits"


@functools.lru_cache(maxsize=1)
def core():
    import openvino as ov

    return ov.Core()


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True where OpenVINO's CPU plugin would run bf16 by default (AMX): the mixed path is fast."""
    if not available():
        return False
    return str(core().get_property("CPU", "INFERENCE_PRECISION_HINT")) in ("<Type: 'bfloat16'>", "bf16")


def encoder_boundary(model) -> list[str]:
    """Tensors produced by encoder nodes and read by anything else: the encoder's outputs."""
    producer = {out: node.name for node in model.graph.node for out in node.output}
    boundary: list[str] = []
    for node in model.graph.node:
        if node.name.startswith(ENCODER_PREFIX):
            continue
        for name in node.input:
            if producer.get(name, "").startswith(ENCODER_PREFIX) and name not in boundary:
                boundary.append(name)
    return boundary


def split_member(path: Path, folder: Path) -> tuple[Path, Path] | None:
    """``<name>.encoder.onnx`` (images -> encoder outputs) and ``<name>.decoder.onnx`` (encoder
    outputs and images, for the batch size, -> logits) in ``folder``; None when the graph has no
    recognisable encoder (then the whole graph runs in fp32)."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(path))
    boundary = encoder_boundary(model)
    if not boundary:
        return None
    extractor = Extractor(onnx.shape_inference.infer_shapes(model))  # the cut tensors need their shapes
    encoder, decoder = folder / f"{path.stem}.encoder.onnx", folder / f"{path.stem}.decoder.onnx"
    onnx.save(extractor.extract_model([INPUT], boundary), str(encoder))
    onnx.save(extractor.extract_model(boundary + [INPUT], [OUTPUT]), str(decoder))
    return encoder, decoder


def compile_options(precision: str) -> dict:
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cpu_cores(),
            "INFERENCE_PRECISION_HINT": precision}


class _Member:
    """One member: encoder and decoder compiled models (or the whole graph when not split)."""

    def __init__(self, path: Path, decoder_precision: str):
        with tempfile.TemporaryDirectory() as tmp:  # compiled models keep no reference to the files
            parts = split_member(path, Path(tmp)) if decoder_precision != "f32" else None
            if parts is None:
                self.encoder, self.decoder = None, core().compile_model(str(path), "CPU", compile_options("f32"))
            else:
                self.encoder = core().compile_model(str(parts[0]), "CPU", compile_options("f32"))
                self.decoder = core().compile_model(str(parts[1]), "CPU", compile_options(decoder_precision))
        self.requests = [m.create_infer_request() for m in (self.encoder, self.decoder) if m is not None]
        self.decoder_inputs = [port.get_any_name() for port in self.decoder.inputs]

    def logits(self, images: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            return self.requests[0].infer({INPUT: images})[0].copy()
        features = {port.get_any_name(): value for port, value in self.requests[0].infer({INPUT: images}).items()}
        features[INPUT] = images
        return self.requests[1].infer({name: features[name] for name in self.decoder_inputs})[0].copy()


class OpenVinoMembers:
    """The members of an exported folder (the one `OnnxMembers` loads) compiled by OpenVINO for the
    CPU. ``decoder_precision``: 'bf16' (the default where native), or 'f32'. Not thread-safe (one
    infer request per part): the predictor runs one forward at a time."""

    def __init__(self, folder: str | Path, decoder_precision: str | None = None):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        self.decoder_precision = decoder_precision or ("bf16" if native_bf16() else "f32")
        self.members = {name: _Member(self.folder / entry["file"], self.decoder_precision)
                        for name, entry in self.manifest["members"].items()}

    def logits(self, name: str, images: np.ndarray) -> np.ndarray:
        """Flip-averaged logits (N,H,W) of a uint8 (N,H,W,3) batch."""
        return self.members[name].logits(np.ascontiguousarray(images))
