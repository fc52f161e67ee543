"""Which runtime runs the networks: the ``runtime`` parameter, what ``auto`` picks, and the
cores a process owns (the thread count every runtime uses)."""

from __future__ import annotations

import os

from potholes.errors import ParamError

RUNTIMES = ("auto", "onnx", "openvino", "torch")


THREADS_ENV = "POTHOLES_THREADS"


def cpu_cores() -> int:
    """Threads ONNX Runtime and OpenVINO use in this process: ``POTHOLES_THREADS`` when set (Spark
    sets it to ``spark.task.cpus`` for its Python workers, so parallel tasks do not oversubscribe
    the cores), else the cores this process may run on (its affinity mask, not the host's count)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ParamError(THREADS_ENV, value, "a whole number of threads, 1 or more")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_runtime(value) -> str:
    if value is None:
        return "auto"
    if not isinstance(value, str) or value not in RUNTIMES:
        raise ParamError("runtime", value, f"one of {list(RUNTIMES)}")
    return value


def resolve_runtime(requested, has_onnx: bool, cuda: bool, openvino: bool = False) -> str:
    """``auto``: torch on CUDA; else, when the model holds ONNX graphs, OpenVINO where ``openvino``
    (installed, and this CPU runs its mixed fp32/bf16 path natively: `potholes.inference.openvino.native_bf16`)
    or ONNX Runtime; else torch. ``onnx`` or ``openvino`` on a model without graphs is an error
    rather than a silent switch."""
    requested = check_runtime(requested)
    if requested in ("onnx", "openvino") and not has_onnx:
        raise ParamError("runtime", requested, "'auto' or 'torch': this model version has no ONNX graphs "
                         "(it was registered before ONNX export existed; run tune again to add them)")
    if requested == "auto":
        return "torch" if cuda or not has_onnx else "openvino" if openvino else "onnx"
    return requested
