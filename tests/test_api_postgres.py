"""The same schema and job path on PostgreSQL (ML3_TEST_DATABASE_URL): one migration history
serves both databases. A throwaway database is created for the test and dropped after."""

import pytest
from conftest import postgres_database
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.jobs.execute import run_job
from app.main import create_app

pytestmark = pytest.mark.integration
SMALL = {"task": {"family": "sine", "points": 20, "heldout_points": 20}, "preset": "paper", "seeds": 1,
         "outer_iterations": 10,
         "eval_every": 5, "eval_steps": 5, "validation_tasks": 2,
         "meta_test": {"steps": 5, "tasks": 2, "horizons": [5]}}


@pytest.fixture
def pg_url():
    with postgres_database("ml3_api") as url:
        yield url


def test_migrations_and_a_job_on_postgresql(pg_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db.models import Base
    from app.db.session import get_engine

    settings = Settings(data_dir=tmp_path, database_url=pg_url, runner="none", checkpoint_every=5)
    with TestClient(create_app(settings)) as c:
        with get_engine(pg_url).connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        job = c.post("/v1/jobs", json={**SMALL, "register_as": "pg"}, headers={"Idempotency-Key": "pg-1"}).json()
        assert run_job(job["id"], "runner-pg", settings) == "succeeded"
        assert run_job(job["id"], "runner-pg", settings) is None
        assert c.get(f"/v1/jobs/{job['id']}").json()["result"]["loss"] == "pg:1"
        assert c.put("/v1/losses/pg/aliases/production", json={"version": 1}).status_code == 200
        got = c.get("/v1/losses/pg@production/evaluate", params={"pred": "0.1,0.5", "target": "0,1"}).json()
        assert got["id"] == "pg:1" and got["loss"] > 0
        assert c.get("/v1/losses/pg@production/artifact").status_code == 200
        # search and descriptions: ILIKE with % and _ taken literally, NUL refused, on PostgreSQL too
        assert c.patch("/v1/losses/pg", json={"description": "a *sine* loss, 100%_ok"}).status_code == 200
        assert c.patch("/v1/losses/pg", json={"description": "a\x00b"}).status_code == 422
        for params, want in (({"family": "sine", "q": "PG"}, ["pg"]), ({"family": "digits"}, []),
                             ({"q": "100%_OK"}, ["pg"]), ({"q": "100%%"}, [])):
            assert [x["name"] for x in c.get("/v1/losses", params=params).json()["items"]] == want, params
        assert c.get("/readyz").json()["status"] == "ready"
