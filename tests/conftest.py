"""Shared helpers and fixtures. Test modules import helpers from here (``from conftest import ...``),
never from one another."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# On 2 cores, two torch threads can make a tiny step 100x slower.
torch.set_num_threads(1)


def require_service(name: str, reason: str):
    """Skip with a clear reason on a user's machine; fail in CI (ML3_REQUIRE_SERVICES=1)."""
    if os.environ.get("ML3_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required in CI but unavailable: {reason}")
    pytest.skip(f"{name} unavailable ({reason}); integration test skipped")


@contextmanager
def postgres_database(prefix: str):
    """A fresh database on the PostgreSQL server of ML3_TEST_DATABASE_URL, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.db import get_engine

    default = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    base = make_url(os.environ.get("ML3_TEST_DATABASE_URL", default))
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        require_service("PostgreSQL", f"{type(e).__name__}: {e}")
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def client(settings):
    """The app on the test module's own ``settings`` fixture, for the module's tests."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def Session(settings, client):
    """A sessionmaker on the database of the module's app."""
    from app.db import get_sessionmaker

    return get_sessionmaker(settings.db_url)


# -- a real server process ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ml3 serve`` in its own process group (server + its runner process)."""

    def __init__(self, data_dir: Path, **env):
        self.data_dir, self.port, self.proc = data_dir, free_port(), None
        self.env = {**os.environ, "ML3_DATA_DIR": str(data_dir), "ML3_CHECKPOINT_EVERY": "5",
                    "ML3_PROGRESS_EVERY": "5", "ML3_LEASE_SECONDS": "3", "ML3_POLL_SECONDS": "0.2",
                    "ML3_RUNNER_THREADS": "1", **env}
        self.env.pop("ML3_DATABASE_URL", None)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning"], env=self.env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        end = time.time() + 90
        while time.time() < end:
            assert self.proc.poll() is None, (self.data_dir / "server.log").read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its runner, no goodbyes
        else:
            self.proc.send_signal(sig)
        self.proc.wait(60)
        _wait_group_gone(self.proc.pid)

    def rows(self, table: str, where: str = "1=1") -> int:
        with sqlite3.connect(self.data_dir / "ml3.db") as db:
            return db.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("runner process outlived the server")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """A real ``ml3 serve`` on SQLite in its own directory, shared by the tests of one module."""
    s = Server(tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))).start()
    yield s
    s.stop()
