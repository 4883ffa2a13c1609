"""Count-then-write races, run for real on SQLite and on PostgreSQL (ML3_TEST_DATABASE_URL; skipped
with the reason when it is unreachable): concurrent submits with one key against
ML3_MAX_ACTIVE_JOBS, and a data set deleted while a job that reads it is being submitted."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import TINY, new_key, postgres_database
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from app.core.config import Settings
from app.db.models import META_TRAIN, QUEUED, Dataset, Job
from app.db.session import get_sessionmaker, lock_row
from app.main import create_app
from app.services import datasets

LIMIT = 3
CSV = "task,x,y\n" + "".join(f"t{t},{r},{t * r}\n" for t in range(4) for r in range(6))
HELD = 0.5  # seconds a test holds a lock that a request must wait for


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request, tmp_path):
    """(client, Session, submit headers, admin headers) of a server that requires keys."""
    def serve(database_url: str):
        settings = Settings(data_dir=tmp_path, database_url=database_url, runner="none", auth="on",
                            max_active_jobs=LIMIT, max_key_writes=100)  # the rows decide here, not the slots
        with TestClient(create_app(settings)) as client:
            Session = get_sessionmaker(settings.db_url)
            yield client, Session, new_key(Session, "submit"), new_key(Session, "admin")

    if request.param == "sqlite":
        yield from serve("")
    else:
        with postgres_database("ml3_race") as url:
            yield from serve(url)


def dataset_job(client, headers) -> tuple[int, dict]:
    d = client.post("/v1/datasets", content=CSV, headers={**headers, "Content-Type": "text/csv"})
    assert d.status_code == 201, d.text
    return d.json()["id"], {**TINY, "task": {"family": "dataset", "dataset": d.json()["id"], "model_hidden": [4]}}


def still_waiting(future) -> bool:
    time.sleep(HELD)
    return not future.done()


def test_concurrent_submits_stop_exactly_at_the_limit(app):
    client, Session, submit, _ = app
    n = 4 * LIMIT
    start = threading.Barrier(n)

    def post(_):
        start.wait()  # all at once: every request counts before any has committed
        return client.post("/v1/jobs", json=TINY, headers=submit).status_code

    with ThreadPoolExecutor(n) as pool:
        codes = sorted(pool.map(post, range(n)))
    assert codes == [202] * LIMIT + [429] * (n - LIMIT)
    with Session() as db:
        assert db.scalar(select(func.count()).select_from(Job).where(Job.status == QUEUED)) == LIMIT


def test_concurrent_retries_of_the_last_allowed_job_all_get_it(app):
    """The same Idempotency-Key at once, with room for one more job: one job, the same answer to all
    (the lock is taken before the key is looked up, so no retry counts the job and answers 429)."""
    client, Session, submit, _ = app
    for _ in range(LIMIT - 1):
        assert client.post("/v1/jobs", json=TINY, headers=submit).status_code == 202
    n = 8
    start = threading.Barrier(n)

    def post(_):
        start.wait()
        r = client.post("/v1/jobs", json=TINY, headers={**submit, "Idempotency-Key": "last-one"})
        return r.status_code, r.json().get("id")

    with ThreadPoolExecutor(n) as pool:
        answers = set(pool.map(post, range(n)))
    assert len(answers) == 1 and next(iter(answers))[0] == 202, answers
    with Session() as db:
        assert db.scalar(select(func.count()).select_from(Job)) == LIMIT


def test_a_submit_waits_for_a_delete_in_flight_and_is_refused(app):
    client, Session, submit, _ = app
    dataset_id, spec = dataset_job(client, submit)
    with ThreadPoolExecutor(1) as pool, Session() as deleting:
        assert lock_row(deleting, Dataset, dataset_id)  # what DELETE /v1/datasets/{id} does, up to its commit
        deleting.execute(delete(Dataset).where(Dataset.id == dataset_id))
        r = pool.submit(client.post, "/v1/jobs", json=spec, headers=submit)
        assert still_waiting(r)
        deleting.commit()
        r = r.result(timeout=30)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "task.dataset", r.text
    with Session() as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_a_delete_waits_for_a_submit_in_flight_and_sees_its_job(app):
    client, Session, submit, admin = app
    dataset_id, spec = dataset_job(client, submit)
    with ThreadPoolExecutor(1) as pool, Session() as submitting:
        job = Job(kind=META_TRAIN, status=QUEUED, spec=spec, plan=spec, request_hash="race",
                  progress_completed=0, cancel_requested=False, attempts=0)
        datasets.lock_for_job(submitting, job)  # what POST /v1/jobs does, up to its commit
        submitting.add(job)
        submitting.flush()
        r = pool.submit(client.delete, f"/v1/datasets/{dataset_id}", headers=admin)
        assert still_waiting(r)
        submitting.commit()
        r = r.result(timeout=30)
    assert r.status_code == 409 and r.json()["jobs"] == [job.id], r.text
    assert client.get(f"/v1/datasets/{dataset_id}", headers=submit).json()["active_jobs"] == [job.id]
