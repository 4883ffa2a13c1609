"""API keys and scopes, limits, safe artifacts. A server with keys required (ML3_AUTH=on) and small
limits, on a temporary SQLite database; losses are registered directly, jobs stay queued."""

import ast
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, TINY, assert_problem, new_key, register_loss, table_counts
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.config import Settings
from app.db.models import Job, LossVersion
from app.db.session import get_sessionmaker
from app.main import create_app
from app.services import security
from ml3core import load_loss
from ml3core.artifact import Bundle
from ml3core.portable import LossBundleError

LIMITS = {"max_body_bytes": 100_000, "max_array_items": 50, "max_seeds": 4, "max_outer_iterations": 100,
          "max_inner_steps": 10, "max_hidden": 128, "max_tasks": 20, "max_steps": 200,
          "max_unroll_bytes": 50_000_000, "max_active_jobs": 3, "eval_rate": 2.0, "eval_burst": 3,
          "max_eval_values": 100, "max_query_values": 10}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("security"), runner="none", auth="on", **LIMITS)


@pytest.fixture(scope="module")
def loss(Session):
    register_loss(Session, "guarded")
    return "guarded"


# -- the auth matrix: every write route of the app -----------------------------------------------------
def write_routes(client) -> list[tuple[str, str, str]]:
    """(method, path, scope) of every operation but GET and HEAD (reads) under /v1, as the OpenAPI document says."""
    paths = client.get("/openapi.json").json()["paths"]
    return sorted((m.upper(), p, op["security"][-1]["HTTPBearer"][0] if op.get("security") else "none")
                  for p, ops in paths.items() if p.startswith("/v1")
                  for m, op in ops.items() if m not in ("get", "head"))


READ_POSTS = {("POST", "/v1/losses/{loss_id}/evaluate")}  # evaluate computes, it stores nothing
EXPECTED_SCOPES = {  # creating and cancelling work: submit; changing the registry: admin
    ("POST", "/v1/jobs"): "submit", ("POST", "/v1/jobs/{job_id}/cancel"): "submit",
    ("POST", "/v1/losses/{loss_id}/meta-test"): "submit",
    ("PUT", "/v1/losses/{name}/aliases/{alias}"): "admin",
    ("DELETE", "/v1/losses/{name}/aliases/{alias}"): "admin",
    ("PUT", "/v1/losses/{loss_id}/tags/{key}"): "admin",
    ("DELETE", "/v1/losses/{loss_id}/tags/{key}"): "admin",
    ("PATCH", "/v1/losses/{loss_id}"): "admin",
}


def test_every_write_route_needs_submit_or_admin_and_every_delete_admin(client):
    routes = {(m, p): s for m, p, s in write_routes(client)}
    assert set(EXPECTED_SCOPES) <= set(routes)
    for (method, path), scope in routes.items():
        expected = "read" if (method, path) in READ_POSTS else EXPECTED_SCOPES.get((method, path), scope)
        assert scope == expected, (method, path, scope)
        assert scope in ("submit", "admin") or (method, path) in READ_POSTS, (method, path, scope)
        assert method != "DELETE" or scope == "admin", (method, path, scope)


def prepare(client, Session, loss, method: str, path: str, owner: dict):
    """(url, request kwargs, status on success) for a write route, with what it needs in place
    (a job of ``owner`` to cancel, an alias or tag to delete). Unknown routes get placeholders."""
    admin = new_key(Session, "admin")
    if path == "/v1/jobs":
        return "/v1/jobs", {"json": TINY}, 202
    if path == "/v1/jobs/{job_id}/cancel":
        job = client.post("/v1/jobs", json=TINY, headers=owner).json()
        return f"/v1/jobs/{job['id']}/cancel", {}, 202
    if path == "/v1/losses/{loss_id}/meta-test":
        return f"/v1/losses/{loss}/meta-test", {"json": {"tasks": 1, "steps": 2, "horizons": [2]}}, 202
    if path == "/v1/losses/{name}/aliases/{alias}":
        if method == "DELETE":
            r = client.put(f"/v1/losses/{loss}/aliases/stable", json={"version": 1}, headers=admin)
            assert r.is_success, r.text
            return f"/v1/losses/{loss}/aliases/stable", {}, 204
        return f"/v1/losses/{loss}/aliases/stable", {"json": {"version": 1}}, 200
    if path == "/v1/losses/{loss_id}/tags/{key}":
        if method == "DELETE":
            r = client.put(f"/v1/losses/{loss}:1/tags/stage", json={"value": "x"}, headers=admin)
            assert r.is_success, r.text
            return f"/v1/losses/{loss}:1/tags/stage", {}, 204
        return f"/v1/losses/{loss}:1/tags/stage", {"json": {"value": "x"}}, 200
    if path == "/v1/losses/{loss_id}":
        return f"/v1/losses/{loss}:1", {"json": {"description": "x"}}, 200
    url = path
    for name in [p.split("}")[0] for p in path.split("{")[1:]]:
        url = url.replace("{" + name + "}", "1" if name.endswith("id") else "x")
    return url, {"json": {}}, None  # a route this test does not know: only "not refused" is checked


CASES = ["no key", "wrong key", "revoked key", "wrong scope", "right scope"]


@pytest.mark.parametrize("case", CASES)
def test_auth_matrix(client, Session, loss, case):
    for method, path, scope in write_routes(client):
        if (method, path) in READ_POSTS:
            continue
        right = new_key(Session, scope)
        headers = {"no key": {}, "wrong key": {"Authorization": "Bearer ml3_00000000_not-a-real-key"},
                   "revoked key": new_key(Session, scope, revoked=True),
                   "wrong scope": new_key(Session, security.SCOPES[security.SCOPES.index(scope) - 1]),
                   "right scope": right}[case]
        url, kwargs, ok = prepare(client, Session, loss, method, path, owner=right)
        before = table_counts(Session)
        r = client.request(method, url, headers=headers, **kwargs)
        where = f"{case}: {method} {path}"
        if case == "right scope":
            assert r.status_code not in (401, 403), (where, r.text)
            assert ok is None or r.status_code == ok, (where, r.text)
            continue
        status, code = {"no key": (401, "missing_key"), "wrong key": (401, "invalid_key"),
                        "revoked key": (401, "revoked_key"), "wrong scope": (403, "insufficient_scope")}[case]
        assert (r.status_code, r.json().get("code")) == (status, code), (where, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert table_counts(Session) == before, where


def test_a_submit_key_cancels_only_its_own_jobs_and_admin_any(client, Session):
    alice, bob, admin = new_key(Session, "submit"), new_key(Session, "submit"), new_key(Session, "admin")
    a = client.post("/v1/jobs", json=TINY, headers=alice).json()
    b = client.post("/v1/jobs", json=TINY, headers=alice).json()
    assert_problem(client.post(f"/v1/jobs/{a['id']}/cancel", headers=bob), 403, "not_your_job")
    assert client.get(f"/v1/jobs/{a['id']}").json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{a['id']}/cancel", headers=alice).json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{b['id']}/cancel", headers=admin).json()["status"] == "canceled"


def test_reads_are_open_by_default_and_keyed_by_setting(client, loss, tmp_path):
    q = {"pred": "0.1,0.5", "target": "0,1"}
    assert client.get("/v1/jobs").status_code == 200
    assert client.get(f"/v1/losses/{loss}/evaluate", params=q).status_code == 200
    # any address but loopback needs keys by default; here reads too
    keyed = Settings(data_dir=tmp_path, runner="none", host="0.0.0.0", auth_reads=True)
    with TestClient(create_app(keyed)) as c:
        S = get_sessionmaker(keyed.db_url)
        register_loss(S, "keyed")
        for url in ("/v1/jobs", "/v1/losses", "/v1/losses/keyed:1", "/v1/losses/keyed/artifact"):
            assert_problem(c.get(url), 401, "missing_key")
        assert_problem(c.get("/v1/losses/keyed/evaluate", params=q), 401, "missing_key")
        reader = new_key(S, "read")
        assert c.get("/v1/jobs", headers=reader).status_code == 200
        assert c.get("/v1/losses/keyed/evaluate", params=q, headers=reader).json()["id"] == "keyed:1"
        assert_problem(c.post("/v1/jobs", json=TINY, headers=reader), 403, "insufficient_scope")
        assert c.get("/healthz").status_code == 200  # probes stay open


@pytest.mark.parametrize("host,auth,enabled", [
    ("127.0.0.1", "auto", False), ("localhost", "auto", False), ("::1", "auto", False),
    ("0.0.0.0", "auto", True), ("10.1.2.3", "auto", True), ("::", "auto", True),
    ("0.0.0.0", "off", False), ("127.0.0.1", "on", True)])
def test_keys_are_required_off_loopback_unless_turned_off(host, auth, enabled):
    assert security.auth_enabled(Settings(host=host, auth=auth)) is enabled


