"""Row 7: the real `mlflow models serve` process on loopback under 1, 8 and 32 concurrent clients:
errors, p50/p95 latency, images/second and the server's memory (RSS of the server and its workers)
before and after the requests, vs `predict` on the same images in-process."""

from __future__ import annotations

import base64
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from common import ModelServer, dataset, parser, register_untrained, report


def server_rss_mb(pid: int) -> float:
    """Resident memory of the server process and all its children (uvicorn workers), in MB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


def load(url: str, bodies: list[dict], clients: int, total: int) -> tuple[list[tuple[float, int]], float]:
    """``total`` requests spread over ``clients`` threads (a bounded loop each); (latency, status) per
    request and the wall time."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(index: int) -> list[tuple[float, int]]:
        session, out = requests.Session(), []
        for r in range(per_client[index]):
            start = time.perf_counter()
            try:
                status = session.post(f"{url}/invocations", json=bodies[(index + r) % len(bodies)],
                                      timeout=300).status_code
            except requests.RequestException:
                status = -1
            out.append((time.perf_counter() - start, status))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for chunk in pool.map(client, range(clients)) for x in chunk]
    return results, time.perf_counter() - start


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=500, help="requests (one image each) per level")
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if args.quick:
        args.requests, args.img_size = 0, 128  # 0: as many requests as clients at each level
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = dataset(args, tmp, n_test=12)
        images = sorted((data / "test" / "images").iterdir())[:8]
        uri = register_untrained(tmp, images[0], args.img_size)
        bodies = [{"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode()}]} for p in images]
        rows = []
        with ModelServer("models:/bench-ensemble/1", uri) as server:
            for body in bodies[:2]:
                requests.post(f"{server.url}/invocations", json=body, timeout=120).raise_for_status()  # warm-up
            rss_start = server_rss_mb(server.process.pid)
            for clients in levels:
                rss_before = server_rss_mb(server.process.pid)
                results, wall = load(server.url, bodies, clients, args.requests or clients)
                latencies = np.array([r[0] for r in results])
                rows.append({"row": "7 serving", "clients": clients, "requests": len(results),
                             "errors": sum(1 for r in results if r[1] != 200), "target_errors": 0,
                             "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                             "p95_ms": float(np.percentile(latencies, 95) * 1e3),
                             "serve_img_per_s": len(results) / wall, "target_img_per_s": ">= 10",
                             "rss_mb_before": rss_before, "rss_mb_after": server_rss_mb(server.process.pid)})
            rss_end = server_rss_mb(server.process.pid)

        import mlflow

        from potholes.stages.predict import local_rows

        predictor = mlflow.pyfunc.load_model("models:/bench-ensemble/1").unwrap_python_model().predictor
        order = [(p.name, p) for p in images]
        list(local_rows(predictor, order[:2], progress=False))  # warm-up
        start = time.perf_counter()
        list(local_rows(predictor, order, progress=False))
        predict_rate = len(order) / (time.perf_counter() - start)
    for row in rows:
        row["predict_img_per_s"] = predict_rate
        row["serve_vs_predict"] = row["serve_img_per_s"] / predict_rate
    report("serving", rows, {"img_size": args.img_size, "runtime": predictor.runtime,
                             "rss_mb_start": rss_start, "rss_mb_end": rss_end,
                             "rss_growth_mb": rss_end - rss_start}, args)
    errors = sum(row["errors"] for row in rows)
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
