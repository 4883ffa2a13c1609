"""Evaluate's short cache of what a loss id resolves to (ML3_RESOLVE_CACHE_SECONDS). A change made
through this process is seen on the very next request; one made by another process after at most
the TTL; within the TTL an id is looked up once.

Lookups are counted as SQLite runs them: a ``connect`` listener on the app's engine installs a trace
callback on every DB-API connection. The evaluate path resolves over a raw DB-API cursor, which
SQLAlchemy's execute events never see."""

import sqlite3
import time
from contextlib import contextmanager

import pytest
from conftest import register_loss
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.core.config import Settings
from app.db.session import get_engine, get_sessionmaker
from app.main import create_app

Q = {"pred": "0.3,1.5", "target": "0,1"}
LOOKUP = "SELECT loss_versions.id, losses.name, loss_versions.version, loss_versions.sha256"  # the resolver's


@contextmanager
def serve(tmp_path, ttl: float):
    """(client, Session, SQL statements run so far) of an app whose cache keeps entries ``ttl`` s."""
    settings = Settings(data_dir=tmp_path, runner="none", eval_rate=0, resolve_cache_seconds=ttl)
    statements: list[str] = []
    event.listen(get_engine(settings.db_url), "connect", lambda conn, _: conn.set_trace_callback(statements.append))
    with TestClient(create_app(settings)) as client:
        yield client, get_sessionmaker(settings.db_url), statements


def lookups(statements) -> int:
    return sum(s.startswith(LOOKUP) for s in statements)


def evaluate(client, loss_id: str) -> dict:
    r = client.get(f"/v1/losses/{loss_id}/evaluate", params=Q)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("ttl, expected", [(60.0, 1), (0.0, 20)], ids=["cached", "off"])
def test_a_pinned_id_is_looked_up_once_within_the_ttl(tmp_path, ttl, expected):
    with serve(tmp_path, ttl) as (client, Session, statements):
        register_loss(Session, "pin", 0)
        first = evaluate(client, "pin:1")
        assert all(evaluate(client, "pin:1") == first for _ in range(19))
        assert lookups(statements) == expected


def test_an_entry_expires_after_the_ttl(tmp_path):
    with serve(tmp_path, 0.2) as (client, Session, statements):
        register_loss(Session, "short", 0)
        evaluate(client, "short:1")
        time.sleep(0.25)
        evaluate(client, "short:1")
        assert lookups(statements) == 2


def test_changes_through_this_process_are_seen_on_the_next_request(tmp_path):
    """A TTL of a minute: only the invalidation can explain what the next request answers."""
    with serve(tmp_path, 60.0) as (client, Session, statements):
        register_loss(Session, "m", 0)
        register_loss(Session, "m", 1)
        v1, v2 = evaluate(client, "m:1")["loss"], evaluate(client, "m:2")["loss"]
        assert v1 != v2
        assert client.put("/v1/losses/m/aliases/prod", json={"version": 1}).status_code == 200
        assert evaluate(client, "m@prod")["loss"] == v1
        n = lookups(statements)
        assert evaluate(client, "m@prod")["id"] == "m:1" and lookups(statements) == n  # cached
        assert client.put("/v1/losses/m/aliases/prod", json={"version": 2}).status_code == 200
        got = evaluate(client, "m@prod")
        assert (got["id"], got["loss"]) == ("m:2", v2)
        assert evaluate(client, "m")["id"] == "m:2"  # latest
        register_loss(Session, "m", 2)
        assert evaluate(client, "m")["id"] == "m:3"
        assert client.delete("/v1/losses/m/aliases/prod").status_code == 204
        r = client.get("/v1/losses/m@prod/evaluate", params=Q)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_another_process_changes_show_after_at_most_the_ttl(tmp_path):
    ttl = 2.0
    with serve(tmp_path, ttl) as (client, Session, _):
        register_loss(Session, "far", 0)
        register_loss(Session, "far", 1)
        assert client.put("/v1/losses/far/aliases/prod", json={"version": 1}).status_code == 200
        assert evaluate(client, "far@prod")["id"] == "far:1"
        cached_by = time.monotonic()
        with sqlite3.connect(tmp_path / "ml3.db") as other:  # as another API process or a worker would
            other.execute("UPDATE loss_aliases SET version_id = (SELECT max(id) FROM loss_versions)")
        assert evaluate(client, "far@prod")["id"] == "far:1"  # stale, within the bound
        time.sleep(max(0.0, cached_by + ttl - time.monotonic()) + 0.05)
        assert evaluate(client, "far@prod")["id"] == "far:2"
