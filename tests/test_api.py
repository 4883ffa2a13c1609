"""The REST API on a temporary SQLite database. Jobs run through ``app.jobs.execute.run_job`` (the one
execution path) called in the test process, so every step is deterministic."""

import base64
import io
import json
import threading
import zipfile
from datetime import timedelta

import pytest
import torch
from conftest import SMALL, assert_problem, table_counts, wait_for
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.db.models import Checkpoint, Job, JobEvent, LossVersion, utcnow
from app.jobs.execute import run_job
from app.services import registry
from ml3core import load_loss
from ml3core.artifact import Bundle


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("api"), runner="none", checkpoint_every=5, progress_every=5,
                    lease_seconds=2, max_eval_values=5000, max_body_bytes=1_000_000, max_attempts=3)


@pytest.fixture(scope="module")
def trained(client, settings):
    """One small meta-train job, run to the end: its JSON."""
    r = client.post("/v1/jobs", json={**SMALL, "register_as": "toy"})
    assert r.status_code == 202
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    return client.get(f"/v1/jobs/{r.json()['id']}").json()


def submit(client, spec, **headers):
    r = client.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


# -- jobs ----------------------------------------------------------------------------------------------
def test_submit_returns_202_location_and_a_queued_job(client):
    r = client.post("/v1/jobs", json={**SMALL, "register_as": "queued-only"})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "meta-train"
    assert job["progress"] == {"completed": 0, "total": 20, "unit": "iterations"}
    assert client.get(r.headers["location"]).json()["spec"]["register_as"] == "queued-only"


def test_idempotency_key_same_body_same_job_other_body_422(client, Session):
    first = submit(client, SMALL, **{"Idempotency-Key": "abc-1"})
    again = submit(client, SMALL, **{"Idempotency-Key": "abc-1"})
    assert again["id"] == first["id"]
    before = table_counts(Session)
    body = assert_problem(client.post("/v1/jobs", json={**SMALL, "seeds": 3}, headers={"Idempotency-Key": "abc-1"}),
                          422)
    assert body["code"] == "idempotency_key_reused"
    assert table_counts(Session) == before


def test_job_runs_registers_once_and_reports(client, trained, settings, Session):
    job = trained
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["progress"]["completed"] == 20
    assert job["result"]["loss"] == "toy:1"
    assert set(job["links"]["figures"]) >= {"meta_train.png", "meta_test.png"}
    assert job["metrics"]["iteration"] == 20
    history = client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"]
    assert [m["iteration"] for m in history] == [10, 20]
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["spec"]["seeds"] == 2 and set(report["meta_test"]["curves"]) == {"learned", "mse", "tuned"}
    png = client.get(f"/v1/jobs/{job['id']}/figures/meta_test.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run of a finished job does nothing; a second registration is impossible
    assert run_job(job["id"], "runner-b", settings) is None
    with Session() as db:
        assert db.scalar(select(func.count()).where(LossVersion.job_id == job["id"])) == 1
        bundle = registry.load_bundle(db, db.scalar(select(LossVersion.id).where(LossVersion.job_id == job["id"])))
        with pytest.raises(IntegrityError):
            registry.register(db, "toy", bundle, job["id"], None)
        db.rollback()


def test_events_stream_in_order_and_resume_after_last_event_id(client, trained):
    text = client.get(f"/v1/jobs/{trained['id']}/events").text
    events = [_parse(block) for block in text.split("\n\n") if block.startswith("id:")]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and events[0]["data"]["status"] == "queued"
    assert "progress" in kinds and "metrics" in kinds
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["result"]["loss"] == "toy:1"
    later = client.get(f"/v1/jobs/{trained['id']}/events", headers={"Last-Event-ID": str(ids[2])}).text
    assert [_parse(b)["id"] for b in later.split("\n\n") if b.startswith("id:")] == ids[3:]


def _parse(block: str) -> dict:
    fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


def test_list_jobs_paginates_with_a_cursor_and_filters(client, trained):
    for i in range(3):
        submit(client, {**SMALL, "seed": 10 + i})
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) >= 4
    done = client.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
    assert trained["id"] in [j["id"] for j in done] and all(j["status"] == "succeeded" for j in done)


