"""The registry's search and descriptions: ``GET /v1/losses?family=&q=&tag=``, ``PATCH /v1/losses/{id}``
(a version's markdown description), the family column filled at registration and by migration 0005,
and the environment versions a bundle records, as the API shows them."""

import json

import pytest
import torch
from conftest import assert_problem, migrate, register_loss, table_counts, wire_cli
from sqlalchemy import text

from app.core.config import Settings
from app.services import registry
from ml3core.artifact import Bundle
from ml3core.losses import LossSpec, init_loss_params


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("registry_search"), runner="none")


def register(Session, name: str, family: str) -> None:
    spec = LossSpec(pred_dim=1, x_dim=1)
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(0)), spec, {"family": family},
                          {"inner_lr": 1e-3}, {})
    with Session.begin() as db:
        registry.register(db, name, bundle, None, None)


@pytest.fixture(scope="module")
def losses(Session):
    register_loss(Session, "sine-a")  # family sine
    register(Session, "digits-a", "digits")
    register(Session, "sine_b", "sine")
    register(Session, "moved", "sine")
    register(Session, "moved", "digits")  # its latest version is a digits loss
    return ["sine-a", "digits-a", "sine_b", "moved"]


def names(client, **params) -> list[str]:
    r = client.get("/v1/losses", params=params)
    assert r.status_code == 200, r.text
    return [x["name"] for x in r.json()["items"]]


def test_family_filters_by_the_latest_version(client, losses):
    assert names(client) == losses
    assert names(client, family="sine") == ["sine-a", "sine_b"]
    assert names(client, family="digits") == ["digits-a", "moved"]
    assert names(client, family="inverse-dynamics") == []
    items = client.get("/v1/losses", params={"family": "digits"}).json()["items"]
    assert [x["family"] for x in items] == ["digits", "digits"]
    page = client.get("/v1/losses", params={"family": "sine", "limit": 1}).json()  # pages keep the filter
    assert [x["name"] for x in page["items"]] == ["sine-a"] and page["next_cursor"]
    assert names(client, family="sine", cursor=page["next_cursor"]) == ["sine_b"]


def test_an_unknown_family_or_query_parameter_is_422_not_ignored(client, losses):
    body = assert_problem(client.get("/v1/losses", params={"family": "sinus"}), 422)
    assert "sine" in body["detail"]
    body = assert_problem(client.get("/v1/losses", params={"famliy": "sine"}), 422)
    assert "unknown query parameter" in body["detail"]


@pytest.fixture(scope="module")
def tagged(client, losses):
    """Tags on some versions; ``moved``'s are on its first version only, not its latest."""
    for loss_id, key, value in [("sine-a", "stage", "prod"), ("digits-a", "stage", "dev"), ("sine_b", "reviewed", ""),
                                ("digits-a", "note", "a=b"), ("moved:1", "stage", "prod")]:
        assert client.put(f"/v1/losses/{loss_id}/tags/{key}", json={"value": value}).status_code == 200
    return losses


def test_tag_filters_by_the_latest_versions_tags(client, tagged):
    assert names(client, tag="stage") == ["sine-a", "digits-a"]  # not moved: its latest version has no tag
    assert names(client, tag="stage=prod") == ["sine-a"]
    assert names(client, tag="stage=dev", family="sine") == []
    assert names(client, tag="stage", family="digits") == ["digits-a"]
    assert names(client, tag="reviewed") == ["sine_b"] and names(client, tag="reviewed=") == ["sine_b"]
    assert names(client, tag="note=a=b") == ["digits-a"]  # a key holds no "=": the value is the rest
    assert names(client, tag="stage=PROD") == [] and names(client, tag="absent") == []
    page = client.get("/v1/losses", params={"tag": "stage", "limit": 1}).json()  # pages keep the filter
    assert [x["name"] for x in page["items"]] == ["sine-a"]
    assert names(client, tag="stage", cursor=page["next_cursor"]) == ["digits-a"]
    params = client.get("/openapi.json").json()["paths"]["/v1/losses"]["get"]["parameters"]
    [typed] = [p for p in params if p["name"] == "tag"]  # the typed OpenAPI documents it, bounded
    assert typed["schema"]["anyOf"][0]["maxLength"] == 321


def test_a_malformed_tag_is_422_and_changes_nothing(client, Session, tagged):
    before = table_counts(Session)
    for tag in ("", "=prod", "bad key", "k" * 65, "stage=" + "v" * 257, "x" * 322):
        body = assert_problem(client.get("/v1/losses", params={"tag": tag}), 422)
        assert "tag" in json.dumps(body), body
    assert_problem(client.get("/v1/losses", params=[("tag", "stage"), ("tag", "reviewed")]), 422)  # one only
    assert table_counts(Session) == before


