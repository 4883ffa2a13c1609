import os
import uuid
from contextlib import contextmanager

import pytest
import torch

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
