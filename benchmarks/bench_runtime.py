"""Row 8: the ONNX Runtime path vs the torch path of the same ensemble on the same decoded images
(resize, both members with flip TTA, blend, threshold, min-area, potholes), with the masks of both
compared by Dice; GFLOP per image counted with torch's FlopCounterMode and the achieved GFLOP/s
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
from potholes.data import find_dataset, read_image
from potholes.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor, resize_batch
from potholes.onnx_export import FlipTTA, export_members, sample_batch
from potholes.ort_runner import OnnxMembers, cpu_cores, session_options
from potholes.postprocess import dice_score


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

        outputs = {runtime: predictor.predict(images, runtime=runtime) for runtime in ("torch", "onnx")}  # warm-up
        fused_pass()
        times = {"torch": [], "onnx": [], "onnx_fused_forward": [], "onnx_forward": []}
        for _ in range(args.repeat):  # alternate, so drifting load on a shared machine hits both paths
            times["torch"].append(_timed(lambda: predictor.predict(images, runtime="torch")))
            times["onnx"].append(_timed(lambda: predictor.predict(images, runtime="onnx")))
            times["onnx_forward"].append(_timed(lambda: predictor.member_logits(images, runtime="onnx")))
            times["onnx_fused_forward"].append(_timed(fused_pass))
        dice = [dice_score(a[0], b[0]) for a, b in zip(outputs["torch"], outputs["onnx"])]
        gflop = gflop_per_image(predictor)
    peak = matmul_peak_gflops(1024 if args.quick else 2048)
    n = len(images)
    rate = {k: n / min(v) for k, v in times.items()}
    row = {"row": "8 runtime", "images": n, "img_size": size, "batch": args.batch_size, "weights": weights,
           "torch_img_per_s": rate["torch"], "onnx_img_per_s": rate["onnx"],
           "runtime_vs_torch": rate["onnx"] / rate["torch"],
           "runtime_vs_torch_median": statistics.median(times["torch"]) / statistics.median(times["onnx"]),
           "target": ">= 2", "fused_vs_per_member_forward": rate["onnx_fused_forward"] / rate["onnx_forward"],
           "mask_dice_mean": float(np.mean(dice)), "mask_dice_min": float(np.min(dice)),
           "gflop_per_image": gflop, "matmul_peak_gflops": peak,
           "torch_gflops": gflop * rate["torch"], "onnx_gflops": gflop * rate["onnx"],
           "onnx_fraction_of_peak": gflop * rate["onnx"] / peak}
    report("runtime", [row], {"times_s": times, "ort_threads": cpu_cores(), "per_image_dice": dice}, args)


if __name__ == "__main__":
    main()