def test_the_start_says_loudly_how_the_server_is_protected(Session, caplog):
    caplog.set_level("WARNING", logger="ml3.security")
    for host, auth, words in [("127.0.0.1", "auto", "API keys are OFF"), ("0.0.0.0", "off", "ANYONE"),
                              ("0.0.0.0", "auto", "API keys are required")]:
        caplog.clear()
        security.announce(Settings(host=host, auth=auth), Session)
        assert words in caplog.text and caplog.records[0].levelname == "WARNING"


def test_keys_cli_create_list_revoke(tmp_path, monkeypatch, capsys):
    from app.cli import main
    from app.core.config import get_settings

    env = {**os.environ, "ML3_DATA_DIR": str(tmp_path)}
    env.pop("ML3_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "app.cli", "keys", "create", "--scope", "submit", "--name", "ci"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "shown only now" in r.stderr, r.stderr
    token = r.stdout.strip()
    prefix = token.split("_")[1]
    assert token.startswith(f"ml3_{prefix}_") and len(token) > 40

    monkeypatch.setenv("ML3_DATA_DIR", str(tmp_path))  # the same command in this process, faster
    monkeypatch.delenv("ML3_DATABASE_URL", raising=False)
    get_settings.cache_clear()

    def ml3(*args) -> str:
        capsys.readouterr()
        assert main(["keys", *args]) == 0
        return capsys.readouterr().out

    try:
        listing = ml3("list")
        assert prefix in listing and "submit" in listing and "ci" in listing and token not in listing
        s = Settings(data_dir=tmp_path, runner="none", auth="on")
        with TestClient(create_app(s)) as c:
            with get_sessionmaker(s.db_url)() as db:  # only the hash is stored
                assert [k.hash for k in security.list_keys(db)] == [security.digest(token)]
            headers = {"Authorization": f"Bearer {token}"}
            assert c.post("/v1/jobs", json=TINY, headers=headers).status_code == 202
            assert "revoked" in ml3("revoke", prefix)
            assert_problem(c.post("/v1/jobs", json=TINY, headers=headers), 401, "revoked_key")
        assert prefix not in ml3("list") and "revoked" in ml3("list", "--all")
        assert main(["keys", "revoke", "ffffffff"]) == 1
    finally:
        get_settings.cache_clear()


# -- limits: each hit once, a 4xx naming the setting, nothing stored -----------------------------------
def spec(**changes) -> dict:
    out = {**TINY, "task": dict(TINY["task"])}
    for k, v in changes.items():
        if k.startswith("task_"):
            out["task"][k[5:]] = v
        else:
            out[k] = v
    return out


JOB_LIMITS = [
    ("max_seeds", 422, spec(seeds=5)),
    ("max_outer_iterations", 422, spec(outer_iterations=101)),
    ("max_inner_steps", 422, spec(inner_steps=11)),
    ("max_hidden", 422, spec(loss={"hidden": [129]})),
    ("max_hidden", 422, spec(task_model_hidden=[200])),
    ("max_tasks", 422, spec(tasks_per_batch=21)),
    ("max_steps", 422, spec(eval_steps=201)),
    ("max_steps", 422, spec(meta_test={"horizons": [5000]})),
    ("max_unroll_bytes", 422, spec(seeds=4, tasks_per_batch=20, inner_steps=10, task_points=1000)),
    ("max_array_items", 413, spec(meta_test={"horizons": list(range(51))})),
]


@pytest.mark.parametrize("name,status,body", JOB_LIMITS,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(JOB_LIMITS)])
def test_job_size_limits(client, Session, settings, name, status, body):
    key = new_key(Session, "submit")
    before = table_counts(Session)
    problem = assert_problem(client.post("/v1/jobs", json=body, headers=key), status, f"{name}_exceeded")
    assert name in problem["detail"] and f"ML3_{name.upper()}" in problem["detail"]
    assert problem["limit"] == name and problem["allowed"] == getattr(settings, name)
    assert table_counts(Session) == before