def test_cancel_queued_job_ends_it_without_running(client, settings):
    job = submit(client, SMALL)
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled"
    assert run_job(job["id"], "runner-a", settings) is None
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409)


def test_cancel_running_job_stops_it_and_keeps_its_checkpoint(client, settings):
    job = submit(client, {**SMALL, "outer_iterations": 5000, "eval_every": 1000})
    out = {}
    thread = threading.Thread(target=lambda: out.update(status=run_job(job["id"], "runner-a", settings)))
    thread.start()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["checkpoint"], 120, "a checkpoint")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    thread.join(120)
    assert out["status"] == "canceled"
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and 0 < final["checkpoint"] < 5000
    assert final["result"] is None


class StopAtCheckpoint(threading.Event):
    """A runner-shutdown signal that fires once the job has written a checkpoint."""

    def __init__(self, Session, job_id):
        super().__init__()
        self.Session, self.job_id = Session, job_id

    def is_set(self):
        with self.Session() as db:
            return db.scalar(select(Checkpoint.iteration).where(Checkpoint.job_id == self.job_id)) is not None


def test_stopped_job_is_requeued_and_resumes_bit_exactly(client, settings, Session):
    spec = {**SMALL, "outer_iterations": 30, "eval_every": 15}
    job = submit(client, {**spec, "register_as": "resumed"})
    assert run_job(job["id"], "runner-a", settings, StopAtCheckpoint(Session, job["id"])) == "queued"
    mid = client.get(f"/v1/jobs/{job['id']}").json()
    assert mid["status"] == "queued" and mid["checkpoint"] == 5 and mid["attempts"] == 0
    assert run_job(job["id"], "runner-b", settings) == "succeeded"
    with Session() as db:
        starts = [e.data for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job["id"],
                                                                    JobEvent.type == "status"))]
    assert [s.get("resumed_from") for s in starts if s["status"] == "running"] == [None, 5]
    straight = submit(client, {**spec, "register_as": "straight"})
    assert run_job(straight["id"], "runner-a", settings) == "succeeded"
    a = client.get(f"/v1/jobs/{job['id']}").json()["result"]
    b = client.get(f"/v1/jobs/{straight['id']}").json()["result"]
    assert a["sha256"] == b["sha256"]


def test_live_lease_is_left_alone_and_expired_lease_taken_over(client, settings, Session):
    job = submit(client, SMALL)
    with Session.begin() as db:
        db.execute(update(Job).where(Job.id == job["id"]).values(status="running", owner="elsewhere",
                                                                  heartbeat_at=utcnow(), attempts=1))
    assert run_job(job["id"], "runner-a", settings) is None
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    with Session.begin() as db:
        db.execute(update(Job).where(Job.id == job["id"]).values(heartbeat_at=utcnow() - timedelta(seconds=10)))
    assert run_job(job["id"], "runner-a", settings) == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 2


def test_job_over_max_attempts_fails(client, settings, Session):
    job = submit(client, SMALL)
    with Session.begin() as db:
        db.execute(update(Job).where(Job.id == job["id"]).values(attempts=settings.max_attempts))
    assert run_job(job["id"], "runner-a", settings) is None
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "failed" and final["error"]["code"] == "too_many_attempts"


# -- registry and using a loss --------------------------------------------------------------------
def test_loss_listing_show_and_versions(client, trained):
    names = [x["name"] for x in client.get("/v1/losses").json()["items"]]
    assert "toy" in names
    v = client.get("/v1/losses/toy:1").json()
    assert v["id"] == "toy:1" and v["job_id"] == trained["id"] and v["architecture"]["hidden"] == [50, 50]
    assert client.get("/v1/losses/toy/versions").json()["items"][-1]["version"] == 1


def local_loss(client, loss_id):
    return load_loss(client.get(f"/v1/losses/{loss_id}/artifact").content)


