"""Row 8: the ONNX Runtime and OpenVINO paths vs the torch path of the same ensemble on the same
decoded images (resize, both members with flip TTA, blend, threshold, min-area, potholes), each
path's masks compared with torch's by Dice (a path may only be the default where they match: mean
per-image Dice >= 0.995). OpenVINO runs as `runtime=openvino` does (fp32 encoders, bf16 decoders
where the CPU has native bf16) and, for the record, all-bf16 and all-fp32; GFLOP per image counted with torch's FlopCounterMode and the achieved GFLOP/s
set against this machine's measured fp32 matmul peak. A fused single-graph export (both members and
the blend in one ONNX graph) is timed as well, to justify exporting one graph per member."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import dataset, parser, report, untrained_checkpoints

from potholes.data.dataset import find_dataset, read_image
from potholes.inference import openvino as openvino_runner
from potholes.inference.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor
from potholes.inference.export import FlipTTA, export_members, sample_batch
from potholes.inference.geometry import resize_batch
from potholes.inference.onnx_runtime import OnnxMembers, session_options
from potholes.inference.postprocess import dice_score
from potholes.inference.runtime import cpu_cores


def matmul_peak_gflops(size: int = 2048, repeat: int = 5) -> float:
    """fp32 GFLOP/s of a square torch matmul on all cores: the practical compute ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeat))
    return 2 * size ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gflop_per_image(predictor) -> float:
    """Both members' flip-TTA forwards of one image (the image and its mirror), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    for name in MEMBERS:
        member = predictor.config.members[name]
        graph = FlipTTA(copy.deepcopy(predictor.models[name]).float().cpu(), member["mean"], member["std"]).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            graph(torch.from_numpy(sample_batch(int(member["img_size"]), count=1)))
        total += counter.get_total_flops()
    return total / 1e9


class FusedGraph(torch.nn.Module):
    """Both members and the logit blend as one graph (only possible when they share a size)."""

    def __init__(self, predictor):
        super().__init__()
        members = predictor.config.members
        self.graphs = torch.nn.ModuleList(
            FlipTTA(copy.deepcopy(predictor.models[n]).float().cpu(), members[n]["mean"], members[n]["std"])
            for n in MEMBERS)
        self.w = float(predictor.config.w_unetpp)

    def forward(self, images):
        return self.w * self.graphs[0](images) + (1 - self.w) * self.graphs[1](images)


def fused_session(predictor, path: Path):
    import onnxruntime as ort

    size = int(predictor.config.img_size)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(FusedGraph(predictor).eval(), (torch.from_numpy(sample_batch(size)),), str(path),
                          dynamo=False, input_names=["images"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


class OpenVinoWhole:
    """Each member's whole graph compiled by OpenVINO at one precision (not a runtime: the record)."""

    def __init__(self, folder: Path, precision: str):
        members = OnnxMembers(folder).manifest["members"]
        options = openvino_runner.compile_options(precision)
        self.compiled = {name: openvino_runner.core().compile_model(str(folder / entry["file"]), "CPU", options)
                         for name, entry in members.items()}

    def logits(self, name: str, images: np.ndarray) -> np.ndarray:
        return self.compiled[name](np.ascontiguousarray(images))[0]


