"""Shared helpers of the benchmark scripts: data location, machine facts, timing, results JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The seed's reference code and the model-server helper live with the tests; the scripts use them too.
sys.path.insert(0, str(REPO / "tests"))
from helpers import ModelServer, free_port, wait_until_answering  # noqa: E402,F401

RESULTS = HERE / "results"
DEFAULT_REAL_DATA = REPO.parent / "shared" / "data" / "potholes"
sys.path.insert(0, str(HERE))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a run under a minute (what CI executes)")
    p.add_argument("--data-dir", default=os.environ.get("POTHOLES_REAL_DATA", str(DEFAULT_REAL_DATA)),
                   help="real dataset (default ../shared/data/potholes); synthetic data is generated when absent")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/<name>.json)")
    return p


def dataset(args, tmp: Path, n_train: int = 40, n_test: int = 12, size: int = 256) -> Path:
    """The real data when present (and not --quick), else a synthetic set generated in ``tmp``."""
    real = Path(args.data_dir)
    if not args.quick and (real / "train" / "images").is_dir():
        return real
    from potholes.data.synthetic import generate

    return generate(tmp / "synth", n_train=n_train, n_test=n_test, size=size, seed=1)


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def best_of(fn, repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def seconds_per_train_step(config, steps: int, precision: str = "fp32") -> float:
    """Mean wall time of ``steps`` optimizer steps of ``config``'s model (its optimizer, loss and
    channels_last input) in ``precision``, on one fixed random batch; one untimed step first, as
    oneDNN creates its primitives on the first call."""
    import torch

    from potholes.training.loop import autocast, init_state
    from potholes.training.losses import criterion
    from potholes.training.schedule import plan_training

    device = torch.device("cpu")
    state = init_state(config, plan_training(train_images=64, batch_size=config.batch_size, steps=steps + 1), device)
    loss_fn = criterion(config)
    generator = torch.Generator().manual_seed(0)
    size = config.img_size
    x = torch.randn((config.batch_size, 3, size, size), generator=generator).contiguous(memory_format=torch.channels_last)
    y = (torch.rand((config.batch_size, 1, size, size), generator=generator) > 0.8).float()
    state.model.train()

    def step():
        state.optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn(state.model(x).float(), y)
        loss.backward()
        state.optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def untrained_checkpoints(folder: Path, img_size: int) -> dict[str, Path]:
    """Both ensemble members at the cpu preset's architecture, randomly initialised: speed does not
    depend on the weights, so timing rows need no training."""
    import torch

    from potholes.inference.networks import save_checkpoint
    from potholes.training.config import resolve_config
    from potholes.training.models import build_model

    torch.manual_seed(0)
    dirs = {}
    for name in ("unetpp", "deeplab"):
        config = resolve_config(name, "cpu", img_size=img_size, encoder_weights="none")
        dirs[name] = save_checkpoint(build_model(name, config.encoder, None).state_dict(), config.model_config(),
                                     folder / name)
    return dirs


def tune_inputs(args, tmp: Path, img_size: int):
    """What `tune` searches over, with untrained members: the validation split at ``img_size``
    (images, masks), the ensemble, and the default search space at that size."""
    from potholes.data.dataset import build_manifest
    from potholes.inference import postprocess as pp
    from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
    from potholes.training.loader import load_split
    from potholes.tuning.search import SearchSpace

    prepared = build_manifest(dataset(args, tmp, n_train=30), progress=False)
    images, masks = load_split(prepared.layout.root, prepared.manifest, "val", img_size, progress=False)
    predictor = EnsemblePredictor.from_checkpoints(untrained_checkpoints(tmp / "ckpt", img_size),
                                                   EnsembleConfig(img_size=img_size))
    space = SearchSpace((0.0, 1.0), (0.30, 0.45), (pp.scaled_min_area(100, img_size), pp.scaled_min_area(400, img_size)))
    return images, masks, predictor, space


def untrained_store(tmp: Path, img_size: int):
    """A fresh MLflow store in ``tmp`` (the environment's tracking URI too, for servers started
    later) and an ensemble of untrained members: (tracking URI, checkpoint folders, predictor)."""
    import mlflow

    from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
    from potholes.tracking import runs as tracking

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    tracking.configure(project_root=tmp)
    dirs = untrained_checkpoints(tmp / "ckpt", img_size)
    return uri, dirs, EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig(img_size=img_size, min_area=25))


def register_untrained(tmp: Path, example: Path, img_size: int, name: str = "bench-ensemble") -> str:
    """`untrained_store` with the ensemble registered as ``name`` version 1, as `tune` registers
    it (ONNX graphs, slim code, signature); returns the tracking URI."""
    import mlflow

    from potholes.tuning.registry import log_and_register

    uri, dirs, predictor = untrained_store(tmp, img_size)
    base = {f"baseline_{k}_dice": 0.0 for k in ("unetpp", "deeplab", "blend50")}
    with mlflow.start_run(run_name=f"register-{name}"):
        log_and_register(predictor, dirs, example, name, 0.0, base, "bench", {"unetpp": "-", "deeplab": "-"})
    return uri


def stage_seconds(metrics: dict) -> dict:
    """A `main` parent run's time per stage (its ``*_seconds`` metrics), in name order."""
    return {k: metrics[k] for k in sorted(metrics) if k.endswith("_seconds")}


def pipeline_dice(metrics: dict) -> dict:
    """A `main` parent run's Dice figures: each member's and the tuned validation Dice, the test
    Dice (None without test masks) and its size buckets and percentiles."""
    return {"unetpp_val_dice": metrics["unetpp_val_dice"], "deeplab_val_dice": metrics["deeplab_val_dice"],
            "tuned_val_dice": metrics["tuned_val_dice"], "test_dice": metrics.get("test_dice"),
            **{k: metrics[k] for k in sorted(metrics) if k.startswith(("test_dice_", "test_images_"))}}


def report(name: str, rows: list[dict], extra: dict, args) -> None:
    """Print a table and write the JSON next to it."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-+-".join("-" * widths[k] for k in keys))
    for row in rows:
        print(" | ".join(_fmt(row.get(k)).ljust(widths[k]) for k in keys))
    out = Path(args.out) if args.out else RESULTS / f"{name}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "quick": args.quick, "machine": machine(), "rows": rows, **extra},
                              indent=2, default=str))
    print(f"\nresults: {out}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


