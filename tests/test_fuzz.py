"""Schemathesis against the app's own OpenAPI document, in process (ASGI): for every operation,
generated requests (valid and invalid) must get no 5xx, a documented status and content type, and
a body that matches the documented schema: every success body against its typed response model, every
error against Problem. Bounded: a few dozen examples per operation.

Keys are required (ML3_AUTH=on, reads too) and an admin key is sent, so requests get past the
auth check into the routes; a registered loss, a job and a data set give the routes something to find."""

import pytest
import schemathesis
from conftest import new_key, register_loss
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.db.session import get_sessionmaker
from app.main import create_app

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# a job's event stream stays open until the job ends, and no runner runs here: tested in test_api
SKIP = {("GET", "/v1/jobs/{job_id}/events")}
EXAMPLES = 20  # per operation and mode: about a minute in all on two cores


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), runner="none", auth="on", auth_reads=True,
                 eval_rate=0, max_seeds=4, max_outer_iterations=50, max_tasks=10, max_steps=5000)
    app = create_app(s)
    with TestClient(app) as c:  # runs the migrations
        Session = get_sessionmaker(s.db_url)
        register_loss(Session, "fuzz")
        headers = new_key(Session, "admin")
        job = c.post("/v1/jobs", json={"task": {"family": "sine"}, "seeds": 1, "outer_iterations": 2},
                     headers=headers)
        assert job.status_code == 202, job.text
        rows = "".join(f"t{t},{i},{i * t}\n" for t in range(3) for i in range(4))
        dataset = c.post("/v1/datasets?name=fuzz", content="task,x,y\n" + rows, headers={
            **headers, "Content-Type": "text/csv"})
        assert dataset.status_code == 201, dataset.text
    app.state.fuzz_headers = headers
    return app


def fuzz(operation, mode: GenerationMode, headers: dict, known: dict | None) -> None:
    path_parameters = {p.name: known[p.name] for p in operation.path_parameters if p.name in known}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


# random path parameters mostly meet 404s; with ones that exist, the bodies and queries reach the work
KNOWN = {"loss_id": "fuzz:1", "name": "fuzz", "job_id": 1, "dataset_id": 1}


@pytest.mark.parametrize("mode,known", [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None),
                                        (GenerationMode.POSITIVE, KNOWN), (GenerationMode.NEGATIVE, KNOWN)],
                         ids=["positive", "negative", "positive-existing", "negative-existing"])
def test_no_server_error_and_every_answer_matches_the_schema(served, mode, known):
    schema = schemathesis.openapi.from_asgi("/openapi.json", served)
    headers = served.state.fuzz_headers
    failures, tested = {}, 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        if known and not any(p.name in known for p in operation.path_parameters):
            continue  # the same as without known values
        tested += 1
        try:
            fuzz(operation, mode, headers, known or {})
        except Unsatisfiable:  # nothing to get wrong: an operation without inputs, in negative mode
            continue
        except Exception as e:  # every operation runs; the report lists each one that failed
            failures[operation.label] = f"{type(e).__name__}: {e}"[:3000]
    assert tested >= (12 if known else 20)
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())


BIG = 2**63  # over any INTEGER column: these once reached the database and came back as 500s
OUT_OF_RANGE = [("GET", f"/v1/jobs/{BIG}", None), ("GET", f"/v1/jobs/{2**40}/metrics", None),
                ("POST", f"/v1/jobs/{BIG}/cancel", None), ("GET", f"/v1/jobs/{BIG}/events", None),
                ("GET", f"/v1/jobs/1/events?after={BIG}", None), ("GET", f"/v1/losses/fuzz:{BIG}", None),
                ("GET", f"/v1/losses/fuzz:{BIG}/evaluate?pred=1&target=1", None),
                ("GET", f"/v1/datasets/{BIG}", None),
                ("GET", "/v1/jobs?cursor=OTIyMzM3MjAzNjg1NDc3NTgwOA==", None),  # base64 of 2**63
                ("PUT", "/v1/losses/fuzz/aliases/a", {"version": BIG})]


@pytest.mark.parametrize("method,url,body", OUT_OF_RANGE)
def test_numbers_beyond_the_database_are_a_4xx(served, method, url, body):
    with TestClient(served, raise_server_exceptions=False) as c:
        r = c.request(method, url, json=body, headers=served.state.fuzz_headers)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
