"""Row 7: the real `mlflow models serve` process on loopback under concurrent clients: errors,
p50/p95 latency and images/second, vs `predict` on the same images in-process."""

from __future__ import annotations

import base64
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from common import ModelServer, dataset, parser, report, untrained_checkpoints


def register(tmp: Path, example: Path, img_size: int) -> str:
    import mlflow

    from potholes import tracking
    from potholes.ensemble import EnsembleConfig, EnsemblePredictor
    from potholes.registry import log_and_register

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    tracking.configure(project_root=tmp)
    dirs = untrained_checkpoints(tmp / "ckpt", img_size)
    predictor = EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig(img_size=img_size, min_area=25))
    base = {f"baseline_{k}_dice": 0.0 for k in ("unetpp", "deeplab", "blend50")}
    with mlflow.start_run(run_name="bench-serving"):
        log_and_register(predictor, dirs, example, "bench-ensemble", 0.0, base, "bench",
                         {"unetpp": "-", "deeplab": "-"})
    return uri


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    if args.quick:
        args.clients, args.requests = 2, 3
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = dataset(args, tmp, n_test=12)
        images = sorted((data / "test" / "images").iterdir())[: max(args.clients, 8)]
        uri = register(tmp, images[0], args.img_size)
        with ModelServer("models:/bench-ensemble/1", uri) as server:
            url = server.url
            bodies = [{"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode()}]} for p in images]
            requests.post(f"{url}/invocations", json=bodies[0], timeout=120)  # warm-up

            def client(index: int) -> list[tuple[float, int]]:
                session, out = requests.Session(), []
                for r in range(args.requests):
                    start = time.perf_counter()
                    status = session.post(f"{url}/invocations", json=bodies[(index + r) % len(bodies)], timeout=300).status_code
                    out.append((time.perf_counter() - start, status))
                return out

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = [x for chunk in pool.map(client, range(args.clients)) for x in chunk]
            wall = time.perf_counter() - start

        import mlflow

        from potholes.predict import predict_submission

        predictor = mlflow.pyfunc.load_model("models:/bench-ensemble/1").unwrap_python_model().predictor
        order = [(p.name, p) for p in images]
        start = time.perf_counter()
        predict_submission(predictor, order, progress=False)
        predict_rate = len(order) / (time.perf_counter() - start)
    latencies = np.array([r[0] for r in results])
    errors = sum(1 for r in results if r[1] != 200)
    rows = [{"row": "7 serving", "clients": args.clients, "requests": len(results), "errors": errors,
             "target_errors": 0, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
             "p95_ms": float(np.percentile(latencies, 95) * 1e3), "serve_img_per_s": len(results) / wall,
             "predict_img_per_s": predict_rate, "serve_vs_predict": len(results) / wall / predict_rate}]
    report("serving", rows, {}, args)
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
