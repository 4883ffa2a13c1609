"""Hardening, third round: ids and integers have one spelling, the big-body parser keeps types, races
and bad rows stay local, cancel stops a running meta-test, edges agree, memory is what is bounded.
Keys are required (ML3_AUTH=on), jobs stay queued unless a test runs one. Each bad request is a 4xx
problem+json that stores nothing."""

import pytest
from conftest import TINY, assert_problem, new_key, register_loss, table_counts
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db.session import get_sessionmaker
from app.jobs.runner import NoRunner
from app.main import create_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("hardening3"), runner="none", auth="on")


@pytest.fixture(scope="module")
def loss(Session):
    register_loss(Session, "s1")
    return "s1"


def register_classifier(Session, name: str) -> None:
    """A random classification loss (form ce_classwise, hidden [8, 8]) of the digits family, registered as
    the runner would."""
    import torch

    from app.services import registry
    from ml3core.artifact import Bundle
    from ml3core.losses import LossSpec, init_loss_params

    spec = LossSpec(form="ce_classwise", inputs=["prob", "target", "logprob"], hidden=[8, 8], activation="tanh",
                    bias=True, output="linear")
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(0)), spec,
                          {"family": "digits", "classes_per_task": 2}, {"inner_lr": 0.1}, {})
    with Session.begin() as db:
        registry.register(db, name, bundle, None, None)


@pytest.fixture(scope="module")
def classifier(Session):
    register_classifier(Session, "cls")
    return "cls"


@pytest.fixture(scope="module")
def submit(Session):
    return new_key(Session, "submit")


@pytest.fixture(scope="module")
def admin(Session):
    return new_key(Session, "admin")


def refused(client, Session, method: str, url: str, status: int = 422, code: str | None = None, **kwargs) -> dict:
    """The request is a ``status`` problem (with ``code``) and the database is unchanged."""
    before = table_counts(Session)
    body = assert_problem(client.request(method, url, **kwargs), status, code)
    assert table_counts(Session) == before, (method, url)
    return body


def csv_tasks() -> bytes:
    return ("task,x,y\n" + "".join(f"t{t},{i},{i * t}\n" for t in range(3) for i in range(4))).encode()


# -- 1. ids and integers parse in one place: ASCII digits, one spelling ---------------------------------
ODD = ["%C2%B2", "+1", "%201", "1%0A", "1_0", "%D9%A1", "1.0", "99999999999999999999"]


@pytest.mark.parametrize("version", ODD)
def test_a_loss_version_that_is_not_ascii_digits_is_a_422_on_every_loss_route(client, Session, loss, submit, admin,
                                                                               version):
    lid = f"{loss}:{version}"
    for method, url, kwargs in [
        ("GET", f"/v1/losses/{lid}", {}), ("GET", f"/v1/losses/{lid}/tags", {}),
        ("GET", f"/v1/losses/{lid}/artifact", {}), ("HEAD", f"/v1/losses/{lid}/artifact", {}),
        ("GET", f"/v1/losses/{lid}/landscape", {}),
        ("GET", f"/v1/losses/{lid}/evaluate?pred=1&target=0", {"headers": submit}),
        ("POST", f"/v1/losses/{lid}/evaluate", {"json": {"pred": [1], "target": [0]}, "headers": submit}),
        ("POST", f"/v1/losses/{lid}/meta-test", {"json": {}, "headers": submit}),
        ("PUT", f"/v1/losses/{lid}/tags/stage", {"json": {"value": "x"}, "headers": admin}),
        ("DELETE", f"/v1/losses/{lid}/tags/stage", {"headers": admin}),
    ]:
        before = table_counts(Session)
        r = client.request(method, url, **kwargs)
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        if method != "HEAD":
            assert_problem(r, 422)
        assert table_counts(Session) == before, (method, url)
    assert client.get(f"/v1/losses/{loss}:1").status_code == 200


@pytest.mark.parametrize("spelling", ["+{}", "%2B{}", "%20{}", "{}%0A", "{}%20", "{}.0", "{}_0", "%D9%A1"])
def test_an_id_in_a_path_has_one_spelling(client, Session, submit, admin, spelling):
    """DELETE /v1/datasets/+1 deleted data set 1: '+1', ' 1', '1\\n' and '١' are no id."""
    d = client.post("/v1/datasets", content=csv_tasks(), headers={**submit, "content-type": "text/csv"}).json()
    job = client.post("/v1/jobs", json=TINY, headers=submit).json()
    did, jid = spelling.format(d["id"]), spelling.format(job["id"])
    refused(client, Session, "DELETE", f"/v1/datasets/{did}", headers=admin)
    refused(client, Session, "GET", f"/v1/datasets/{did}", headers=admin)
    refused(client, Session, "POST", f"/v1/jobs/{jid}/cancel", headers=admin)
    for tail in ("", "/metrics", "/report", "/events"):
        refused(client, Session, "GET", f"/v1/jobs/{jid}{tail}", headers=admin)
    assert client.get(f"/v1/datasets/{d['id']}").status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=submit)


@pytest.mark.parametrize("query", ["limit=%2B5", "limit=%205", "limit=5%0A", "limit=5.0", "limit=1_0"])
def test_an_integer_in_a_query_has_one_spelling(client, Session, query):
    for url in ("/v1/jobs", "/v1/datasets", "/v1/losses"):
        refused(client, Session, "GET", f"{url}?{query}")
    assert client.get("/v1/jobs?limit=5").status_code == 200


@pytest.mark.parametrize("query", ["points=%2B5", "points=5%0A", "classes=%C2%B2", "points=%D9%A1%D9%A1"])
def test_a_landscape_integer_has_one_spelling(client, Session, loss, query):
    body = refused(client, Session, "GET", f"/v1/losses/{loss}/landscape?{query}")
    assert body["errors"][0]["loc"] == query.split("=")[0]


def test_class_indices_in_a_query_are_ascii_digits(client, Session, classifier, submit):
    url = f"/v1/losses/{classifier}/evaluate?logits=1,2;3,4&labels="
    assert client.get(url + "1,0", headers=submit).status_code == 200
    for labels in ("%2B1,0", "%C2%B2,0", "1%0A,0", "%201,0", "-1,0", "1.0,0"):
        assert refused(client, Session, "GET", url + labels, headers=submit)["errors"][0]["loc"] == "labels"


@pytest.mark.parametrize("seeds", [[18446744073709551616], [2**63], [2**32], [-1], ["1"], [1.0], [True], "2", 2.0])
def test_meta_test_seeds_the_run_cannot_take_are_a_422_at_submit(client, Session, loss, submit, seeds):
    body = refused(client, Session, "POST", f"/v1/losses/{loss}/meta-test", json={"seeds": seeds}, headers=submit)
    assert body["errors"][0]["loc"].startswith("seeds"), body


def test_the_largest_seed_id_is_taken(client, loss, submit):
    r = client.post(f"/v1/losses/{loss}/meta-test", json={"seeds": [2**32 - 1], "tasks": 1, "steps": 1,
                                                          "horizons": [1]}, headers=submit)
    assert r.status_code == 202, r.text
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=submit)


@pytest.mark.parametrize("device", ["cuda7", "cuda:x", "cuda:", "gpu", "cuda:1234", "cpu:0", " cpu", "CUDA", 7])
def test_a_malformed_device_is_a_422_on_any_runner(client, Session, loss, submit, device):
    refused(client, Session, "POST", f"/v1/losses/{loss}/meta-test", json={"device": device}, headers=submit)
    refused(client, Session, "POST", "/v1/jobs", json={**TINY, "device": device}, headers=submit)


def test_with_a_broker_a_cuda_job_waits_for_a_gpu_worker(client, loss, submit):
    """runner none (or celery): GPU workers elsewhere serve queue gpu, so cuda and cuda:N are taken."""
    for device in ("cuda", "cuda:7"):
        for url, body in ((f"/v1/losses/{loss}/meta-test", {"device": device}),
                          ("/v1/jobs", {**TINY, "device": device})):
            r = client.post(url, json=body, headers=submit)
            assert r.status_code == 202, r.text
            client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=submit)


def test_the_embedded_runner_refuses_a_device_its_torch_cannot_serve(tmp_path):
    import torch

    s = Settings(data_dir=tmp_path, runner="local", auth="on")
    with TestClient(create_app(s, runner=NoRunner(s))) as c:  # the check reads the setting; no runner process
        S = get_sessionmaker(s.db_url)
        register_loss(S, "dev")
        submit = new_key(S, "submit")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for device in [f"cuda:{count}", "cuda:7", *(["cuda"] if count == 0 else [])]:
            body = refused(c, S, "POST", "/v1/losses/dev/meta-test", json={"device": device}, headers=submit)
            assert "ML3_RUNNER" in body["detail"] and body["errors"][0]["loc"] == "device"
            refused(c, S, "POST", "/v1/jobs", json={**TINY, "device": device}, headers=submit)
        for device in ["cpu", *(["cuda", f"cuda:{count - 1}"] if count else [])]:  # what it can serve
            r = c.post("/v1/losses/dev/meta-test", json={"device": device}, headers=submit)
            assert r.status_code == 202, r.text
            c.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=submit)


# -- 2. the big-body parser keeps types: integer labels stay class indices ------------------------------
def test_integer_labels_give_the_same_answer_in_a_big_body_and_in_small_ones(client, classifier, submit):
    """4000 x 10 logits with 4000 class indices: over 256 KiB the labels came out of the parser as floats (a 422)."""
    import torch

    g = torch.Generator().manual_seed(0)
    url = f"/v1/losses/{classifier}/evaluate"
    for n, encode in ((4000, lambda t: t.tolist()), (8000, base64_of)):  # nested lists: the general parser
        logits, labels = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        body = {"logits": encode(logits), "labels": labels.tolist(), "reduction": "none", "shape": [n, 10]}
        big = client.post(url, json=body, headers=submit)
        assert len(big.request.content) > 256 * 1024  # the big-body path
        assert big.status_code == 200, big.text[:300]
        small = []
        for i in range(0, n, 1000):
            part = {**body, "logits": encode(logits[i:i + 1000]), "labels": labels[i:i + 1000].tolist(),
                    "shape": [1000, 10]}
            r = client.post(url, json=part, headers=submit)
            assert len(r.request.content) < 256 * 1024 and r.status_code == 200, r.text[:300]
            small += r.json()["loss"]
        assert big.json()["loss"] == pytest.approx(small, rel=1e-6)


def base64_of(t) -> str:
    import base64

    return base64.b64encode(t.contiguous().float().numpy().tobytes()).decode()


@pytest.mark.parametrize("body", [
    {"logits": [[0.5, 1.5], [2, 3]], "labels": [1, 0]},  # nested: the general parser
    {"logits": "AAAAAAAAAAA=", "labels": [0, 1, 2], "shape": [1, 2]},  # flat pieces
    {"pred": [1, 2.5, 3], "target": [0, 1, 2]},
])
def test_the_big_body_parser_keeps_integers_integers(body):
    import json

    from app.services.evaluate import parse_big_json

    raw = json.dumps(body).encode()
    parsed = parse_big_json(raw)
    assert parsed == json.loads(raw)
    assert [type(v) for v in parsed.get("labels", parsed.get("target"))] == [type(v) for v in
                                                                               body.get("labels", body.get("target"))]


# -- 3. races and bad rows stay local ----------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request, tmp_path):
    """(client, Session, admin headers) of a server of its own, on SQLite and on PostgreSQL."""
    from conftest import postgres_database

    def serve(database_url: str):
        s = Settings(data_dir=tmp_path, database_url=database_url, runner="none", auth="on")
        with TestClient(create_app(s)) as c:
            S = get_sessionmaker(s.db_url)
            register_loss(S, "s1")
            register_loss(S, "s1", seed=1)
            yield c, S, new_key(S, "admin")

    if request.param == "sqlite":
        yield from serve("")
    else:
        with postgres_database("ml3_upsert") as url:
            yield from serve(url)


def test_concurrent_puts_of_a_new_tag_or_alias_all_succeed(fresh):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client, Session, admin = fresh
    n = 20
    for round_ in range(3):
        start = threading.Barrier(n)

        def put(i, round_=round_, start=start):
            start.wait()  # all at once: every request finds no row before any has committed
            url = f"/v1/losses/s1/tags/new{round_}" if i % 2 else f"/v1/losses/s1/aliases/new{round_}"
            r = client.put(url, json={"value": f"v{i}"} if i % 2 else {"version": 1 + i % 4 // 2}, headers=admin)
            return r.status_code, r.text

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(put, range(n)))
        assert [a[0] for a in answers] == [200] * n, [a for a in answers if a[0] != 200][:3]
        assert client.get("/v1/losses/s1/tags", headers=admin).json()["tags"][f"new{round_}"].startswith("v")
        assert client.get("/v1/losses/s1/aliases", headers=admin).json()["aliases"][f"new{round_}"] in (1, 2)


def damage_spec(Session, name: str, version: int, text: str) -> None:
    """Overwrite a version's stored loss.json in the database, as bit rot or a bad hand edit would."""
    from sqlalchemy import text as sql

    with Session.begin() as db:
        db.execute(sql("UPDATE loss_versions SET spec = :spec WHERE version = :v AND loss_id = "
                       "(SELECT id FROM losses WHERE name = :name)"), {"spec": text, "v": version, "name": name})


@pytest.mark.parametrize("text", ['{"architecture": {"form": "ne', '"a string"', "[1, 2]", b"\xff"])
def test_a_stored_spec_that_no_longer_parses_refuses_that_version_alone(tmp_path, text):
    s = Settings(data_dir=tmp_path, runner="none", auth="on")
    with TestClient(create_app(s)) as c:
        S = get_sessionmaker(s.db_url)
        register_loss(S, "good")
        register_loss(S, "bad")
        register_loss(S, "bad", seed=1)
        admin = new_key(S, "admin")
        assert c.put("/v1/losses/bad/aliases/prod", json={"version": 1}, headers=admin).status_code == 200
        damage_spec(S, "bad", 1, text)
        listed = c.get("/v1/losses")
        assert listed.status_code == 200, listed.text
        assert {x["name"]: x["aliases"] for x in listed.json()["items"]} == {"good": {}, "bad": {"prod": 1}}
        versions = c.get("/v1/losses/bad/versions")
        assert versions.status_code == 200, versions.text
        assert [(v["version"], v["status"]) for v in versions.json()["items"]] == [(2, "ready"), (1, "corrupt")]
        assert c.get("/v1/losses/bad/aliases").json()["aliases"] == {"prod": 1}
        for url in ("/v1/losses/bad:1", "/v1/losses/bad@prod", "/v1/losses/bad:1/artifact",
                    "/v1/losses/bad:1/landscape", "/v1/losses/bad:1/evaluate?pred=1&target=0"):
            body = assert_problem(c.get(url, headers=admin), 500, "bundle_corrupt")
            assert "bad:1" in body["detail"], body
        assert_problem(c.post("/v1/losses/bad:1/meta-test", json={}, headers=admin), 500, "bundle_corrupt")
        for url in ("/v1/losses/bad", "/v1/losses/bad:2/artifact", "/v1/losses/good", "/v1/jobs", "/v1/datasets"):
            assert c.get(url, headers=admin).status_code == 200, url


def test_a_cached_loss_whose_stored_weights_are_damaged_stops_being_served(tmp_path):
    import time

    from sqlalchemy import update

    from app.db.models import LossVersion

    s = Settings(data_dir=tmp_path, runner="none", auth="on", loss_recheck_seconds=0.2)
    with TestClient(create_app(s)) as c:
        S = get_sessionmaker(s.db_url)
        vid = register_loss(S, "cached")
        key = new_key(S, "read")
        url = "/v1/losses/cached/evaluate?pred=0.5&target=0"
        assert c.get(url, headers=key).status_code == 200  # loaded into the cache
        with S.begin() as db:
            weights = db.get(LossVersion, vid).weights
            db.execute(update(LossVersion).where(LossVersion.id == vid).values(weights=weights[:-4] + b"\0\0\0\0"))
        time.sleep(0.3)
        body = assert_problem(c.get(url, headers=key), 500, "bundle_corrupt")
        assert "cached:1" in body["detail"]
        assert_problem(c.get(url, headers=key), 500, "bundle_corrupt")  # not cached again either


# -- 4. cancel stops a running meta-test within one progress step (1% of its SGD steps) -------------------
def test_cancel_stops_a_running_meta_test(tmp_path):
    import time
    from concurrent.futures import ThreadPoolExecutor

    from conftest import wait_for

    from app.jobs.execute import run_job

    s = Settings(data_dir=tmp_path, runner="none", auth="off", lease_seconds=3)
    with TestClient(create_app(s)) as c:
        register_loss(get_sessionmaker(s.db_url), "long")
        job = c.post("/v1/losses/long/meta-test", json={"tasks": 4, "steps": 20000, "horizons": [20000]}).json()
        url = f"/v1/jobs/{job['id']}"
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_job, job["id"], "runner-cancel", s)
            wait_for(lambda: c.get(url).json()["progress"]["completed"] > 0 or run.done(), 120, "meta-test progress")
            assert c.post(f"{url}/cancel").status_code == 202
            asked = time.monotonic()
            assert run.result(timeout=90) == "canceled"
            took = time.monotonic() - asked
        out = c.get(url).json()
        assert out["status"] == "canceled" and out["progress"]["completed"] < out["progress"]["total"] / 10, out
        assert took < 60, took  # the whole meta-test takes minutes here


