"""Row 10: what a registered model makes its server install and import, before and after the
slim package: the whole `potholes` package with every pin (before) vs the serving code and the
pins of what it imports (after, what `tune` registers). Both models hold the same members and
graphs and are logged side by side in one run; for each: pinned packages, installed size of a
fresh environment built from its requirements (uv, from its cache), and seconds from starting
`mlflow models serve` to the first answer of /invocations."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import ModelServer, dataset, parser, report, untrained_store


def log_both(tmp: Path, example: Path, img_size: int) -> tuple[str, dict[str, str]]:
    import mlflow
    import pandas as pd

    from potholes.inference.export import export_members
    from potholes.packaging import model_package
    from potholes.packaging.model_package import pinned_requirements

    uri, dirs, predictor = untrained_store(tmp, img_size)
    config_path = predictor.config.save(tmp / "ensemble_config.json")
    artifacts = {"ensemble_config": str(config_path), "onnx": str(export_members(predictor, tmp / "onnx")),
                 **{n: str(d) for n, d in dirs.items()}}
    pins = pinned_requirements()
    shapes = {"before": ([str(model_package.PACKAGE)], pins),
              "after": ([str(model_package.stage_code(tmp / "code"))], model_package.serve_requirements(pins))}
    example_frame = pd.DataFrame({"image": [base64.b64encode(example.read_bytes()).decode("ascii")]})
    uris = {}
    with mlflow.start_run(run_name="bench-served-model"):
        for name, (code_paths, requirements) in shapes.items():
            info = mlflow.pyfunc.log_model(name=name, python_model=str(model_package.MODEL_FILE), artifacts=artifacts,
                                           code_paths=code_paths, pip_requirements=requirements,
                                           input_example=example_frame)
            uris[name] = info.model_uri
    return uri, uris


def environment_mb(requirements: Path, where: Path) -> float:
    """Installed size of a fresh venv with ``requirements``, built by uv from its cache."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "venv", "-q", str(where), "--python", sys.executable], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(where / "bin" / "python"), "-r", str(requirements)],
                   check=True, env=env)
    size = int(subprocess.run(["du", "-sk", str(where)], capture_output=True, text=True, check=True).stdout.split()[0])
    shutil.rmtree(where)
    return size / 1024


def seconds_to_first_answer(model_uri: str, tracking_uri: str, body: dict, log: Path) -> float:
    start = time.perf_counter()
    with ModelServer(model_uri, tracking_uri, log_path=log, timeout=300) as server:
        reply = requests.post(f"{server.url}/invocations", json=body, timeout=120)
        reply.raise_for_status()
        return time.perf_counter() - start


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeat", type=int, default=2, help="server starts per model (alternating); the median is kept")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = dataset(args, tmp, n_train=4, n_test=2, size=256)
        example = sorted((data / "test" / "images").iterdir())[0]
        tracking_uri, uris = log_both(tmp, example, 256)
        import mlflow

        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(example.read_bytes()).decode("ascii")]]}}
        rows = {name: {"model_uri": uri} for name, uri in uris.items()}
        for name, uri in uris.items():
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp / f"dl-{name}")))
            requirements = local / "requirements.txt"
            rows[name]["pinned_packages"] = len([line for line in requirements.read_text().split() if "==" in line])
            rows[name]["shipped_py_files"] = len(list((local / "code").rglob("*.py")))
            if not args.quick:  # building two environments takes minutes
                rows[name]["environment_mb"] = round(environment_mb(requirements, tmp / f"env-{name}"))
        for attempt in range(1 if args.quick else args.repeat):
            for name, uri in uris.items():
                rows[name].setdefault("first_answer_s", []).append(
                    round(seconds_to_first_answer(uri, tracking_uri, body, tmp / f"serve-{name}.log"), 2))
        for row in rows.values():
            row["first_answer_s_median"] = sorted(row["first_answer_s"])[len(row["first_answer_s"]) // 2]
    extra = {"after_vs_before_pins": rows["after"]["pinned_packages"] / rows["before"]["pinned_packages"],
             "first_answer_ratio_before_over_after": rows["before"]["first_answer_s_median"]
             / rows["after"]["first_answer_s_median"]}
    report("served_model", [{"model": name, **row} for name, row in rows.items()], extra, args)


if __name__ == "__main__":
    main()
