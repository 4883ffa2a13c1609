"""Database engine and migrations. SQLite gets WAL, busy_timeout and foreign keys on every
connection, so the API process and the runner process can share one file safely."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


class Unreadable(dict):
    """A JSON value that no longer parses (a row damaged or edited in the database): loaded as an empty
    object that says so, so the query holding it (a list of every loss) still answers and whoever
    needs the value refuses that row alone (``registry.readable``)."""

    def __init__(self, text):
        super().__init__()
        self.text = text


def _json_loads(text):
    try:
        return json.loads(text)
    except ValueError:  # also not UTF-8
        return Unreadable(text)


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@lru_cache(maxsize=16)
def get_engine(url: str) -> Engine:
    """One engine per URL and process (engines hold a pool; never share one across fork)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # as many connections as the API's request threads (40) can want at once, and a few more: a request
        # waiting for SQLite's writer lock holds one, and one waiting for the pool would stall the event loop
        # where a key is looked up (a connection to a file costs next to nothing)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10},
                               json_deserializer=_json_loads, pool_size=5, max_overflow=45)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, json_deserializer=_json_loads)


def lock_row(db: Session, model, row_id: int, shared: bool = False) -> bool:
    """Lock one row until ``db``'s transaction ends (False if it does not exist), so that checks made
    after it and the writes that depend on them are one step for every writer that locks the same row:
    two requests cannot both pass a count and then both insert.

    PostgreSQL: ``SELECT ... FOR UPDATE`` (``FOR SHARE`` when ``shared``: sharers do not wait for each
    other, only for an exclusive holder); each later statement of a READ COMMITTED transaction sees
    what the previous holder committed. SQLite has no row locks: ``BEGIN IMMEDIATE`` takes its one
    writer lock, which serialises every writer of the file (the reads before it ran outside any
    transaction, as the driver begins one only for a write; if a write already began it, the
    transaction holds the writer lock already)."""
    query = select(model.id).where(model.id == row_id)
    if db.get_bind().dialect.name == "sqlite":
        raw = db.connection().connection.dbapi_connection
        if not raw.in_transaction:
            raw.execute("BEGIN IMMEDIATE")
    else:
        query = query.with_for_update(read=shared)
    return db.scalar(query) is not None


@lru_cache(maxsize=16)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations (one history for SQLite and PostgreSQL)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
