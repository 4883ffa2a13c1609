"""Classification data sets through the service (SQLite): upload with ``task_type=classification``
(CSV label column, NPZ labels), strict 4xx checks that store nothing, and a job on the upload that
meta-trains a classification loss. Jobs run through ``app.jobs.execute.run_job``."""

import io

import numpy as np
import pytest
from conftest import assert_problem, table_counts

from app.core.config import Settings
from app.jobs.execute import run_job
from ml3core.tasks.dataset import MAX_CLASSES

JOB = {"seeds": 1, "outer_iterations": 4, "inner_steps": 2, "eval_every": 2, "eval_steps": 5, "validation_tasks": 2,
       "meta_test": {"tasks": 2, "steps": 5, "horizons": [5]}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("datasets-cls"), runner="none", dataset_max_bytes=200_000)


def blobs_csv(tasks=10, rows=30, classes=("cat", "dog", "owl"), label="label", one_class_task=None,
              only_in=None) -> bytes:
    """Gaussian blobs per class, centres moved per task. only_in: (class, task) — that class's rows
    appear in that task alone."""
    rng = np.random.default_rng(0)
    lines = [f"task,u,v,{label}"]
    for t in range(tasks):
        centres = rng.normal(size=(len(classes), 2)) * 2
        for i in range(rows):
            c = 0 if t == one_class_task else i % len(classes)
            if only_in and classes[c] == only_in[0] and t != only_in[1]:
                c = (c + 1) % len(classes)
            u, v = centres[c] + rng.normal(size=2) * 0.6
            lines.append(f"t{t},{u:.4f},{v:.4f},{classes[c]}")
    return ("\n".join(lines) + "\n").encode()


def upload(client, body: bytes, **params):
    return client.post("/v1/datasets", content=body, params={"format": "csv", "task_type": "classification",
                                                             **params})


def test_classification_csv_upload_and_job(client, settings):
    r = upload(client, blobs_csv(), name="blobs")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["task_type"] == "classification" and ds["classes"] == ["cat", "dog", "owl"] and ds["tasks"] == 10
    assert ds["inputs"] == ["u", "v"] and ds["outputs"] == ["label"]
    job = client.post("/v1/jobs", json={"task": {"family": "dataset", "dataset": ds["id"], "points": 12,
                                                 "heldout_points": 12}, **JOB, "register_as": "blobs-loss"})
    assert job.status_code == 202, job.text
    assert run_job(job.json()["id"], "runner-a", settings) == "succeeded"
    report = client.get(f"/v1/jobs/{job.json()['id']}/report").json()
    assert report["data"]["classes"] == ["cat", "dog", "owl"]
    assert report["spec"]["loss"]["form"] == "ce_classwise"
    errors = report["meta_test"]["final"]["learned"]["error_heldout"]
    assert all(0 <= e <= 1 for e in errors)
    got = client.post("/v1/losses/blobs-loss/evaluate", json={"logits": [[1.0, 0.0, -1.0]], "labels": [2]})
    assert got.status_code == 200 and got.json()["loss"] > 0


def test_npz_labels_and_integer_classes(client):
    rng = np.random.default_rng(1)
    n = 8 * 12
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, 3)), y=np.tile(np.arange(3), n // 3), task=np.repeat(np.arange(8), 12))
    r = client.post("/v1/datasets", content=buf.getvalue(), params={"format": "npz", "task_type": "classification"})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == ["0", "1", "2"]


@pytest.mark.parametrize("what,body,params", [
    ("a task with one class", blobs_csv(one_class_task=3), {}),
    ("one class overall", blobs_csv(classes=("only",)), {}),
    ("too many classes", blobs_csv(rows=MAX_CLASSES + 2, classes=tuple(f"c{i}" for i in range(MAX_CLASSES + 1))),
     {}),
    ("no label column", blobs_csv(label="kind"), {}),
    ("two label columns", blobs_csv(), {"outputs": "u,label"}),
    ("unknown task type", blobs_csv(), {"task_type": "ranking"}),
])
def test_bad_classification_uploads_are_4xx_and_store_nothing(client, Session, what, body, params):
    before = table_counts(Session)
    assert_problem(upload(client, body, **params), 422)
    assert table_counts(Session) == before


def test_a_class_unseen_in_meta_training_refuses_the_job(client, Session):
    """'owl' rows exist in one task only; with this split seed that task is not a meta-train task."""
    r = upload(client, blobs_csv(only_in=("owl", 9)), name="owl-once")
    assert r.status_code == 201, r.text
    ds = r.json()
    refused = None
    for seed in range(20):  # a split seed where task t9 is a validation or test task
        task = {"family": "dataset", "dataset": ds["id"], "split_seed": seed}
        before = table_counts(Session)
        resp = client.post("/v1/jobs", json={"task": task, **JOB})
        if resp.status_code == 422:
            refused = assert_problem(resp, 422)
            assert table_counts(Session) == before
            break
        assert resp.status_code == 202, resp.text
    assert refused is not None and "never occur in a meta-train task" in refused["detail"]
