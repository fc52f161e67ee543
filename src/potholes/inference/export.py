"""Export the ensemble members to ONNX for CPU inference with ONNX Runtime.

One graph per member: uint8 NHWC images at any model shape in (batch, height and width are
dynamic: photos keep their aspect, `geometry.model_hw`), flip-averaged logits out. The
normalisation and the horizontal-flip TTA are inside the graph, so ORT fuses them with the network;
the logit blend, threshold and min-area stay in numpy, shared with the torch path (the members may
be trained at different sizes, and the blend costs ~0.1 ms). Every graph passes `onnx.checker` and
is compared with the torch model on a fixed batch before it is stored.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from potholes.inference.onnx_runtime import MANIFEST

OPSET = 17
# Largest accepted |ORT - torch| on a member's logits: fp32 kernels differ in summation order
# (measured ~1e-4 on Lite0 members); a real export bug is off by far more.
MAX_LOGIT_DIFF = 1e-2


class FlipTTA(torch.nn.Module):
    """The graph exported for one member: what `ensemble.tta_logits` computes, from uint8 NHWC."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std): one subtraction and one division
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        n = x.shape[0]
        out = self.model(torch.cat([x, torch.flip(x, dims=[3])]))[:, 0]
        return (out[:n] + torch.flip(out[n:], dims=[2])) / 2


def sample_batch(size: int, count: int = 2, seed: int = 0, width: int | None = None) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, width or size, 3), dtype=np.uint8)


def export_member(model: torch.nn.Module, member: dict, path: Path) -> float:
    """Export one member to ``path``, check it, and return its max |ORT - torch| logit difference
    on a fixed batch (torch in fp32 on CPU, whatever device the model was trained on)."""
    import onnx
    import onnxruntime as ort

    from potholes.inference.onnx_runtime import session_options

    size = int(member["img_size"])
    graph = FlipTTA(copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format),
                    member["mean"], member["std"]).eval()
    with warnings.catch_warnings(), torch.inference_mode():
        # dynamo=False: the TorchScript exporter needs no onnxscript dependency and handles these
        # convolutional graphs; torch warns that it is the legacy path.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.from_numpy(sample_batch(size)),), str(path), dynamo=False,
                          input_names=["images"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"images": {0: "batch", 1: "height", 2: "width"},
                                        "logits": {0: "batch", 1: "height", 2: "width"}})
        onnx.checker.check_model(str(path), full_check=True)
        # A batch size and a shape other than the traced ones: a wide photo's model shape.
        batch = sample_batch(size, count=3, seed=1, width=size + 32)
        expected = graph(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    diff = float(np.abs(session.run(None, {"images": batch})[0] - expected).max())
    if not diff <= MAX_LOGIT_DIFF:
        raise RuntimeError(f"ONNX export of {path.name} disagrees with torch: max |logit diff| {diff:.3g} "
                           f"> {MAX_LOGIT_DIFF}")
    return diff


def export_members(predictor, folder: str | Path) -> Path:
    """Write ``<member>.onnx`` for each member of an `EnsemblePredictor` and a manifest into
    ``folder`` (the folder `OnnxMembers` loads); raises RuntimeError when a graph disagrees with torch."""
    from potholes.inference.ensemble import MEMBERS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"opset": OPSET, "torch": torch.__version__, "members": {}}
    for name in MEMBERS:
        member = predictor.config.members[name]
        diff = export_member(predictor.models[name], member, folder / f"{name}.onnx")
        manifest["members"][name] = {"file": f"{name}.onnx", "img_size": int(member["img_size"]),
                                     "max_abs_logit_diff": diff}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder
