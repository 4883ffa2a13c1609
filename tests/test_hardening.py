"""Hardening, second round: each request an attacker's probe once got a 500, a hang, a NaN or too much
work from, sent again. Keys are required (ML3_AUTH=on), the limits are the defaults, jobs stay queued.
Each bad request must be a 4xx problem+json that stores nothing."""

import json

import httpx
import pytest
import torch
from conftest import TINY, Server, assert_problem, new_key, postgres_database, register_loss, table_counts, wait_for
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.config import Settings
from app.db.models import Job, LossVersion
from app.db.session import get_sessionmaker
from app.main import create_app
from ml3core.artifact import Bundle
from ml3core.losses import LossSpec, init_loss_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("hardening"), runner="none", auth="on")


@pytest.fixture(scope="module")
def loss(Session):
    register_loss(Session, "hard")
    return "hard"


@pytest.fixture(scope="module")
def submit(Session):
    return new_key(Session, "submit")


def refused(client, Session, method: str, url: str, status: int, code: str | None = None, **kwargs) -> dict:
    """The request is a ``status`` problem (with ``code``) and the database is unchanged."""
    before = table_counts(Session)
    body = assert_problem(client.request(method, url, **kwargs), status, code)
    assert table_counts(Session) == before, (method, url)
    return body


# -- 5. no 500s: wrong types, huge ids, unreadable CSV, odd headers, bad JSON ------------------------------
@pytest.mark.parametrize("change,loc", [({"loss": 5}, "loss"), ({"loss": "x"}, "loss"),
                                        ({"task": {"family": ["sine"]}}, "task.family"),
                                        ({"task": {"family": {"a": 1}}}, "task.family")])
def test_a_spec_of_the_wrong_type_is_a_422(client, Session, submit, change, loc):
    body = refused(client, Session, "POST", "/v1/jobs", 422, "invalid_spec", json={**TINY, **change}, headers=submit)
    assert body["errors"][0]["loc"] == loc


def test_a_meta_test_of_the_wrong_family_type_is_a_422(client, Session, submit, loss):
    refused(client, Session, "POST", f"/v1/losses/{loss}/meta-test", 422, "invalid_spec",
            json={"task": {"family": ["sine"]}}, headers=submit)


@pytest.mark.parametrize("dataset", [99999999999999999999, "99999999999999999999", 2**31, "²", -1])
def test_a_data_set_id_beyond_the_column_is_a_422(client, Session, submit, dataset):
    spec = {**TINY, "task": {"family": "dataset", "dataset": dataset}}
    body = refused(client, Session, "POST", "/v1/jobs", 422, "invalid_spec", json=spec, headers=submit)
    assert body["errors"][0]["loc"] == "task.dataset"


def csv_tasks(newline: str = "\n") -> str:
    rows = [f"t{t},{i},{i * t}" for t in range(3) for i in range(4)]
    return newline.join(["task,x,y", *rows]) + newline


@pytest.mark.parametrize("body,words", [
    ("task,x,y\na,1," + "1" * 140_000 + "\n", ["line 2", "CSV", "field larger"]),  # over 131,072 characters
    ("task,x,y" + "a" * 200_000 + "\na,1,2\n", ["line 1", "CSV", "field larger"]),  # a 200,000-character header
    ("task,x,y\na,1,2\nb\x00,1,2\n", ["line 3", "NUL"]),
])
def test_csv_the_reader_refuses_is_a_422_naming_the_line(client, Session, submit, body, words):
    r = refused(client, Session, "POST", "/v1/datasets", 422, "invalid_dataset", content=body.encode(),
                headers={**submit, "content-type": "text/csv"})
    assert all(w in r["detail"] for w in words), r["detail"]


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_csv_with_any_line_ending_is_read(client, submit, newline):
    r = client.post("/v1/datasets", content=csv_tasks(newline).encode(), headers={**submit, "content-type": "text/csv"})
    assert r.status_code == 201, r.text
    assert (r.json()["rows"], r.json()["tasks"]) == (12, 3)


@pytest.mark.parametrize("value", [b"\xff\xfe", "²".encode("latin-1"), b"12\xb2", b"99999999999"])
def test_a_last_event_id_that_is_no_event_id_is_a_422(client, Session, submit, value):
    job = client.post("/v1/jobs", json=TINY, headers=submit).json()
    r = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": value})
    assert assert_problem(r, 422)["errors"][0]["loc"] == "Last-Event-ID"


def test_a_deeply_nested_spec_is_a_4xx(client, Session, submit):
    deep = {"task": {"family": "sine"}, "meta_test": {"horizons": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}}
    refused(client, Session, "POST", "/v1/jobs", 422, json=deep, headers=submit)
    body = b'{"task": {"family": "sine"}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = client.post("/v1/jobs", content=body, headers={**submit, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_nul_characters_are_refused_before_the_database(client, Session, submit, loss):
    nul_everywhere(client, Session, submit, loss)


def nul_everywhere(client, Session, submit, loss):
    """NUL in query strings, paths, names, tag values and spec strings: PostgreSQL's text has none."""
    admin = new_key(Session, "admin")
    job = client.post("/v1/jobs", json=TINY, headers=submit).json()
    for method, url, kwargs in [
        ("GET", "/v1/jobs?status=queued%00", {}), ("GET", "/v1/jobs?kind=meta-train%00", {}),
        ("GET", f"/v1/losses/{loss}%00", {}), ("GET", f"/v1/losses/{loss}/evaluate?pred=1&target=0%00", {}),
        ("GET", f"/v1/jobs/{job['id']}/figures/a%00.png", {}),
        ("PUT", f"/v1/losses/{loss}:1/tags/stage", {"json": {"value": "a\x00b"}, "headers": admin}),
        ("PUT", f"/v1/losses/{loss}/aliases/a%00", {"json": {"version": 1}, "headers": admin}),
        ("POST", "/v1/datasets?name=a%00b", {"content": csv_tasks().encode(),
                                             "headers": {**submit, "content-type": "text/csv"}}),
        ("POST", "/v1/datasets", {"files": {"file": ("a.csv", csv_tasks().encode(), "text/csv")},
                                  "data": {"name": "a\x00b"}, "headers": submit}),
        ("POST", "/v1/jobs", {"json": {**TINY, "register_as": "a\x00"}, "headers": submit}),
        ("POST", "/v1/jobs", {"json": {**TINY, "device": "cpu\x00"}, "headers": submit}),
        ("POST", "/v1/jobs", {"json": {**TINY, "task": {"family": "sine", "model_activation": "relu\x00"}},
                              "headers": submit}),
        ("POST", f"/v1/losses/{loss}/meta-test", {"json": {"device": "cuda\x00"}, "headers": submit}),
    ]:
        before = table_counts(Session)
        r = client.request(method, url, **kwargs)
        assert 400 <= r.status_code < 500, (method, url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), (method, url)
        assert table_counts(Session) == before, (method, url)


def test_nul_characters_on_postgresql(tmp_path):
    with postgres_database("ml3_nul") as url:
        s = Settings(data_dir=tmp_path, database_url=url, runner="none", auth="on")
        with TestClient(create_app(s)) as c:
            S = get_sessionmaker(s.db_url)
            register_loss(S, "pgnul")
            nul_everywhere(c, S, new_key(S, "submit"), "pgnul")


# -- 8. the benchmark route: off unless a setting turns it on; then a read like any other ------------------
def test_the_echo_route_is_off_by_default(client, Session):
    for r in (client.get("/v1/_echo?a=1"), client.post("/v1/_echo", json={"a": 1}),
              client.post("/v1/_echo", content=b"{bad", headers={"content-type": "application/json"})):
        assert_problem(r, 404, "not_found")


def test_the_echo_route_when_on_parses_or_refuses_with_a_4xx(tmp_path):
    s = Settings(data_dir=tmp_path, runner="none", auth="on", auth_reads=True, bench_routes=True)
    with TestClient(create_app(s)) as c:
        assert_problem(c.get("/v1/_echo?a=1"), 401, "missing_key")
        key = new_key(get_sessionmaker(s.db_url), "read")
        assert c.get("/v1/_echo?a=1", headers=key).json() == {"a": "1"}
        assert c.post("/v1/_echo", json={"a": [1, 2]}, headers=key).json() == {"a": [1, 2]}
        for body in (b"{bad", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"):
            r = c.post("/v1/_echo", content=body, headers={**key, "content-type": "application/json"})
            assert_problem(r, 422)


# -- 3. names are matched whole: a final newline is not part of any name ----------------------------------
def test_names_ending_in_a_newline_are_refused(client, Session, submit, loss):
    admin = new_key(Session, "admin")
    refused(client, Session, "POST", "/v1/jobs", 422, json={**TINY, "register_as": "nl\n"}, headers=submit)
    refused(client, Session, "PUT", f"/v1/losses/{loss}/aliases/nl%0A", 422, json={"version": 1}, headers=admin)
    refused(client, Session, "PUT", f"/v1/losses/{loss}:1/tags/nl%0A", 422, json={"value": "x"}, headers=admin)
    assert_problem(client.get(f"/v1/losses/{loss}%0A/artifact"), 422)
    assert_problem(client.get(f"/v1/losses/{loss}@prod%0A"), 422)


# -- 6. float32 overflow: a 422, never NaN or Infinity in the JSON -----------------------------------------
def test_values_beyond_float32_are_refused(client, Session, loss):
    key = new_key(Session, "read")
    body = assert_problem(client.get(f"/v1/losses/{loss}/evaluate?pred=1e39&target=0", headers=key), 422)
    assert body["errors"][0]["loc"] == "pred" and "float32" in body["detail"]
    r = client.post(f"/v1/losses/{loss}/evaluate", json={"pred": [1e39] * 100, "target": [0.0] * 100}, headers=key)
    assert_problem(r, 422)


def test_a_loss_that_overflows_float32_is_a_422_not_infinity(client, Session):
    """A weighted squared error: w·(pred − target)² is finite per point up to 1.8e19 apart, and its sum or
    its value beyond that is not."""
    spec = LossSpec(pred_dim=1, x_dim=1, form="weighted_se", inputs=("target",), output="softplus")
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(0)), spec, {"family": "sine"},
                          {"inner_lr": 1e-3}, {})
    from app.services import registry

    with Session.begin() as db:
        registry.register(db, "overflow", bundle, None, None)
    key = new_key(Session, "read")
    url = "/v1/losses/overflow/evaluate"
    fine = client.post(url, json={"pred": [1e3, 1e3], "target": [0.0, 0.0], "reduction": "sum"}, headers=key)
    assert fine.status_code == 200 and 0 < fine.json()["loss"] < float("inf")
    for body in ({"pred": [1e19] * 64, "target": [-1e19] * 64, "reduction": "sum"},  # each value finite, the sum not
                 {"pred": [3e38], "target": [-3e38]},
                 {"pred": [3e19], "target": [0.0], "return_grad": True, "reduction": "none"}):
        r = client.post(url, json=body, headers=key)
        problem = assert_problem(r, 422, "not_finite")
        assert "float32" in problem["detail"]
        assert "NaN" not in r.text.replace("NaN or infinity", "") and "Infinity" not in r.text


# -- 1. one estimate of a run's memory and work, for jobs and meta-tests alike ------------------------------
WIDE = [1024] * 8


@pytest.mark.parametrize("body,setting", [
    ({"task": {"model_hidden": [4096]}}, "max_hidden"),
    ({"task": {"model_hidden": WIDE}, "tasks": 1000, "steps": 20000, "seeds": 32}, "max_unroll_bytes"),
    ({"task": {"points": 100000, "heldout_points": 100000}, "tasks": 1000, "steps": 20000, "seeds": 32},
     "max_unroll_bytes"),
    ({"task": {"model_hidden": [1024, 1024]}, "tasks": 10, "steps": 20000, "seeds": 4, "lr_factors": [1]}, "max_work"),
])
def test_a_meta_test_beyond_the_limits_is_a_422_naming_the_setting(client, Session, submit, loss, body, setting):
    problem = refused(client, Session, "POST", f"/v1/losses/{loss}/meta-test", 422, f"{setting}_exceeded",
                      json=body, headers=submit)
    assert f"ML3_{setting.upper()}" in problem["detail"] and problem["limit"] == setting


@pytest.mark.parametrize("change,setting", [
    ({"task": {"family": "sine", "model_hidden": WIDE}, "eval_tasks": 1000, "eval_steps": 20000,
      "validation_tasks": 1000}, "max_unroll_bytes"),
    ({"task": {"family": "sine", "points": 100000, "heldout_points": 100000}, "validation_tasks": 1000},
     "max_unroll_bytes"),
    ({"task": {"family": "sine"}, "seeds": 32, "outer_iterations": 100000, "eval_every": 1, "eval_steps": 20000},
     "max_work"),
])
def test_a_job_beyond_the_limits_is_a_422_naming_the_setting(client, Session, submit, change, setting):
    problem = refused(client, Session, "POST", "/v1/jobs", 422, f"{setting}_exceeded", json={**TINY, **change},
                      headers=submit)
    assert f"ML3_{setting.upper()}" in problem["detail"]


def test_the_default_jobs_fit_the_default_limits(client, submit, loss):
    for family in ("sine", "shaped-sine", "inverse-dynamics"):
        r = client.post("/v1/jobs", json={"task": {"family": family}}, headers=submit)
        assert r.status_code == 202, (family, r.text)
        client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=submit)
    r = client.post(f"/v1/losses/{loss}/meta-test", json={"tasks": 10, "steps": 1000}, headers=submit)
    assert r.status_code == 202, r.text
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=submit)


def test_the_estimate_counts_parameters_held_out_points_and_every_phase():
    from app.services.limits import RunSize, job_size
    from ml3core.api import parse_spec

    plan = parse_spec({"task": {"family": "sine", "points": 7, "heldout_points": 3, "model_hidden": [8]},
                       "preset": "paper", "loss": {"hidden": [4, 6]}, "seeds": 3, "tasks_per_batch": 2,
                       "inner_steps": 5,
                       "outer_iterations": 10, "eval_every": 5, "eval_steps": 4, "eval_tasks": 1,
                       "validation_tasks": 2, "meta_test": {"tasks": 3, "steps": 6, "horizons": [9]}})
    size = job_size(plan)
    params = (1 + 1) * 8 + (8 + 1) * 1  # x -> 8 -> pred
    width = 1 + 8 + 1 + (4 + 6 + 1)  # x, hidden, pred, then L_phi's layers and output
    loss_params = (2 + 1) * 4 + (4 + 1) * 6 + (6 + 1) * 1  # (pred, target) -> 4 -> 6 -> 1
    assert (size.params, size.width, size.flops, size.points, size.heldout) == (params, width, params + loss_params,
                                                                                7, 3)
    step, heldout = 7 * width + 3 * params, 3 * width  # a kept step trains on 7 points; 3 held out, read once
    model = step + heldout
    grid = 9  # the lr grid of the tuned baseline: a batch axis of the publishing choice and the meta-test
    # 3 copies x rows x seeds x tasks x lrs x metrics x bytes
    from ml3core.metatest import curve_steps

    assert curve_steps(6, [9]) == [0, 1, 2, 3, 4, 5, 6, 7, 9]  # every step to 6, log-spaced to the horizon 9
    records = 3 * 9 * 3 * 3 * grid * 2 * 4
    assert size.phases == {"meta-training unroll": 3 * 2 * (5 * step + heldout) * 4, "evaluation": 3 * 1 * model * 4,
                           "meta-validation": 3 * 2 * model * 4, "publishing choice": 3 * 2 * grid * model * 4,
                           "meta-test": 3 * 3 * grid * model * 4 + records}
    per_step = 10 * 3 * (params + loss_params)
    curves = 10 // 5 + 1
    choice = 2 * 3 * 2 * grid * 100  # L_phi and the plain loss at 9 lrs each, to H = 100 steps
    assert size.work == per_step * (2 * 3 * 2 * 10 * 5 + 3 * 1 * curves * 4 + 3 * 2 * curves * 4 + choice
                                    + 2 * 3 * 3 * grid * 9)
    assert isinstance(size, RunSize)


