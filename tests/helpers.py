"""What many tests share: where the repository and the real photos are, the environment of a
user's shell, running `potholes`, reading a run's artifacts and curves, waiting for a condition,
and `mlflow models serve` on a loopback port (the benchmarks use it too)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("POTHOLES_REAL_DATA", REPO.parent / "shared" / "data" / "potholes"))
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "train" / "images").is_dir(),
    reason=f"real dataset not found at {REAL_DATA} (set POTHOLES_REAL_DATA)",
)


def cli_env(tmp_path, **extra) -> dict:
    """Environment for subprocess runs as a user with the venv activated and a private store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return env


def artifacts(run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in MlflowClient().list_artifacts(run_id, path):
        out |= artifacts(run_id, item.path) if item.is_dir else {item.path}
    return out


def round_steps(run_id: str) -> list[int]:
    """The optimizer steps at which the run's rounds end, from its logged plan."""
    params = MlflowClient().get_run(run_id).data.params
    per_round, rounds = int(params["config.plan.steps_per_round"]), int(params["config.plan.rounds"])
    return [per_round * r for r in range(1, rounds + 1)]


def potholes(*args, env, cwd, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "potholes", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def wait_for(condition, timeout: float = 300.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def curves(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in ("train_loss", "val_loss", "val_dice")}


def train_runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.`potholes.stage` = 'train'",
                              order_by=["attributes.start_time ASC"], output_format="list")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(process, url: str, timeout: float, on_failure, what: str) -> None:
    """Poll ``url`` until it answers 200; if the server exits or ``timeout`` passes first, call
    ``on_failure`` (which stops it) and raise with ``what`` and the server's log."""
    import requests

    deadline = time.time() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.time() > deadline:
            tail = on_failure()
            raise RuntimeError(f"{what} did not answer {url}: {tail}")
        time.sleep(0.5)


class ModelServer:
    """`mlflow models serve` for ``model_uri`` on a free loopback port; a context manager that
    waits for /ping and stops the server (and its workers) by its process group."""

    def __init__(self, model_uri: str, tracking_uri: str, log_path: Path | None = None, timeout: float = 120):
        self.model_uri, self.tracking_uri, self.log_path, self.timeout = model_uri, tracking_uri, log_path, timeout
        self.url = ""

    def __enter__(self) -> "ModelServer":
        import subprocess


        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", self.model_uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

        def stop():
            self.__exit__(None, None, None)
            return Path(self.log_path).read_text()[-2000:] if self.log_path else ""

        wait_until_answering(self.process, f"{self.url}/ping", self.timeout, stop, "`mlflow models serve`")
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        if self.log_path:
            self._log.close()
