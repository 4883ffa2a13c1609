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

# Job specs shared by several modules, on the paper's settings (fast). SMALL: a sine job that runs to
# the end in seconds, with evaluations and a meta-test. TINY: the smallest sine job, for tests where jobs stay queued.
SMALL = {"task": {"family": "sine", "points": 20, "heldout_points": 20}, "preset": "paper", "seeds": 2,
         "outer_iterations": 20,
         "eval_every": 10, "eval_steps": 10, "validation_tasks": 2,
         "meta_test": {"steps": 20, "tasks": 3, "horizons": [10, 20]}}
TINY = {"task": {"family": "sine", "points": 10, "heldout_points": 10}, "preset": "paper", "seeds": 1,
        "outer_iterations": 2,
        "eval_every": 1, "eval_steps": 2, "validation_tasks": 1,
        "meta_test": {"steps": 2, "tasks": 1, "horizons": [2]}}
PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


@pytest.fixture(autouse=True, scope="session")
def _own_loss_cache(tmp_path_factory):
    """Losses loaded by URL are cached in a directory of the test session's, never in ~/.cache/ml3."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML3_CACHE", str(tmp_path_factory.mktemp("ml3-cache")))
        mp.delenv("ML3_OFFLINE", raising=False)
        yield


def wait_for(predicate, timeout: float, what: str = "condition", logs=lambda: ""):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass (an
    AssertionError naming ``what``, with ``logs()`` for the post-mortem)."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs()}")


def meta_gradient_checked(trainer, theta: dict, data: dict, eps: float = 1e-6) -> int:
    """Assert the meta-gradient of ``trainer``'s per-seed L_T matches central finite differences at the first and
    last entry of every phi tensor (float64); returns how many of those entries have a non-zero gradient."""
    _, loss = trainer.meta_objective(theta, data)
    grads = torch.autograd.grad(loss.sum(), list(trainer.phi.values()), allow_unused=True)
    checked = 0
    for (name, p), grad in zip(trainer.phi.items(), grads, strict=True):
        grad = torch.zeros_like(p) if grad is None else grad  # e.g. an output bias that shifts L_phi only
        for idx in [(0,) + tuple(0 for _ in p.shape[1:]), (0,) + tuple(s - 1 for s in p.shape[1:])]:
            def at(value, p=p, idx=idx):
                with torch.no_grad():
                    p[idx] = value
                return trainer.meta_objective(theta, data)[1].sum().item()

            old = p[idx].item()
            fd = (at(old + eps) - at(old - eps)) / (2 * eps)
            at(old)
            assert grad[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, idx)
            checked += abs(fd) > 1e-8
    return checked


def migrate(url: str, direction: str, revision: str) -> None:
    """Alembic ``upgrade``/``downgrade`` of the database at ``url`` to ``revision``."""
    from alembic import command
    from alembic.config import Config

    from app.db.session import MIGRATIONS, get_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, revision)


def assert_problem(r, status: int, code: str | None = None) -> dict:
    """An RFC 9457 problem of ``status`` (and ``code`` when given) with a detail and a code: its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body = r.json()
    assert PROBLEM_KEYS <= set(body) and body["status"] == status and body["detail"] and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def table_counts(Session) -> dict:
    """Rows per table of the database: equal before and after means a request changed nothing."""
    from sqlalchemy import func, inspect, select, table

    with Session() as db:
        tables = inspect(db.get_bind()).get_table_names()
        return {t: db.execute(select(func.count()).select_from(table(t))).scalar() for t in tables}


def register_loss(Session, name: str, seed: int = 0) -> int:
    """A new version of ``name`` (a random sine loss from ``seed``) committed directly, as the runner
    would: its id."""
    from app.services import registry
    from ml3core.artifact import Bundle
    from ml3core.losses import LossSpec, init_loss_params

    spec = LossSpec(pred_dim=1, x_dim=1)
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(seed)), spec, {"family": "sine"},
                          {"inner_lr": 1e-3}, {})
    with Session.begin() as db:
        return registry.register(db, name, bundle, None, None).id


def new_key(Session, scope: str, revoked: bool = False) -> dict:
    """Headers carrying a fresh API key of ``scope`` (revoked at once if asked)."""
    from app.services import security

    with Session.begin() as db:
        key, token = security.create_key(db, scope, "test")
        if revoked:
            security.revoke_key(db, key.prefix)
    return {"Authorization": f"Bearer {token}"}


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

    from app.db.session import get_engine

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
    from app.db.session import get_sessionmaker

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
        # SQLite under data_dir unless the caller names a database: the caller's own is never inherited
        inherited = {k: v for k, v in os.environ.items() if k != "ML3_DATABASE_URL"}
        self.env = {**inherited, "ML3_DATA_DIR": str(data_dir), "ML3_CHECKPOINT_EVERY": "5",
                    "ML3_PROGRESS_EVERY": "5", "ML3_LEASE_SECONDS": "3", "ML3_POLL_SECONDS": "0.2",
                    "ML3_RUNNER_THREADS": "1", **env}
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning"], env=self.env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.proc.poll() is None, (self.data_dir / "server.log").read_text()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "the server to become ready", (self.data_dir / "server.log").read_text)
        return self

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
    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout, "the runner process to end with the server")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """A real ``ml3 serve`` on SQLite in its own directory, shared by the tests of one module."""
    s = Server(tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))).start()
    yield s
    s.stop()


def wire_cli(monkeypatch, http) -> None:
    """The ml3 CLI's client talks to ``http`` (a TestClient of the app) instead of a socket."""
    from app.cli import service
    from ml3core.client import Client

    class Wired(Client):
        def __init__(self, *_):
            self.http = http

        def close(self):
            pass

    monkeypatch.setattr(service, "_client", Wired)
