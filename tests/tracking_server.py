"""`mlflow server` for tests: a PostgreSQL backend store, proxied artifacts in a folder, loopback
only. A context manager that waits for /health and stops the server's whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import wait_until_answering
from pg import free_port


class TrackingServer:
    def __init__(self, backend_store_uri: str, artifacts: Path, log_path: Path, workers: int = 1,
                 timeout: float = 180):
        self.backend_store_uri, self.artifacts, self.log_path = backend_store_uri, Path(artifacts), Path(log_path)
        self.workers, self.timeout = workers, timeout
        self.url = ""
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "TrackingServer":

        port = free_port()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", self.artifacts.resolve().as_uri(), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(self.workers)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

        def stop():
            self.__exit__(None, None, None)
            return "\n" + self.log_path.read_text()[-3000:]

        wait_until_answering(self.process, f"{self.url}/health", self.timeout, stop, "`mlflow server`")
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self.process is not None:
            try:  # workers or job runners that outlived the leader
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