# -- 5. consistent edges ----------------------------------------------------------------------------------
def upload_both(client, submit, tasks: list[str], classes: list[str] | None = None):
    """The same rows as CSV and as NPZ: (CSV response, NPZ response)."""
    import csv
    import io

    import numpy as np

    n = len(tasks)
    x = [float(i) for i in range(n)]
    ys = classes if classes is not None else [2.0 * v for v in x]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["task", "x", "label" if classes is not None else "y"])
    w.writerows(zip(tasks, x, ys, strict=True))
    params = {"task_type": "classification"} if classes is not None else {}
    r_csv = client.post("/v1/datasets", params=params, content=out.getvalue().encode(),
                        headers={**submit, "content-type": "text/csv"})
    buf = io.BytesIO()
    np.savez(buf, x=np.array(x), y=np.array(ys), task=np.array(tasks))
    r_npz = client.post("/v1/datasets", params=params, content=buf.getvalue(),
                        headers={**submit, "content-type": "application/x-npz"})
    return r_csv, r_npz


GOOD_TASKS = [f"t{i // 4}" for i in range(12)]
GOOD_CLASSES = ["a", "b"] * 6


@pytest.mark.parametrize("tasks,classes", [
    (["t\x00x", *GOOD_TASKS[1:]], None),  # a NUL in a task label
    (["", *GOOD_TASKS[1:]], None),  # an empty task label
    (["  ", *GOOD_TASKS[1:]], None),  # one of spaces only
    (GOOD_TASKS, ["", *GOOD_CLASSES[1:]]),  # an empty class
    (GOOD_TASKS, [" ", *GOOD_CLASSES[1:]]),
    (GOOD_TASKS, ["a\x00b", *GOOD_CLASSES[1:]]),  # numpy drops a trailing NUL: one inside
])
def test_csv_and_npz_uploads_refuse_the_same_labels(client, Session, submit, tasks, classes):
    before = table_counts(Session)
    r_csv, r_npz = upload_both(client, submit, tasks, classes)
    assert_problem(r_csv, 422, "invalid_dataset")
    assert_problem(r_npz, 422, "invalid_dataset")
    assert table_counts(Session) == before


def test_csv_and_npz_read_labels_alike(client, submit):
    """Labels are text without surrounding spaces in both: ' t0' and 't0' are one task."""
    tasks = [(" " if i % 2 else "") + t for i, t in enumerate(GOOD_TASKS)]
    for classes in (None, [c + " " for c in GOOD_CLASSES]):
        r_csv, r_npz = upload_both(client, submit, tasks, classes)
        assert r_csv.status_code == r_npz.status_code == 201, (r_csv.text, r_npz.text)
        for key in ("tasks", "rows", "classes"):
            assert r_csv.json().get(key) == r_npz.json().get(key), key
        assert r_csv.json()["tasks"] == 3


