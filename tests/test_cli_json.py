"""``--json`` on every list and show command prints the JSON the server answered; without it a table or
a few lines of summary."""

import json

import pytest
from conftest import TINY, new_key, register_loss, wire_cli

from app.core.config import Settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("cli_json"), runner="none")


@pytest.fixture(scope="module")
def served(client, Session):
    register_loss(Session, "cli-loss")
    assert client.post("/v1/jobs", json=TINY).status_code == 202
    rows = "".join(f"t{t},{i},{i * t}\n" for t in range(3) for i in range(4))
    r = client.post("/v1/datasets?name=cli", content="task,x,y\n" + rows, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    return client


@pytest.fixture
def ml3(served, monkeypatch, capsys):
    from app.cli import main

    wire_cli(monkeypatch, served)

    def run(*argv) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    return run


@pytest.mark.parametrize("argv,url", [
    (["jobs", "list"], "/v1/jobs"), (["jobs", "show", "1"], "/v1/jobs/1"),
    (["losses", "list"], "/v1/losses"), (["losses", "show", "cli-loss"], "/v1/losses/cli-loss"),
    (["datasets", "list"], "/v1/datasets"), (["datasets", "show", "1"], "/v1/datasets/1")])
def test_json_prints_what_the_server_answered(ml3, served, argv, url):
    answer = served.get(url).json()
    assert json.loads(ml3(*argv, "--json")) == answer.get("items", answer)  # a list: its items, all pages
    shown = ml3(*argv)
    with pytest.raises(ValueError):  # the plain output is for people
        json.loads(shown)


def test_the_summaries_say_what_matters(ml3):
    assert ml3("jobs", "show", "1").splitlines()[0] == "job 1 (meta-train): queued, 0/2 iterations"
    lines = ml3("losses", "show", "cli-loss").splitlines()
    assert lines[0].startswith("cli-loss:1: sine loss, form net, ready (sha256 ")
    assert "verdict: - (meta-validation tasks)" in lines
    lines = ml3("datasets", "show", "1").splitlines()
    assert lines[0] == "data set 1 'cli': 3 tasks, 12 rows (4 to 4 per task), regression"
    assert "inputs:  x" in lines and "active jobs: none" in lines


def test_keys_list_json_has_no_token(tmp_path, monkeypatch, capsys):
    from app.cli import main
    from app.core.config import get_settings
    from app.db.session import get_sessionmaker, upgrade

    monkeypatch.setenv("ML3_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ML3_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        url = get_settings().db_url
        upgrade(url)
        token = new_key(get_sessionmaker(url), "read")["Authorization"].split()[1]
        capsys.readouterr()
        assert main(["keys", "list", "--json"]) == 0
        out = capsys.readouterr().out
        [key] = json.loads(out)
        assert key["scope"] == "read" and token.startswith(f"ml3_{key['prefix']}_") and token not in out
        assert key["revoked_at"] is None and key["created_at"]
    finally:
        get_settings.cache_clear()