# -- 7. the bundle's sha256 covers its spec: an edited loss.json is not served ----------------------------
def test_a_stored_spec_edited_is_refused(client, Session):
    version_id = register_loss(Session, "edited")
    with Session.begin() as db:
        spec = dict(db.get(LossVersion, version_id).spec)
        assert spec["architecture"]["output"] == "softplus"
        spec["architecture"] = {**spec["architecture"], "output": "linear"}
        db.execute(update(LossVersion).where(LossVersion.id == version_id).values(spec=spec))
    key = new_key(Session, "read")
    for r in (client.get("/v1/losses/edited/artifact"),
              client.get("/v1/losses/edited/evaluate", params={"pred": "0.1", "target": "0"}, headers=key)):
        body = assert_problem(r, 500, "bundle_corrupt")
        assert "edited:1" in body["detail"] and "sha256" in body["detail"]


def test_the_etag_is_the_whole_bundle_checksum_and_the_loader_holds_the_download_to_it(client, loss):
    from ml3core.portable import LossBundleError, bundle_sha256, parse_bundle, read_bundle_files

    r = client.get(f"/v1/losses/{loss}/artifact")
    bundle = Bundle.read(r.content)
    assert r.headers["etag"] == f'"{bundle.sha256}"' == f'"{bundle_sha256(bundle.weights, bundle.spec)}"'
    files = read_bundle_files(r.content)
    stripped = {k: v for k, v in bundle.spec.items() if k != "sha256"}  # posing as an older bundle
    with pytest.raises(LossBundleError, match="expected"):
        parse_bundle({**files, "loss.json": json.dumps(stripped).encode()}, bundle.sha256)


# -- 9. idempotency keys belong to the API key that used them ---------------------------------------------
def test_an_idempotency_key_is_scoped_to_its_api_key(client, Session):
    alice, bob = new_key(Session, "submit"), new_key(Session, "submit")
    same = {"Idempotency-Key": "order-66"}
    first = client.post("/v1/jobs", json=TINY, headers={**alice, **same})
    again = client.post("/v1/jobs", json=TINY, headers={**alice, **same})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json=TINY, headers={**bob, **same})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    with Session() as db:
        owners = {db.get(Job, j.json()["id"]).api_key_id for j in (first, other)}
    assert len(owners) == 2
    for k in (alice, bob):  # each key's own first use decides what a different body with it is
        assert_problem(client.post("/v1/jobs", json={**TINY, "seed": 2}, headers={**k, **same}), 422,
                       "idempotency_key_reused")


# -- 4. a big evaluate body: off the event loop, same numbers --------------------------------------------
def test_a_big_json_evaluate_gives_the_numbers_of_small_ones(client, Session, loss):
    key = new_key(Session, "read")
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(40_000, generator=g), torch.randn(40_000, generator=g)
    url = f"/v1/losses/{loss}/evaluate"
    big = client.post(url, json={"pred": pred.tolist(), "target": target.tolist(), "reduction": "none"},
                      headers=key)
    assert big.status_code == 200, big.text
    assert len(big.request.content) > 256 * 1024  # the big-body path
    small = [client.post(url, json={"pred": pred[i:i + 10_000].tolist(), "target": target[i:i + 10_000].tolist(),
                                    "reduction": "none"}, headers=key).json()["loss"] for i in range(0, 40_000, 10_000)]
    assert big.json()["loss"] == pytest.approx([v for part in small for v in part], rel=1e-6)
    bad = b'{"pred": [' + b"1," * 200_000 + b'"x"], "target": [0]}'
    assert_problem(client.post(url, content=bad, headers={**key, "content-type": "application/json"}), 422)
    deep = b'{"pred": ' + b"[" * 200_000 + b"]" * 200_000 + b', "target": [0]}'
    assert_problem(client.post(url, content=deep, headers={**key, "content-type": "application/json"}), 422)