def test_malformed_json_is_a_422_on_every_route(client, Session, loss, admin):
    """FastAPI answered a body nested past its parser with a 400, every other malformed body with a 422."""
    for body in (b"{bad", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b'{"a": 1} x'):
        for method, url in (("POST", "/v1/jobs"), ("POST", f"/v1/losses/{loss}/meta-test"),
                            ("PUT", f"/v1/losses/{loss}/aliases/a"), ("PUT", f"/v1/losses/{loss}:1/tags/k"),
                            ("POST", f"/v1/losses/{loss}/evaluate")):
            refused(client, Session, method, url, 422, content=body,
                    headers={**admin, "content-type": "application/json"})


def test_base64_one_hot_labels_take_the_logits_shape(client, classifier, submit):
    import torch

    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 2, generator=g), torch.tensor([0, 1, 1, 0, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 2).float()
    url = f"/v1/losses/{classifier}/evaluate"
    want = client.post(url, json={"logits": logits.tolist(), "labels": labels.tolist(), "reduction": "none"},
                       headers=submit).json()["loss"]
    r = client.post(url, json={"logits": base64_of(logits), "labels": base64_of(one_hot), "shape": [6, 2],
                               "reduction": "none"}, headers=submit)
    assert r.status_code == 200, r.text
    assert r.json()["loss"] == pytest.approx(want, rel=1e-6)
    short = client.post(url, json={"logits": base64_of(logits), "labels": base64_of(one_hot[:5]), "shape": [6, 2]},
                        headers=submit)
    assert_problem(short, 422)


def test_metrics_follow_auth_reads(tmp_path, client):
    assert client.get("/metrics").status_code == 200  # keys on, reads open: open
    s = Settings(data_dir=tmp_path, runner="none", auth="on", auth_reads=True)
    with TestClient(create_app(s)) as c:
        assert_problem(c.get("/metrics"), 401, "missing_key")
        assert_problem(c.get("/metrics", headers={"Authorization": "Bearer ml3_x_y"}), 401, "invalid_key")
        r = c.get("/metrics", headers=new_key(get_sessionmaker(s.db_url), "read"))
        assert r.status_code == 200 and "ml3_http_requests_total" in r.text
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        assert "security" in c.get("/openapi.json").json()["paths"]["/metrics"]["get"]


# -- 6. memory is what is bounded: one estimate per request, checked before the work starts ----------------
def test_the_brief_s_memory_bombs_are_refused_at_the_default_budgets(client, Session, loss, classifier, submit):
    import base64

    import numpy as np

    body = refused(client, Session, "GET", f"/v1/losses/{classifier}/landscape?classes=1000&points=10000",
                   413, "max_request_bytes_exceeded")
    assert "ML3_MAX_REQUEST_BYTES" in body["detail"]
    n, c = 40_000, 100
    logits = base64.b64encode(np.zeros((n, c), np.float32).tobytes()).decode()
    one_hot = base64.b64encode(np.eye(c, dtype=np.float32)[np.arange(n) % c].tobytes()).decode()
    refused(client, Session, "POST", f"/v1/losses/{classifier}/evaluate", 413, "max_request_bytes_exceeded",
            json={"logits": logits, "labels": one_hot, "shape": [n, c], "return_grad": True}, headers=submit)
    for spec in ({"task": {"model": "cnn", "model_channels": [256, 256]}},  # digits: the CNN's channels count
                 {"tasks": 1000, "seeds": 32, "steps": 4000}):  # the curves recorded at every step count
        target = classifier if "task" in spec else loss
        body = refused(client, Session, "POST", f"/v1/losses/{target}/meta-test", 422, "max_unroll_bytes_exceeded",
                       json=spec, headers=submit)
        assert "ML3_MAX_UNROLL_BYTES" in body["detail"] and "meta-test" in body["detail"]
    r = client.get(f"/v1/losses/{classifier}/landscape?classes=10&points=1000")
    assert r.status_code == 200, r.text


def test_evaluate_and_landscape_stay_within_a_small_budget(tmp_path):
    import torch

    s = Settings(data_dir=tmp_path, runner="none", auth="off", max_request_bytes=10 * 2**20)
    with TestClient(create_app(s)) as c:
        S = get_sessionmaker(s.db_url)
        register_loss(S, "reg")  # hidden [50, 50]: about 430 bytes a point with a gradient
        assert c.post("/v1/losses/reg/evaluate", json={"pred": [0.1] * 1000, "target": [0.0] * 1000,
                                                       "return_grad": True}).status_code == 200
        body = assert_problem(c.post("/v1/losses/reg/evaluate", json={"pred": [0.1] * 40_000, "target": [0.0] * 40_000,
                                                                      "return_grad": True}), 413)
        assert body["limit"] == "max_request_bytes" and body["allowed"] == 10 * 2**20
        g = torch.Generator().manual_seed(0)
        spec = {"logits": torch.randn(4000, 10, generator=g).tolist(), "labels": [i % 10 for i in range(4000)]}
        register_classifier(S, "c")
        assert c.post("/v1/losses/c/evaluate", json=spec).status_code == 200  # 40,000 logits, no gradient
        four = {"logits": spec["logits"] * 4, "labels": spec["labels"] * 4}  # 160,000 logits at 92 bytes each
        assert_problem(c.post("/v1/losses/c/evaluate", json=four), 413, "max_request_bytes_exceeded")
        assert c.get("/v1/losses/c/landscape?classes=100&points=1000").status_code == 200
        assert_problem(c.get("/v1/losses/c/landscape?classes=100&points=2000"), 413, "max_request_bytes_exceeded")


# -- 7. submissions cannot exhaust the server -----------------------------------------------------------
def test_a_key_s_writes_beyond_max_key_writes_are_a_429_at_once(tmp_path):
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from app.db.models import ApiKey
    from app.db.session import lock_row
    from app.services import security

    s = Settings(data_dir=tmp_path, runner="none", auth="on", max_key_writes=1)
    with TestClient(create_app(s)) as c, ThreadPoolExecutor(1) as pool:
        S = get_sessionmaker(s.db_url)
        key = new_key(S, "submit")
        with S() as holding:
            key_id = holding.scalar(select(ApiKey.id).where(
                ApiKey.hash == security.digest(key["Authorization"].removeprefix("Bearer "))))
            assert lock_row(holding, ApiKey, key_id)  # the first submit waits on the key's row
            first = pool.submit(c.post, "/v1/jobs", json=TINY, headers=key)
            time.sleep(0.5)
            assert not first.done()
            started = time.monotonic()
            for url, body in (("/v1/jobs", TINY), ("/v1/losses/any/meta-test", {}), ("/v1/datasets", {})):
                r = c.post(url, json=body, headers=key)
                body = assert_problem(r, 429, "max_key_writes_exceeded")
                assert r.headers["retry-after"] == "1" and "ML3_MAX_KEY_WRITES" in body["detail"]
            assert time.monotonic() - started < 2  # refused before any database work
            assert c.get("/healthz").status_code == 200
            holding.commit()
        assert first.result(timeout=30).status_code == 202
        assert c.post("/v1/jobs", json=TINY, headers=key).status_code == 202  # the slot was given back
        assert c.app.state.write_slots.counts == {}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_burst_of_one_key_s_submits_leaves_the_server_responsive(database):
    """bench/submit_burst.py: 50 concurrent submits, one key, one Idempotency-Key, on a real server, on the
    embedded database and on PostgreSQL."""
    import contextlib
    import json
    import subprocess
    import sys

    from conftest import ROOT, postgres_database

    with postgres_database("burst") if database == "postgresql" else contextlib.nullcontext() as url:
        extra = ["--postgres", url] if url else []
        r = subprocess.run([sys.executable, "bench/submit_burst.py", "--clients", "50", *extra], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    result = json.loads(r.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["database"] == database
    assert r.returncode == 0 and not result["failed"], result
    assert set(result["codes"]) <= {"202", "429"} and result["jobs"] == 1, result
    assert result["healthz"]["p99_s"] < 1.0, result


def test_a_scalar_pred_is_still_a_422(client, Session, loss, submit):
    refused(client, Session, "POST", f"/v1/losses/{loss}/evaluate", json={"pred": 1.0, "target": 0.0}, headers=submit)
