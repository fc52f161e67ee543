"""A real, throwaway PostgreSQL server for tests.

`PostgresServer` runs ``initdb`` and ``pg_ctl`` in a fresh folder under the system temp dir and
listens on 127.0.0.1 only, on a free port (plus a Unix socket inside that folder), with trust
authentication for the ``postgres`` role (nothing but this machine can reach it). Stopping it
(``pg_ctl stop -m fast``, then a kill of the postmaster if that fails) also deletes the folder.

Binaries, first found wins: ``POTHOLES_PG_BINDIR``; the PostgreSQL 16 build inside the PyPI
package ``pgserver`` (part of the ``dev`` extra, so ``pip install -e '.[dev]'`` is enough);
``pg_ctl`` on PATH; Debian's ``/usr/lib/postgresql/<version>/bin`` (package ``postgresql``).

Root: initdb and postgres refuse to run as root, so under root the server runs as the system
account ``potholes-pg`` (created with ``useradd --system`` on first use) and its folder belongs
to it. The binaries' folders must then be readable by that account: a candidate it cannot run
(a venv inside a root-only folder) is passed over for the next one.

Fixtures (imported by conftest.py): ``postgres_server`` (one server per test session) and
``postgres_url`` (a new empty database per test, as a SQLAlchemy URL ``postgresql+psycopg://``
that MLflow, SQLAlchemy and ``optuna.storages.RDBStorage`` accept).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from engines import SCALE_INSTALL, missing, need_modules

SERVICE_ACCOUNT = "potholes-pg"


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path | None:
    candidates = []
    if os.environ.get("POTHOLES_PG_BINDIR"):
        candidates.append(Path(os.environ["POTHOLES_PG_BINDIR"]))
    spec = importlib.util.find_spec("pgserver")  # located without importing it (its import has side effects)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    for folder in candidates:
        if all((folder / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres", "createdb")) and _runnable(folder):
            return folder
    return None


def _runnable(folder: Path) -> bool:
    """Whether the server's account can run these binaries (under root: the service account, which
    cannot enter a checkout kept in a root-only folder; the next candidate is tried then)."""
    kwargs = {}
    if os.geteuid() == 0:
        uid, gid = _service_account()
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    try:
        return subprocess.run([str(folder / "postgres"), "--version"], capture_output=True, timeout=30, cwd="/",
                              **kwargs).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_account() -> tuple[int, int]:
    """uid, gid of the account the server runs as when we are root (created when missing)."""
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT], capture_output=True)
        try:  # a concurrent test process may have created it first: look again either way
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError as exc:
            raise PostgresUnavailable(f"running as root, and the account '{SERVICE_ACCOUNT}' for PostgreSQL "
                                      "could not be created with useradd") from exc
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """Context manager: a started server; ``url(database)`` gives SQLAlchemy URLs."""

    def __init__(self, bindir: Path | None = None, timeout: float = 60):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {SCALE_INSTALL} "
                                      "brings them with the pgserver package; or apt-get install postgresql, "
                                      "or set POTHOLES_PG_BINDIR")
        self.timeout = timeout
        self.port = 0
        self.folder: Path | None = None

    # -- processes ---------------------------------------------------------------------------
    def _run(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        kwargs = {}
        if os.geteuid() == 0:
            uid, gid = _service_account()
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        return subprocess.run(args, cwd=self.folder, capture_output=True, text=True, timeout=timeout or self.timeout,
                              env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}, **kwargs)

    def _checked(self, args: list[str], what: str) -> str:
        try:
            out = self._run(args)
        except PermissionError as exc:
            raise PostgresUnavailable(f"{what}: the service account '{SERVICE_ACCOUNT}' cannot run {args[0]} "
                                      f"({exc}); make the folders above {self.bindir} world-executable") from exc
        if out.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{what} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}\n{log}")
        return out.stdout

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def start(self) -> "PostgresServer":
        # Not under pytest's tmp_path: its parents are root-only (0700), the service account could not enter.
        self.folder = Path(tempfile.mkdtemp(prefix="potholes-pg-"))
        if os.geteuid() == 0:
            uid, gid = _service_account()
            os.chown(self.folder, uid, gid)
        try:
            self._checked([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "--encoding=UTF8", "--no-locale", "--no-sync"], "initdb")
            for attempt in range(3):  # the free port can be taken between our probe and the bind
                self.port = free_port()
                options = (f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c synchronous_commit=off "
                           "-c full_page_writes=off -c max_connections=60")
                try:
                    self._checked([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                   "-w", "-t", str(int(self.timeout)), "-o", options, "start"], "pg_ctl start")
                    break
                except PostgresUnavailable:
                    if attempt == 2 or "could not bind" not in (self.log.read_text() if self.log.exists() else ""):
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                               "stop"], timeout=40)
                except (subprocess.TimeoutExpired, OSError):
                    pass
                pid_file = self.data / "postmaster.pid"
                if pid_file.exists():  # pg_ctl could not stop it: kill the postmaster itself
                    with contextlib.suppress(ValueError, OSError):
                        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                        time.sleep(1)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        out = subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              name], capture_output=True, text=True, timeout=self.timeout)
        if out.returncode != 0:
            raise PostgresUnavailable(f"createdb {name} failed: {out.stderr.strip()}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server on 127.0.0.1 for the test session (stopped and deleted at its end)."""
    need_modules("psycopg")  # the driver behind the postgresql+psycopg:// URLs
    if find_bindir() is None:
        missing("no PostgreSQL server binaries found: pip install -e '.[dev]' (package pgserver), "
                "or apt-get install postgresql, or set POTHOLES_PG_BINDIR")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh empty database on the session's server: ``postgresql+psycopg://postgres@127.0.0.1:PORT/test_xxx``."""
    return postgres_server.create_database()