def test_the_unroll_estimate_grows_with_every_factor_it_names():
    from app.services.limits import job_size
    from ml3core.api import parse_spec

    def unroll(**changes) -> int:
        return job_size(parse_spec(spec(**changes))).phases["meta-training unroll"]

    base = unroll(seeds=1, tasks_per_batch=1, inner_steps=1)
    assert unroll(seeds=3, tasks_per_batch=1, inner_steps=1) == 3 * base
    assert unroll(seeds=1, tasks_per_batch=2, inner_steps=1) == 2 * base
    step = unroll(seeds=1, tasks_per_batch=1, inner_steps=2) - base  # each kept step: its train points and θ
    assert 0 < step < base and unroll(seeds=1, tasks_per_batch=1, inner_steps=5) == base + 4 * step
    assert unroll(seeds=1, tasks_per_batch=1, inner_steps=1, dtype="float64") == 2 * base
    assert unroll(seeds=1, tasks_per_batch=1, inner_steps=1, task_model_hidden=[1000]) > base


@pytest.mark.parametrize("name,body", [("max_seeds", {"seeds": 5}), ("max_seeds", {"seeds": 10**12}),
                                       ("max_tasks", {"tasks": 21}), ("max_steps", {"steps": 201}),
                                       ("max_array_items", {"seeds": list(range(51))})])
def test_meta_test_limits(client, Session, loss, name, body):
    key = new_key(Session, "submit")
    before = table_counts(Session)
    r = client.post(f"/v1/losses/{loss}/meta-test", json=body, headers=key)
    problem = assert_problem(r, 413 if "array" in name else 422)
    assert problem["code"] == f"{name}_exceeded" and name in problem["detail"]
    assert table_counts(Session) == before


def test_body_size_limit_declared_and_chunked(client, Session):
    key = new_key(Session, "submit")
    big = b'{"task": {"family": "sine"}, "x": "' + b"a" * 100_001 + b'"}'
    before = table_counts(Session)
    r = client.post("/v1/jobs", content=big, headers={**key, "content-type": "application/json"})
    assert "max_body_bytes" in assert_problem(r, 413, "max_body_bytes_exceeded")["detail"]
    chunks = (big[i:i + 10_000] for i in range(0, len(big), 10_000))  # no Content-Length: read, then refused
    r = client.post("/v1/jobs", content=chunks, headers={**key, "content-type": "application/json"})
    assert_problem(r, 413, "max_body_bytes_exceeded")
    assert table_counts(Session) == before
    tiny = json.dumps(TINY).encode()
    small = iter([tiny[:20], tiny[20:]])
    r = client.post("/v1/jobs", content=small, headers={**key, "content-type": "application/json"})
    assert r.status_code == 202, r.text


def test_evaluate_array_limits(client, Session, loss):
    key = new_key(Session, "read")  # its own rate bucket
    url = f"/v1/losses/{loss}/evaluate"
    r = client.post(url, json={"pred": [0.5] * 101, "target": [0.5] * 101}, headers=key)
    assert "max_eval_values" in assert_problem(r, 413, "max_eval_values_exceeded")["detail"]
    r = client.get(url, params={"pred": ",".join(["1"] * 11), "target": "1"}, headers=key)
    assert_problem(r, 413, "max_query_values_exceeded")


def test_active_jobs_per_key(client, Session):
    key, other = new_key(Session, "submit"), new_key(Session, "submit")
    jobs = [client.post("/v1/jobs", json=TINY, headers=key).json() for _ in range(3)]
    before = table_counts(Session)
    r = client.post("/v1/jobs", json=TINY, headers=key)
    assert "max_active_jobs" in assert_problem(r, 429, "max_active_jobs_exceeded")["detail"]
    assert r.headers["retry-after"]
    assert table_counts(Session) == before
    assert client.post("/v1/jobs", json=TINY, headers=other).status_code == 202  # per key
    client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=key)
    assert client.post("/v1/jobs", json=TINY, headers=key).status_code == 202  # a final job frees a slot


def test_evaluate_rate_per_key(client, Session, loss):
    """Token bucket: burst 3 at once, then 2/s; another key has its own bucket."""
    key, other = new_key(Session, "read"), new_key(Session, "read")
    body = {"pred": [0.1], "target": [0.0]}
    url = f"/v1/losses/{loss}/evaluate"
    assert [client.post(url, json=body, headers=key).status_code for _ in range(3)] == [200] * 3
    r = client.post(url, json=body, headers=key)
    assert "eval_rate" in assert_problem(r, 429, "eval_rate_exceeded")["detail"]
    assert int(r.headers["retry-after"]) >= 1
    assert client.post(url, json=body, headers=other).status_code == 200


def test_token_bucket_refills_at_the_rate():
    from app.services.limits import RateLimiter

    bucket = RateLimiter(rate=10.0, burst=2)
    assert bucket.take("a") == 0.0 and bucket.take("a") == 0.0
    wait = bucket.take("a")
    assert 0.05 < wait <= 0.1  # one token comes every 0.1 s
    assert bucket.take("b") == 0.0