def test_evaluate_matches_the_downloaded_loss(client, trained):
    local = local_loss(client, "toy")
    pred, target = torch.tensor([0.1, 0.5, -2.0, 3.0]), torch.tensor([0.0, 1.0, -1.5, 0.0])
    got = client.get("/v1/losses/toy/evaluate", params={"pred": "0.1,0.5,-2,3", "target": "0,1,-1.5,0"}).json()
    assert got["id"] == "toy:1"
    assert got["loss"] == pytest.approx(float(local(pred, target)), rel=1e-6)
    p = pred.clone().requires_grad_()
    per_point = local(p, target, reduction="none")
    (grad,) = torch.autograd.grad(per_point.sum(), p)
    body = {"pred": pred.tolist(), "target": target.tolist(), "reduction": "none", "return_grad": True}
    got = client.post("/v1/losses/toy/evaluate", json=body).json()
    assert got["loss"] == pytest.approx(per_point.tolist(), rel=1e-6)
    assert got["grad"] == pytest.approx(grad.tolist(), rel=1e-5, abs=1e-8)
    # base64 float32 in and out gives the same numbers as JSON
    b64 = {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in (("pred", pred), ("target", target))}
    got64 = client.post("/v1/losses/toy/evaluate", json={**b64, "reduction": "none", "encoding": "base64"}).json()
    values = torch.frombuffer(bytearray(base64.b64decode(got64["loss"])), dtype=torch.float32)
    assert values.tolist() == pytest.approx(got["loss"], rel=1e-7)
    mean = client.post("/v1/losses/toy/evaluate", json={"pred": [[0.1], [0.5]], "target": [[0.0], [1.0]]}).json()
    assert mean["loss"] == pytest.approx(float(local(pred[:2], target[:2])), rel=1e-6)