# -- 10. event streams: keep-alive comments on time, a cap per key ----------------------------------------
def test_event_streams_keep_alive_and_are_capped_per_key(tmp_path):
    server = Server(tmp_path, ML3_RUNNER="none", ML3_AUTH="on", ML3_MAX_STREAMS="2",
                    ML3_SSE_KEEPALIVE_SECONDS="0.5").start()
    try:
        S = get_sessionmaker(f"sqlite:///{tmp_path / 'ml3.db'}")
        key, other = new_key(S, "read"), new_key(S, "read")
        job = httpx.post(f"{server.url}/v1/jobs", json=TINY, headers=new_key(S, "submit")).json()
        url = f"{server.url}/v1/jobs/{job['id']}/events"
        with httpx.Client(timeout=30) as c:
            streams = [c.send(c.build_request("GET", url, headers=key), stream=True) for _ in range(2)]
            iters = [s.iter_lines() for s in streams]  # kept: an iterator dropped closes its stream
            for s, lines in zip(streams, iters, strict=True):
                assert s.status_code == 200
                seen = [next(lines) for _ in range(8)]  # retry, the queued event, then keep-alive comments
                assert ": keep-alive" in seen, seen
            r = c.get(url, headers=key)
            body = assert_problem(r, 429, "max_streams_exceeded")
            assert "ML3_MAX_STREAMS" in body["detail"] and r.headers["retry-after"]
            with c.stream("GET", url, headers=other) as s:  # another key has its own streams
                assert s.status_code == 200
            streams[0].close()

            def reopened():
                with c.stream("GET", url, headers=key) as s:
                    return s.status_code == 200

            wait_for(reopened, 30, "a closed stream to free its slot")
            streams[1].close()
    finally:
        server.stop()


def test_a_stream_slot_is_freed_however_the_stream_ends(client, Session, submit):
    """A stream of a job that ends returns its slot: many finished streams in a row never hit the cap."""
    job = client.post("/v1/jobs", json=TINY, headers=submit).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=submit)
    key = new_key(Session, "read")
    for _ in range(25):  # more than max_streams (20)
        r = client.get(f"/v1/jobs/{job['id']}/events", headers=key)
        assert r.status_code == 200 and "canceled" in r.text
    assert client.app.state.streams == {}


@pytest.mark.parametrize("body", [
    {"pred": [0.5, -1e-7, 3, 2.5e38], "target": [1, 2, 3, 4], "reduction": "none"},
    {"pred": [[1, 2], [3, 4]], "target": [[1, 2], [3, 4]], "x": [0.1, 0.2]},  # nested: the general parser
    {"pred": [], "target": [], "return_grad": True},
    {"pred": "AAAAAA==", "target": [1.5], "shape": [1]},
    {"\"pred": [1], "target": [2], "note": "\"pred\": [9]"},  # only looks like pred
    {"x": [float(i) for i in range(300_000)], "target": [0.0] * 5, "pred": [1.0] * 5},  # pieces of 1 MiB
])
def test_the_big_body_parser_reads_what_json_reads(body):
    from app.services.evaluate import parse_big_json

    raw = json.dumps(body).encode()
    assert parse_big_json(raw) == json.loads(raw)


def test_the_big_body_parser_refuses_what_json_refuses():
    from app.core.errors import Problem
    from app.services.evaluate import parse_big_json

    for raw in (b'{"pred": [1,], "target": [2]}', b'{"pred": [1, 2', b'{"pred": [1] "target": [2]}', b"\xff"):
        with pytest.raises(Problem):
            parse_big_json(raw)
