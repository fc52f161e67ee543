"""ONNX Runtime sessions for the exported ensemble members.

Each member's graph (see `potholes.inference.export`) takes a uint8 NHWC batch at a model
shape and returns its flip-averaged logits, so the ORT path replaces exactly the torch
`tta_logits` call and shares everything after it (blend, threshold, min-area, resizing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from potholes.inference.runtime import cpu_cores

MANIFEST = "manifest.json"


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
        """Flip-averaged logits (N,H,W) of a uint8 (N,H,W,3) batch."""
        return self.sessions[name].run(None, {"images": np.ascontiguousarray(images)})[0]