def test_artifact_zip_etag_and_304(client, trained):
    r = client.get("/v1/losses/toy/artifact")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["etag"] == f'"{trained["result"]["sha256"]}"'
    assert set(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == {"loss.safetensors", "loss.json"}
    assert client.get("/v1/losses/toy/artifact").content == r.content  # deterministic bytes
    again = client.get("/v1/losses/toy:1/artifact", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_alias_move_is_followed_by_evaluate(client, trained, Session):
    with Session.begin() as db:  # a second version: the first with its weights doubled
        b = registry.load_bundle(db, registry.resolve(db, "toy:1").id)
        doubled = {k: 2 * v for k, v in b.params().items()}
        v2 = Bundle.build(doubled, b.loss_spec(), b.spec["task"], b.spec["training"], {})
        registry.register(db, "toy", v2, None, None)
    q = {"pred": "0.3,1.5", "target": "0,1"}
    v1 = client.get("/v1/losses/toy:1/evaluate", params=q).json()["loss"]
    v2 = client.get("/v1/losses/toy:2/evaluate", params=q).json()["loss"]
    assert v1 != v2
    assert client.get("/v1/losses/toy/evaluate", params=q).json()["id"] == "toy:2"  # latest
    assert client.put("/v1/losses/toy/aliases/production", json={"version": 1}).status_code == 200
    assert client.get("/v1/losses/toy@production/evaluate", params=q).json()["loss"] == v1
    assert client.put("/v1/losses/toy/aliases/production", json={"version": 2}).status_code == 200
    assert client.get("/v1/losses/toy@production/evaluate", params=q).json()["loss"] == v2
    assert client.get("/v1/losses/toy/aliases").json()["aliases"] == {"production": 2}
    assert client.get("/v1/losses/toy@production").json()["aliases"] == ["production"]
    assert client.delete("/v1/losses/toy/aliases/production").status_code == 204
    assert_problem(client.get("/v1/losses/toy@production/evaluate", params=q), 404)


def test_tags_on_a_version(client, trained):
    assert client.put("/v1/losses/toy:1/tags/stage", json={"value": "reviewed"}).json()["tags"] == {
        "stage": "reviewed"}
    assert client.get("/v1/losses/toy:1").json()["tags"] == {"stage": "reviewed"}
    assert client.delete("/v1/losses/toy:1/tags/stage").status_code == 204
    assert client.get("/v1/losses/toy:1/tags").json()["tags"] == {}


def test_landscape_json_and_png(client, trained):
    data = client.get("/v1/losses/toy:1/landscape", params={"targets": "0,1", "points": 7}).json()
    assert len(data["grid"]) == 7 and len(data["curves"]) == 4
    local = local_loss(client, "toy:1")
    at = torch.tensor(data["grid"])
    expected = local(at[:, None, None], torch.zeros(7, 1, 1))
    assert data["curves"]["learned, target=0"] == pytest.approx(expected.tolist(), rel=1e-5)
    png = client.get("/v1/losses/toy:1/landscape", params={"format": "png"})
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


def test_meta_test_job_holds_curves_horizon_and_figures(client, trained, settings):
    r = client.post("/v1/losses/toy:1/meta-test", json={"tasks": 3, "steps": 20, "horizons": [10, 20], "seeds": 2})
    assert r.status_code == 202 and r.json()["kind"] == "meta-test"
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    job = client.get(r.headers["location"]).json()
    assert job["result"]["loss"] == "toy:1"
    assert [h["steps"] for h in job["result"]["horizon"]] == [10, 20]
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    for name in ("learned", "mse"):
        curves = report["curves"][name]
        assert {"mse_train", "mse_heldout"} <= set(curves)
        assert len(curves["mse_heldout"]) == 2 and len(curves["mse_heldout"][0]) == 21  # seeds x (steps+1)
    assert client.get(job["result"]["figures"]["meta_test.png"]).content[:4] == b"\x89PNG"


# -- bad inputs: 4xx problem+json, nothing changes ------------------------------------------------
BAD = [
    ("post", "/v1/jobs", {"json": {"task": {"family": "nope"}}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "bogus": 1}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "task": {"family": "sine", "points": 0}}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "seeds": 10**9}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "loss": {"hidden": [0]}}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "loss": {"activation": "nope"}}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "kind": "meta-test"}}, 422),
    ("post", "/v1/jobs", {"json": {**SMALL, "register_as": "bad name!"}}, 422),
    ("post", "/v1/jobs", {"json": {"seeds": 2}}, 422),
    ("post", "/v1/jobs", {"json": [1, 2]}, 422),
    ("post", "/v1/jobs", {"content": b'{"task": {"family": "sine"}, "inner_lr": NaN}',
                          "headers": {"content-type": "application/json"}}, 422),
    ("post", "/v1/jobs", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ("get", "/v1/jobs?status=bogus", {}, 422),
    ("get", "/v1/jobs?cursor=@@@", {}, 422),
    ("get", "/v1/jobs?limit=0", {}, 422),
    ("get", "/v1/jobs/999999", {}, 404),
    ("get", "/v1/jobs/abc", {}, 422),
    ("post", "/v1/jobs/999999/cancel", {}, 404),
    ("get", "/v1/jobs/999999/events", {}, 404),
    ("get", "/v1/losses/nope", {}, 404),
    ("get", "/v1/losses/toy:0", {}, 422),
    ("get", "/v1/losses/toy:99", {}, 404),
    ("get", "/v1/losses/toy@nope", {}, 404),
    ("get", "/v1/losses/toy/evaluate?pred=nan&target=0", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=inf&target=0", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=1,2&target=1", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=a&target=1", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=1&target=1&bogus=1", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=1", {}, 422),
    ("get", "/v1/losses/toy/evaluate?pred=1&target=1&reduction=max", {}, 422),
    ("post", "/v1/losses/toy/evaluate", {"content": b'{"pred": [1, Infinity], "target": [1, 2]}',
                                         "headers": {"content-type": "application/json"}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [1, 2], "target": [1]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [[1], [1, 2]], "target": [[1], [1, 2]]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [[[1]]], "target": [[[1]]]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [[1, 2]], "target": [[1, 2]]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": ["a"], "target": [1]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [], "target": []}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [1], "target": [1], "bogus": 1}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": [0.5] * 5001, "target": [0.5] * 5001}}, 413),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": "!!notbase64", "target": "AAAA"}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": "AAA=", "target": "AAA="}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"json": {"pred": "AAAAAAAAAAA=", "target": "AAAAAAAAAAA=",
                                                  "shape": [3]}}, 422),
    ("post", "/v1/losses/toy/evaluate", {"content": b'{"pred": [' + b"0.5," * 300_000 + b'0.5]}',
                                         "headers": {"content-type": "application/json"}}, 413),
    ("put", "/v1/losses/toy/aliases/prod", {"json": {"version": 99}}, 422),
    ("put", "/v1/losses/toy/aliases/prod", {"json": {"version": 0}}, 422),
    ("put", "/v1/losses/toy/aliases/latest", {"json": {"version": 1}}, 422),
    ("put", "/v1/losses/toy/aliases/prod", {"json": {"version": 1, "extra": 1}}, 422),
    ("put", "/v1/losses/nope/aliases/prod", {"json": {"version": 1}}, 404),
    ("delete", "/v1/losses/toy/aliases/never-set", {}, 404),
    ("put", "/v1/losses/toy/tags/stage", {"json": {"value": "x" * 300}}, 422),
    ("get", "/v1/losses/toy/landscape?points=1", {}, 422),
    ("get", "/v1/losses/toy/landscape?lo=abc", {}, 422),
    ("get", "/v1/losses/toy/landscape?format=gif", {}, 422),
    ("get", "/v1/losses/toy/landscape?bogus=1", {}, 422),
    ("post", "/v1/losses/toy/meta-test", {"json": {"tasks": 0}}, 422),
    ("post", "/v1/losses/toy/meta-test", {"json": {"bogus": 1}}, 422),
    ("post", "/v1/losses/toy/meta-test", {"json": {"task": {"points": -1}}}, 422),
    ("post", "/v1/losses/toy/meta-test", {"json": {"device": "tpu"}}, 422),
    ("post", "/v1/losses/nope/meta-test", {"json": {}}, 404),
    ("get", "/v1/nothing", {}, 404),
    ("delete", "/v1/jobs", {}, 405),
]