# -- safe artifacts ---------------------------------------------------------------------------------------
def test_a_tampered_bundle_is_refused_everywhere(client, Session):
    version_id = register_loss(Session, "tampered")
    with Session.begin() as db:
        weights = bytearray(db.get(LossVersion, version_id).weights)
        weights[-1] ^= 0x01  # one bit of one weight
        db.execute(update(LossVersion).where(LossVersion.id == version_id).values(weights=bytes(weights)))
    q = {"pred": "0.1", "target": "0"}
    reader, submitter = new_key(Session, "read"), new_key(Session, "submit")
    before = table_counts(Session)
    for r in (client.get("/v1/losses/tampered/artifact"),
              client.get("/v1/losses/tampered/evaluate", params=q, headers=reader),
              client.get("/v1/losses/tampered/landscape"),
              client.post("/v1/losses/tampered/meta-test", json={}, headers=submitter)):
        body = assert_problem(r, 500, "bundle_corrupt")
        assert "tampered:1" in body["detail"] and "integrity" in body["detail"] and "sha256" in body["detail"]
    assert table_counts(Session) == before


def test_a_bundle_whose_spec_was_rewritten_to_match_is_still_refused(client, Session):
    """Weights and the spec's checksum changed together: the sha256 registered with the version wins."""
    version_id = register_loss(Session, "rewritten")
    with Session.begin() as db:
        v = db.get(LossVersion, version_id)
        b = Bundle(v.weights, v.spec)
        doubled = {k: 2 * t for k, t in b.params().items()}
        forged = Bundle.build(doubled, b.loss_spec(), b.spec["task"], {}, {})
        db.execute(update(LossVersion).where(LossVersion.id == version_id)
                   .values(weights=forged.weights, spec=forged.spec))
    assert_problem(client.get("/v1/losses/rewritten/artifact"), 500, "bundle_corrupt")


def test_a_tampered_zip_is_refused_by_the_loader(client, loss):
    data = client.get(f"/v1/losses/{loss}/artifact").content
    files = {n: zipfile.ZipFile(io.BytesIO(data)).read(n) for n in ("loss.safetensors", "loss.json")}
    weights = bytearray(files["loss.safetensors"])
    weights[-1] ^= 0x01
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("loss.safetensors", bytes(weights))
        zf.writestr("loss.json", files["loss.json"])
    assert load_loss(data) is not None
    with pytest.raises(LossBundleError, match="sha256"):
        load_loss(buf.getvalue())


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal",
                  "jsonpickle"}
UNSAFE_CALLS = {"torch.load", "torch.jit.load", "torch.package.PackageImporter", "torch.serialization.load"}


def unsafe_uses(source: str) -> list[str]:
    """Imports of pickle-like modules, loaders that unpickle, and 'pickle' as a serializer name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(node.module)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in UNSAFE_CALLS:
                found.append(name)
            off = [k for k in node.keywords if k.arg == "allow_pickle"
                   and not (isinstance(k.value, ast.Constant) and k.value.value is False)]
            found += [f"{name}(allow_pickle=...)" for _ in off]  # numpy refuses pickles unless told
        elif isinstance(node, ast.Constant) and node.value in ("pickle", "application/x-python-serialize"):
            found.append(repr(node.value))
    return found


def test_the_scan_finds_unpickling():
    bad = ("import pickle\nfrom dill import loads\nimport torch\ntorch.load('x')\n"
           "np.load(f, allow_pickle=True)\nnp.load(f, allow_pickle=False)\n"
           "conf = {'accept_content': ['pickle']}")
    assert sorted(unsafe_uses(bad)) == ["'pickle'", "dill", "np.load(allow_pickle=...)", "pickle",
                                        "torch.load"]


def test_nothing_in_the_project_ever_unpickles():
    dirs = ("app", "ml3core", "worker", "bench", "examples", "migrations")
    files = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    found = {str(p.relative_to(ROOT)): u for p in files if (u := unsafe_uses(p.read_text()))}
    assert found == {}


def test_jobs_are_recorded_with_their_key(client, Session):
    headers = new_key(Session, "submit")
    job = client.post("/v1/jobs", json=TINY, headers=headers).json()
    with Session() as db:
        key_id = db.get(Job, job["id"]).api_key_id
        assert db.get(security.ApiKey, key_id).hash == security.digest(headers["Authorization"][7:])