def load_predictor(args, tmp: Path) -> tuple[EnsemblePredictor, str]:
    if args.model_uri:  # a registered (trained) ensemble: the Dice between runtimes then means something
        import mlflow

        predictor = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model().predictor
        if predictor.onnx is None:
            raise SystemExit(f"{args.model_uri} has no ONNX graphs; register it again with tune")
        return predictor, args.model_uri
    dirs = untrained_checkpoints(tmp / "ckpt", args.img_size)
    config = EnsembleConfig(img_size=args.img_size, min_area=25, threshold=0.5)
    predictor = EnsemblePredictor.from_checkpoints(dirs, config, batch_size=args.batch_size)
    predictor.onnx = OnnxMembers(export_members(predictor, tmp / "onnx"))  # what tune stores with the model
    return predictor, "random weights"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="alternating timed passes per path; best and median kept")
    p.add_argument("--model-uri", default=None, help="registered ensemble (default: random weights, exported here)")
    args = p.parse_args()
    if args.quick:  # seconds: the smallest size the encoders take, 2 images, one timed pass
        args.img_size, args.repeat = 64, 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = dataset(args, tmp, n_test=6, size=192)
        paths = sorted(find_dataset(data).test_images.iterdir())[: 2 if args.quick else None]
        images = [read_image(path) for path in paths]
        predictor, weights = load_predictor(args, tmp)
        predictor.batch_size = args.batch_size
        fused = fused_session(predictor, tmp / "fused.onnx")
        size = int(predictor.config.img_size)

        def fused_pass():
            for start in range(0, len(images), args.batch_size):
                fused.run(None, {"images": resize_batch(images[start:start + args.batch_size], size)})

        # Every path is the same predictor (resize, blend, threshold, min-area, potholes) with only
        # the member forwards swapped: a real runtime by name, or a record-only OpenVINO variant.
        ort_members = predictor.onnx
        variants = {"openvino_all_bf16": OpenVinoWhole(ort_members.folder, "bf16"),
                    "openvino_all_f32": OpenVinoWhole(ort_members.folder, "f32")}
        paths = ("torch", "onnx", "openvino", *variants)

        def run(path):
            if path in variants:
                predictor.onnx = variants[path]
                try:
                    return predictor.predict(images, runtime="onnx")
                finally:
                    predictor.onnx = ort_members
            return predictor.predict(images, runtime=path)

        outputs = {path: run(path) for path in paths}  # warm-up, and the masks compared
        fused_pass()
        times = {path: [] for path in (*paths, "onnx_fused_forward", "onnx_forward")}
        for _ in range(args.repeat):  # alternate, so drifting load on a shared machine hits every path
            for path in paths:
                times[path].append(_timed(lambda path=path: run(path)))
            times["onnx_forward"].append(_timed(lambda: predictor.member_logits(images, runtime="onnx")))
            times["onnx_fused_forward"].append(_timed(fused_pass))
        dice = {path: [dice_score(a[0], b[0]) for a, b in zip(outputs["torch"], outputs[path])] for path in paths[1:]}
        default = predictor.runtime_for("auto")  # what a CPU request gets here
        gflop = gflop_per_image(predictor)
    peak = matmul_peak_gflops(1024 if args.quick else 2048)
    n = len(images)
    rate = {k: n / min(v) for k, v in times.items()}
    row = {"row": "8 runtime", "images": n, "img_size": size, "batch": args.batch_size, "weights": weights,
           "default_runtime": default, "openvino_decoder_precision": predictor.openvino.decoder_precision,
           "torch_img_per_s": rate["torch"]}
    for path in paths[1:]:
        row |= {f"{path}_img_per_s": rate[path], f"{path}_vs_torch": rate[path] / rate["torch"],
                f"{path}_vs_torch_median": statistics.median(times["torch"]) / statistics.median(times[path]),
                f"{path}_dice_mean": float(np.mean(dice[path])), f"{path}_dice_min": float(np.min(dice[path]))}
    row |= {"runtime_vs_torch": rate[default] / rate["torch"], "target": ">= 2",
            "mask_dice_mean": float(np.mean(dice[default])) if default != "torch" else 1.0,
            "fused_vs_per_member_forward": rate["onnx_fused_forward"] / rate["onnx_forward"],
            "gflop_per_image": gflop, "matmul_peak_gflops": peak, "torch_gflops": gflop * rate["torch"]}
    for path in ("onnx", "openvino"):
        row |= {f"{path}_gflops": gflop * rate[path], f"{path}_fraction_of_peak": gflop * rate[path] / peak}
    report("runtime", [row], {"times_s": times, "threads": cpu_cores(), "per_image_dice": dice}, args)


if __name__ == "__main__":
    main()