@pytest.mark.parametrize("method,url,kwargs,status", BAD, ids=[f"{m} {u[:48]} {s}" for m, u, _, s in BAD])
def test_bad_input_is_a_problem_and_changes_nothing(client, trained, Session, method, url, kwargs, status):
    before = table_counts(Session)
    assert_problem(client.request(method.upper(), url, **kwargs), status)
    assert table_counts(Session) == before


def test_validation_error_names_the_field(client):
    body = assert_problem(client.post("/v1/jobs", json={**SMALL, "task": {"family": "sine", "points": 0}}), 422)
    assert body["errors"][0]["loc"] == "task.points" and "task.points" in body["detail"]


# -- operations ------------------------------------------------------------------------------------
def test_health_ready_and_prometheus_metrics(client, trained):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    text = client.get("/metrics").text
    assert 'ml3_jobs{status="succeeded"}' in text and "ml3_loss_cache_hits_total" in text
    assert 'route="/v1/losses/{loss_id}/evaluate"' in text


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/losses/{loss_id}/evaluate"} <= set(paths)


def test_openapi_documents_the_job_and_loss_version_answers(client):
    doc = client.get("/openapi.json").json()
    ok = {("/v1/jobs", "post", "202"): "JobOut", ("/v1/losses/{loss_id}/meta-test", "post", "202"): "JobOut",
          ("/v1/losses/{loss_id}", "get", "200"): "LossVersionOut"}
    for (path, method, status), name in ok.items():
        schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}
    job = doc["components"]["schemas"]["JobOut"]["properties"]
    assert list(job)[:3] == ["id", "kind", "status"] and "links" in job


def test_migrations_match_the_models(settings):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db.models import Base
    from app.db.session import get_engine

    with get_engine(settings.db_url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "foreign_keys")}
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1}
