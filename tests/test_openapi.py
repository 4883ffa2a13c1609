"""The OpenAPI document types every answer: each 2xx JSON response has a schema with properties (no bare
``{}`` or free object) and an example, and each operation lists the errors it can return, no others.
(tests/test_fuzz.py validates real answers against these schemas.)"""

import pytest

from app.core.config import Settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("openapi"), runner="none")


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def typed(doc: dict, schema: dict) -> bool:
    """An object names its properties (extra ones may be allowed beside them); an array types its items."""
    schema = resolve(doc, schema)
    if "anyOf" in schema:
        return all(typed(doc, s) for s in schema["anyOf"])
    if schema.get("type") == "object":
        return bool(schema.get("properties"))
    if schema.get("type") == "array":
        return typed(doc, schema.get("items", {}))
    return schema.get("type") in ("string", "number", "integer", "boolean", "null")


def operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_every_2xx_json_answer_has_a_typed_schema_and_an_example(doc):
    checked = 0
    for method, path, op in operations(doc):
        for status, answer in op["responses"].items():
            content = answer.get("content", {}).get("application/json")
            if not status.startswith("2") or content is None:
                continue
            schema = content.get("schema") or {}
            assert typed(doc, schema), (method, path, status, schema)
            assert content.get("example") or resolve(doc, schema).get("examples"), (method, path, "no example")
            checked += 1
    assert checked >= 20


def test_a_free_object_or_an_empty_schema_counts_as_untyped(doc):
    assert not typed(doc, {}) and not typed(doc, {"type": "object", "additionalProperties": True})
    assert typed(doc, {"$ref": "#/components/schemas/JobPage"})


def errors(doc, method: str, path: str) -> set[str]:
    op = doc["paths"][path][method.lower()]
    return {s for s in op["responses"] if s[0] in "45"}


def test_each_operation_lists_the_errors_it_can_return(doc):
    assert errors(doc, "GET", "/healthz") == set()  # nothing to get wrong, no key
    assert errors(doc, "GET", "/readyz") == {"503"}
    assert errors(doc, "GET", "/metrics") == {"401"}
    assert errors(doc, "GET", "/v1/jobs") == {"401", "422"}  # a read: no 403; no path resource: no 404
    assert errors(doc, "POST", "/v1/jobs") == {"401", "403", "409", "413", "422", "429"}
    assert errors(doc, "POST", "/v1/losses/{loss_id}/evaluate") == {"401", "404", "413", "422", "429"}
    assert errors(doc, "DELETE", "/v1/datasets/{dataset_id}") == {"401", "403", "404", "409", "422"}
    assert errors(doc, "GET", "/v1/losses/{loss_id}/export") == {"401", "404", "422", "501"}
    for method, path, op in operations(doc):
        scope = op.get("security", [{}])[-1].get("HTTPBearer", ["read"])[0]
        assert ("403" in errors(doc, method, path)) == (scope != "read"), (method, path)
        for status, answer in op["responses"].items():
            if status[0] in "45" and method != "HEAD":
                assert answer["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)
    assert "ML3_MAX_BODY_BYTES" in doc["info"]["description"]  # the refusals of every request, said once


def test_files_and_streams_are_documented_as_such(doc):
    assert doc["paths"]["/v1/jobs/{job_id}/figures/{name}"]["get"]["responses"]["200"]["content"] == {
        "image/png": {"schema": {"type": "string", "format": "binary"}}}
    assert "text/event-stream" in doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "content" not in doc["paths"]["/v1/jobs/{job_id}/report"]["head"]["responses"]["200"]