def test_patch_sets_a_description_that_show_list_and_search_see(client, Session, losses):
    text_md = "# Sine loss\nBeats *tuned* MSE at 10 and 100 steps; 100% of seeds finite."
    r = client.patch("/v1/losses/moved:1", json={"description": text_md})
    assert r.status_code == 200 and r.json()["id"] == "moved:1" and r.json()["description"] == text_md
    assert client.get("/v1/losses/moved:1").json()["description"] == text_md
    assert client.get("/v1/losses/moved").json()["description"] is None  # a version's own: v2 has none
    listed = {x["name"]: x for x in client.get("/v1/losses").json()["items"]}
    assert listed["moved"]["description"] is None  # the list shows the latest version's
    client.patch("/v1/losses/moved", json={"description": "latest: *digits*"})  # a name alone: the latest
    assert client.get("/v1/losses/moved:2").json()["description"] == "latest: *digits*"
    # search: name or the latest version's description, case-insensitive, % and _ literal
    assert names(client, q="DIGITS") == ["digits-a", "moved"]
    assert names(client, q="_") == ["sine_b"] and names(client, q="%") == []
    assert names(client, q="digits", family="sine") == []
    assert client.patch("/v1/losses/moved", json={"description": None}).json()["description"] is None
    assert names(client, q="*digits*") == []


def test_patch_refuses_bad_bodies_and_changes_nothing(client, Session, losses):
    before = table_counts(Session)
    for body in ({}, {"description": 3}, {"description": "x" * 20_001}, {"description": "a\x00b"},
                 {"description": "x", "name": "y"}):
        assert_problem(client.patch("/v1/losses/sine-a", json=body), 422)
    assert_problem(client.patch("/v1/losses/nope", json={"description": "x"}), 404)
    assert table_counts(Session) == before
    assert client.get("/v1/losses/sine-a").json()["description"] is None


def test_a_version_shows_the_versions_that_wrote_its_bundle(client, losses):
    import platform

    import ml3core

    v = client.get("/v1/losses/sine-a").json()
    assert v["versions"] == {"torch": torch.__version__, "ml3": ml3core.__version__,
                             "python": platform.python_version()}
    assert client.get("/openapi.json").json()["components"]["schemas"]["LossPatch"]["properties"]["description"]


def test_migration_0005_fills_the_family_of_stored_versions(tmp_path):
    """Versions stored before the column get their family from their loss.json; a row whose loss.json
    does not parse gets none; downgrade and upgrade again work."""
    from app.db.session import get_engine

    url = f"sqlite:///{tmp_path / 'ml3.db'}"
    migrate(url, "upgrade", "0004")
    rows = [(1, json.dumps({"task_family": "sine", "task": {"family": "sine"}})), (2, "{not json"),
            (3, json.dumps({"task": {}}))]
    with get_engine(url).begin() as conn:
        conn.execute(text("INSERT INTO losses (id, name, created_at) VALUES (1, 'old', '2020-01-01')"))
        for version, spec in rows:
            conn.execute(text("INSERT INTO loss_versions (id, loss_id, version, sha256, weights, spec, status, "
                              "created_at) VALUES (:v, 1, :v, 'x', x'00', :spec, 'ready', '2020-01-01')"),
                         {"v": version, "spec": spec})
    migrate(url, "upgrade", "head")
    with get_engine(url).connect() as conn:
        got = conn.execute(text("SELECT version, family, description FROM loss_versions ORDER BY version")).all()
    assert [tuple(r) for r in got] == [(1, "sine", None), (2, None, None), (3, None, None)]
    migrate(url, "downgrade", "0004")
    migrate(url, "upgrade", "head")
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT family FROM loss_versions WHERE version = 1")).scalar() == "sine"


def test_cli_losses_list_filters_and_describe(client, tagged, monkeypatch, capsys):
    from app.cli import main

    wire_cli(monkeypatch, client)
    assert main(["losses", "describe", "digits-a", "for *digit* classifiers"]) == 0
    assert capsys.readouterr().out.strip() == "digits-a:1: description set"
    assert main(["losses", "list", "--family", "digits"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "FAMILY", "ALIASES", "VERDICT"]
    assert [line.split()[:3] for line in lines[1:]] == [["digits-a", "1", "digits"], ["moved", "2", "digits"]]
    assert main(["losses", "list", "--tag", "stage=dev", "--json"]) == 0
    assert [x["name"] for x in json.loads(capsys.readouterr().out)] == ["digits-a"]
    assert main(["losses", "list", "--q", "classifier", "--json"]) == 0
    [only] = json.loads(capsys.readouterr().out)
    assert only["name"] == "digits-a" and only["description"] == "for *digit* classifiers"
    assert main(["losses", "describe", "digits-a", ""]) == 0
    assert "description removed" in capsys.readouterr().out
