"""Data sets through the service on a temporary SQLite database: upload (CSV multipart, NPZ raw
body), list, show, delete (refused while a job uses it), malformed files (4xx, nothing stored),
and the diabetes example end to end: upload -> meta-train -> meta-test (also on another
optimizee) -> download. Jobs run through ``app.jobs.execute.run_job``, the one execution path."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_problem, migrate, postgres_database, table_counts
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.jobs.execute import run_job
from app.main import create_app
from ml3core import load_loss

EXAMPLE = ROOT / "examples" / "dataset_example.py"
SMALL = {"seeds": 1, "outer_iterations": 6, "inner_steps": 2, "eval_every": 3, "eval_steps": 5,
         "validation_tasks": 4, "meta_test": {"tasks": 4, "steps": 5, "horizons": [5, 10]}}


def example():
    spec = importlib.util.spec_from_file_location("dataset_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("datasets"), runner="none", lease_seconds=5,
                    dataset_max_bytes=200_000, dataset_max_tasks=40)


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("csv") / "diabetes_tasks.csv"
    return Path(example().write_diabetes_csv(str(path))).read_bytes()


@pytest.fixture(scope="module")
def diabetes(client, diabetes_csv) -> dict:
    r = client.post("/v1/datasets", files={"file": ("diabetes_tasks.csv", diabetes_csv, "text/csv")},
                    params={"name": "diabetes"})
    assert r.status_code == 201, r.text
    return r.json()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def tasks_npz(tasks=4, rows=6, x_dim=3, y_dim=2) -> dict:
    rng = np.random.default_rng(0)
    n = tasks * rows
    return {"x": rng.normal(size=(n, x_dim)), "y": rng.normal(size=(n, y_dim)),
            "task": np.repeat([f"group {k}" for k in range(tasks)], rows)}


# -- upload, list, show ---------------------------------------------------------------------------------
def test_csv_upload_summarises_the_tasks(client, diabetes):
    d = diabetes
    assert (d["rows"], d["tasks"], d["x_dim"], d["y_dim"]) == (442, 18, 9, 1)
    assert d["inputs"] == ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"] and d["outputs"] == ["y"]
    assert (d["min_task_rows"], d["max_task_rows"]) == (13, 43)
    assert sum(d["task_rows"].values()) == 442 and d["task_rows"]["sex2 age<30"] == 14
    assert d["stats"]["outputs"]["y"]["mean"] == pytest.approx(152.133, abs=1e-3)  # the data set's known mean
    shown = client.get(f"/v1/datasets/{d['id']}").json()
    assert shown["sha256"] == d["sha256"] and shown["active_jobs"] == []
    assert d["id"] in [item["id"] for item in client.get("/v1/datasets").json()["items"]]


def test_npz_raw_body_with_two_outputs_and_named_columns(client, Session):
    body = npz(**tasks_npz())
    r = client.post("/v1/datasets", content=body, headers={"content-type": "application/x-npz"},
                    params={"inputs": "a,b,c", "outputs": "u,v", "name": "two outputs"})
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["tasks"], d["rows"], d["x_dim"], d["y_dim"]) == (4, 24, 3, 2)
    assert (d["inputs"], d["outputs"], d["format"]) == (["a", "b", "c"], ["u", "v"], "npz")
    assert r.headers["location"] == f"/v1/datasets/{d['id']}"


def test_csv_column_roles_from_parameters(client):
    text = "group,t,volts,temp\n" + "".join(f"g{k},{i},{i * 0.1 + k},{20 + i}\n" for k in range(3) for i in range(5))
    r = client.post("/v1/datasets", content=text, headers={"content-type": "text/csv"},
                    params={"task_column": "group", "outputs": "volts,temp"})
    assert r.status_code == 201, r.text
    assert (r.json()["inputs"], r.json()["outputs"], r.json()["tasks"]) == (["t"], ["volts", "temp"], 3)


CSV_OK = "task,x1,y\n" + "".join(f"t{k},{i},{i * k}\n" for k in range(3) for i in range(4))
MALFORMED = [
    ("empty file", b"", {}, 422),
    ("header only", b"task,x1,y\n", {}, 422),
    ("no task column", CSV_OK.replace("task,", "group,").encode(), {}, 422),
    ("no output column", CSV_OK.replace(",y\n", ",z\n", 1).encode(), {}, 422),
    ("text in a number column", CSV_OK.replace("t1,2,2", "t1,two,2").encode(), {}, 422),
    ("NaN", CSV_OK.replace("t1,2,2", "t1,nan,2").encode(), {}, 422),
    ("infinity", CSV_OK.replace("t1,2,2", "t1,2,inf").encode(), {}, 422),
    ("ragged row", CSV_OK.replace("t1,2,2", "t1,2").encode(), {}, 422),
    ("repeated column", CSV_OK.replace("task,x1,y", "task,y,y").encode(), {}, 422),
    ("not UTF-8", b"task,x1,y\n\xff\xfe,1,2\n", {}, 422),
    ("two tasks", "task,x1,y\n" + "".join(f"t{k},{i},{i}\n" for k in range(2) for i in range(9)), {}, 422),
    ("a task with 2 rows", CSV_OK + "t9,1,1\nt9,2,2\n", {}, 422),
    ("unknown output named", CSV_OK.encode(), {"outputs": "nope"}, 422),
    ("unknown parameter", CSV_OK.encode(), {"colour": "red"}, 422),
    ("too many tasks", "task,x1,y\n" + "".join(f"t{k},{i},{i}\n" for k in range(41) for i in range(4)), {}, 413),
    ("too many bytes", b"task,x1,y\n" + b"t0,1,1\n" * 40_000, {}, 413),
    ("parquet", b"PAR1" + b"\0" * 64, {}, 415),
    ("not a zip", b"PK\x03\x04 broken", {"format": "npz"}, 422),
    ("npz without task", npz(x=np.ones((12, 2)), y=np.ones(12)), {}, 422),
    ("npz object array", npz(**{**tasks_npz(), "x": np.array([[1], "a"] * 12, dtype=object)}), {}, 422),
    ("npz rows differ", npz(**{**tasks_npz(), "y": np.ones(5)}), {}, 422),
    ("npz NaN", npz(**{**tasks_npz(), "x": np.full((24, 3), np.nan)}), {}, 422),
    ("npz 3-D y", npz(**{**tasks_npz(), "y": np.ones((24, 2, 2))}), {}, 422),
    ("npz names do not fit", npz(**tasks_npz()), {"inputs": "a,b"}, 422),
]


@pytest.mark.parametrize("what, body, params, status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_give_4xx_and_store_nothing(client, Session, what, body, params, status):
    before = table_counts(Session)
    r = client.post("/v1/datasets", content=body, params=params,
                    headers={"content-type": "application/octet-stream"})
    assert_problem(r, status)
    r = client.post("/v1/datasets", files={"file": ("upload.bin", body, "application/octet-stream")}, params=params)
    assert_problem(r, status)
    assert table_counts(Session) == before


def test_problem_names_line_and_column(client):
    body = assert_problem(client.post("/v1/datasets", content=CSV_OK.replace("t1,2,2", "t1,2,nan"),
                                      headers={"content-type": "text/csv"}), 422)
    assert body["code"] == "invalid_dataset" and body["errors"][0]["loc"] == "y" and "line 8" in body["detail"]


def test_multipart_without_a_file_field_is_refused(client, Session):
    before = table_counts(Session)
    assert_problem(client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a.csv", b"a", "text/csv")}), 422)
    assert table_counts(Session) == before


# -- jobs on data sets ------------------------------------------------------------------------------------
def test_job_on_a_missing_data_set_is_refused(client, Session):
    before = table_counts(Session)
    for ref in (999_999, "abc"):
        body = assert_problem(client.post("/v1/jobs", json={"task": {"family": "dataset", "dataset": ref}}), 422)
        assert body["errors"][0]["loc"] == "task.dataset"
    assert table_counts(Session) == before


def test_upload_meta_train_meta_test_download_end_to_end(client, settings, diabetes, tmp_path):
    spec = {"task": {"family": "dataset", "dataset": diabetes["id"], "model_hidden": [16]}, **SMALL,
            "register_as": "diabetes"}
    job = client.post("/v1/jobs", json=spec).json()
    assert run_job(job["id"], "runner-a", settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job['id']}").json()
    loss_id = job["result"]["loss"]
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    split = report["data"]["tasks"]
    assert sorted(sum(split.values(), [])) == sorted(diabetes["task_rows"])  # each task in one split
    assert [len(split[s]) for s in ("train", "validation", "test")] == [10, 4, 4]
    assert report["data"]["sha256"] == diabetes["sha256"]
    y_mean = report["data"]["normalization"]["y_mean"][0]
    assert 100 < y_mean < 200 and y_mean != pytest.approx(diabetes["stats"]["outputs"]["y"]["mean"])

    results = {}
    for name, task in (("same", None), ("other", {"model_hidden": [32, 32], "model_activation": "tanh"})):
        body = {"tasks": 4, "steps": 10, "horizons": [10], "seeds": 2, **({"task": task} if task else {})}
        r = client.post(f"/v1/losses/{loss_id}/meta-test", json=body)
        assert r.status_code == 202, r.text
        assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
        results[name] = client.get(f"/v1/jobs/{r.json()['id']}/report").json()
    other = results["other"]
    assert other["optimizee"] == {"meta_train": {"model_hidden": [16], "model_activation": "relu"},
                                  "meta_test": {"model_hidden": [32, 32], "model_activation": "tanh"}, "same": False}
    assert results["same"]["optimizee"]["same"]
    assert other["data"]["tasks"]["test"] == split["test"]
    for report in results.values():
        for name in ("learned", "mse"):
            values = report["final"][name]["mse_heldout"]
            assert len(values) == 2 and all(0 < v < 10 for v in values)

    zip_path = tmp_path / "loss.zip"
    zip_path.write_bytes(client.get(f"/v1/losses/{loss_id}/artifact").content)
    loss = load_loss(str(zip_path))
    import torch

    pred = torch.zeros(5, 1, requires_grad=True)
    value = loss(pred, torch.ones(5, 1))
    value.backward()
    assert value.item() > 0 and pred.grad.abs().sum() > 0  # differentiable w.r.t. the prediction


def test_delete_is_refused_while_a_job_uses_the_data_set(client, settings, Session):
    d = client.post("/v1/datasets", content=npz(**tasks_npz()), params={"format": "npz"}).json()
    spec = {"task": {"family": "dataset", "dataset": d["id"], "model_hidden": [4]}, **SMALL, "register_as": "tiny"}
    job = client.post("/v1/jobs", json=spec).json()
    body = assert_problem(client.delete(f"/v1/datasets/{d['id']}"), 409)
    assert body["code"] == "dataset_in_use" and body["jobs"] == [job["id"]]
    assert client.get(f"/v1/datasets/{d['id']}").json()["active_jobs"] == [job["id"]]
    assert run_job(job["id"], "runner-a", settings) == "succeeded"
    loss_id = client.get(f"/v1/jobs/{job['id']}").json()["result"]["loss"]

    # a queued meta-test of a loss trained on it uses it too
    mt = client.post(f"/v1/losses/{loss_id}/meta-test", json={"tasks": 2, "steps": 2, "horizons": [2]}).json()
    assert assert_problem(client.delete(f"/v1/datasets/{d['id']}"), 409)["jobs"] == [mt["id"]]
    client.post(f"/v1/jobs/{mt['id']}/cancel")

    # a registered loss was meta-trained on it: deleting it needs force, and the answer names the loss
    body = assert_problem(client.delete(f"/v1/datasets/{d['id']}"), 409, "dataset_used_by_losses")
    assert body["losses"] == [loss_id] and loss_id in body["detail"] and "force=true" in body["detail"]
    assert client.get(f"/v1/datasets/{d['id']}").status_code == 200  # nothing changed
    assert client.delete(f"/v1/datasets/{d['id']}", params={"force": "true"}).status_code == 204
    assert_problem(client.get(f"/v1/datasets/{d['id']}"), 404)
    assert_problem(client.delete(f"/v1/datasets/{d['id']}"), 404)
    # the loss stays; a meta-test on the deleted data set is refused; its landscape needs no data
    assert_problem(client.post(f"/v1/losses/{loss_id}/meta-test", json={"tasks": 2}), 422)
    assert client.get(f"/v1/losses/{loss_id}/landscape", params={"points": 5}).status_code == 200
    # ids are never reused, so a stored loss never names someone else's data
    again = client.post("/v1/datasets", content=npz(**tasks_npz()), params={"format": "npz"}).json()
    assert again["id"] > d["id"]
    # and another data set of the same shape meta-tests it
    spec = {"task": {"dataset": again["id"]}, "tasks": 2, "steps": 2, "horizons": [2]}
    mt = client.post(f"/v1/losses/{loss_id}/meta-test", json=spec)
    assert mt.status_code == 202, mt.text
    assert run_job(mt.json()["id"], "runner-a", settings) == "succeeded"


# -- the migration on both databases ------------------------------------------------------------------
def tables(url: str) -> set[str]:
    from sqlalchemy import inspect

    from app.db.session import get_engine

    return set(inspect(get_engine(url)).get_table_names())


def check_database(url: str, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=url, runner="none")
    with TestClient(create_app(settings)) as c:
        d = c.post("/v1/datasets", content=npz(**tasks_npz()), params={"format": "npz"}).json()
        spec = {"task": {"family": "dataset", "dataset": d["id"], "model_hidden": [4]}, **SMALL}
        job = c.post("/v1/jobs", json=spec).json()
        assert run_job(job["id"], "runner-db", settings) == "succeeded"
        assert c.delete(f"/v1/datasets/{d['id']}", params={"force": "true"}).status_code == 204
    migrate(url, "downgrade", "0002")
    assert "datasets" not in tables(url)
    migrate(url, "upgrade", "head")
    assert "datasets" in tables(url)


def test_migration_down_and_up_on_sqlite(tmp_path):
    check_database(f"sqlite:///{tmp_path / 'ml3.db'}", tmp_path)


@pytest.mark.integration
def test_datasets_on_postgresql(tmp_path):
    with postgres_database("ml3_datasets") as url:
        check_database(url, tmp_path)
