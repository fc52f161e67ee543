"""ONNX Runtime sessions for the exported ensemble members, and the choice of runtime.

Each member's graph (see onnx_export.py) takes a uint8 NHWC batch at the member's size and returns
its flip-averaged logits, so the ORT path replaces exactly the torch `tta_logits` call and shares
everything after it (blend, threshold, min-area, resizing) with the torch path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from potholes.params import ParamError

RUNTIMES = ("auto", "onnx", "openvino", "torch")
MANIFEST = "manifest.json"


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_cores()  # one thread per core: more only oversubscribes
    options.inter_op_num_threads = 1  # the graphs are a single chain of convolutions; sequential is enough
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers sleep instead of spinning: on 2 shared cores a spinning pool steals the CPU that
    # the image-decoding thread and the other processes need (measured 2.1x faster ORT under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxMembers:
    """One CPU InferenceSession per ensemble member, loaded from an exported folder."""

    def __init__(self, folder: str | Path):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        options = session_options()
        self.sessions = {name: ort.InferenceSession(str(self.folder / entry["file"]), options,
                                                    providers=["CPUExecutionProvider"])
                         for name, entry in self.manifest["members"].items()}

    def logits(self, name: str, images: np.ndarray) -> np.ndarray:
        """Flip-averaged logits (N,S,S) of a uint8 (N,S,S,3) batch."""
        return self.sessions[name].run(None, {"images": np.ascontiguousarray(images)})[0]


def check_runtime(value) -> str:
    if value is None:
        return "auto"
    if not isinstance(value, str) or value not in RUNTIMES:
        raise ParamError("runtime", value, f"one of {list(RUNTIMES)}")
    return value


def resolve_runtime(requested, has_onnx: bool, cuda: bool, openvino: bool = False) -> str:
    """``auto``: torch on CUDA; else, when the model holds ONNX graphs, OpenVINO where ``openvino``
    (installed, and this CPU runs its mixed fp32/bf16 path natively: `openvino_runner.native_bf16`)
    or ONNX Runtime; else torch. ``onnx`` or ``openvino`` on a model without graphs is an error
    rather than a silent switch."""
    requested = check_runtime(requested)
    if requested in ("onnx", "openvino") and not has_onnx:
        raise ParamError("runtime", requested, "'auto' or 'torch': this model version has no ONNX graphs "
                         "(it was registered before ONNX export existed; run tune again to add them)")
    if requested == "auto":
        return "torch" if cuda or not has_onnx else "openvino" if openvino else "onnx"
    return requested
