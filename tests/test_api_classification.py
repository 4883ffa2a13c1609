"""A digits job through the REST API (run by ``app.jobs.execute.run_job``, the one execution path), then
its classification loss served: evaluate with logits and labels, landscape, meta-test, bad bodies."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_problem, register_loss, table_counts

from app.core.config import Settings
from app.jobs.execute import run_job
from ml3core import load_loss

DIGITS = {"task": {"family": "digits", "classes_per_task": 2, "heldout_per_class": 10}, "seeds": 2,
          "outer_iterations": 4, "inner_steps": 2, "tasks_per_batch": 2, "eval_every": 2, "eval_steps": 5,
          "validation_tasks": 2, "meta_test": {"steps": 5, "tasks": 2, "horizons": [5, 10]}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("api-cls"), runner="none", checkpoint_every=5,
                    progress_every=2, max_eval_values=5000, max_query_values=100, max_body_bytes=1_000_000)


@pytest.fixture(scope="module")
def trained(client, settings):
    r = client.post("/v1/jobs", json={**DIGITS, "register_as": "digits-loss"})
    assert r.status_code == 202, r.text
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    return client.get(f"/v1/jobs/{r.json()['id']}").json()


def test_digits_job_runs_and_reports_classification_metrics(client, trained):
    assert trained["status"] == "succeeded" and trained["result"]["loss"] == "digits-loss:1"
    report = client.get(f"/v1/jobs/{trained['id']}/report").json()
    assert "error_heldout" in report["validation"]["metric"] and report["validation"]["horizons"]
    final = report["meta_test"]["final"]
    assert set(final["learned"]) == {"error_train", "error_heldout", "ce_train", "ce_heldout"}
    assert all(0 <= e <= 1 for e in final["mse"]["error_heldout"])
    row = report["meta_test"]["horizon"][-1]
    assert set(row["tuned_lr"]) <= set(report["meta_test"]["lr_grid"])
    assert row["tuned"]["error_heldout"] <= row["mse"]["error_heldout"]  # the best lr is at least the same lr
    version = client.get("/v1/losses/digits-loss:1").json()
    assert version["verdict"] == report["verdict"] and version["verdict"].startswith(("beats", "no gain"))
    png = client.get(f"/v1/jobs/{trained['id']}/figures/meta_train.png")
    assert png.content[:4] == b"\x89PNG"


def test_evaluate_logits_and_labels_matches_the_downloaded_loss(client, trained):
    local = load_loss(client.get("/v1/losses/digits-loss/artifact").content)
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 1.0]])
    labels = torch.tensor([0, 2])
    got = client.get("/v1/losses/digits-loss/evaluate", params={"logits": "2,0.1,-1;0.3,0.2,1", "labels": "0,2"})
    assert got.status_code == 200, got.text
    assert got.json()["loss"] == pytest.approx(float(local(logits, labels)), rel=1e-6)
    p = logits.clone().requires_grad_()
    per = local(p, labels, reduction="none")
    (grad,) = torch.autograd.grad(per.sum(), p)
    body = {"logits": logits.tolist(), "labels": labels.tolist(), "reduction": "none", "return_grad": True}
    got = client.post("/v1/losses/digits-loss/evaluate", json=body).json()
    assert got["n"] == 2 and got["loss"] == pytest.approx(per.tolist(), rel=1e-6)
    assert torch.tensor(got["grad"]).flatten().tolist() == pytest.approx(grad.flatten().tolist(), rel=1e-5, abs=1e-8)
    onehot = F.one_hot(labels, 3).float().tolist()
    same = client.post("/v1/losses/digits-loss/evaluate", json={"logits": logits.tolist(), "labels": onehot}).json()
    assert same["loss"] == pytest.approx(float(local(logits, labels)), rel=1e-6)


def test_classification_landscape(client, trained):
    data = client.get("/v1/losses/digits-loss/landscape", params={"classes": 10, "points": 7}).json()
    assert data["kind"] == "margin" and len(data["grid"]) == 7
    assert set(data["curves"]) == {"learned, C=10", "cross-entropy, C=10"}
    png = client.get("/v1/losses/digits-loss/landscape", params={"format": "png"})
    assert png.headers["content-type"] == "image/png"


def test_meta_test_on_four_way_tasks(client, trained, settings):
    r = client.post("/v1/losses/digits-loss/meta-test", json={"task": {"classes_per_task": 4}, "tasks": 1,
                                                               "steps": 3, "horizons": [3]})
    assert r.status_code == 202, r.text
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    report = client.get(f"/v1/jobs/{r.json()['id']}/report").json()
    assert report["final"]["learned"]["error_heldout"][0] <= 1


BAD = [
    ("post", {"json": {"logits": [[1.0, 2.0]], "labels": [2]}}, 422),  # a label unseen among C classes
    ("post", {"json": {"logits": [[1.0, 2.0]], "labels": [-1]}}, 422),
    ("post", {"json": {"logits": [[1.0, 2.0], [0.0, 1.0]], "labels": [0]}}, 422),  # one label for two rows
    ("post", {"json": {"logits": [[1.0], [2.0]], "labels": [0, 0]}}, 422),  # one class
    ("post", {"json": {"logits": [1.0, 2.0], "labels": [0, 1]}}, 422),  # not (N, C)
    ("post", {"content": b'{"logits": [[1.0, NaN]], "labels": [0]}', "headers": {"content-type": "application/json"}},
     422),
    ("post", {"json": {"logits": [[1.0, 2.0]], "labels": [[0.7, 0.7]]}}, 422),  # targets not summing to 1
    ("post", {"json": {"logits": [[1.0, 2.0]]}}, 422),
    ("post", {"json": {"labels": [0]}}, 422),
    ("post", {"json": {"pred": [1.0], "target": [1.0]}}, 422),  # regression inputs to a classifier's loss
    ("post", {"json": {"logits": [[0.5, 0.5]] * 2501, "labels": [0] * 2501}}, 413),
    ("get", {"params": {"logits": "1,2;3", "labels": "0,1"}}, 422),
    ("get", {"params": {"logits": "1,2", "labels": "a"}}, 422),
    ("get", {"params": {"logits": "1,2"}}, 422),
    ("get", {"params": {"logits": ";".join(["1,2"] * 60), "labels": ",".join(["0"] * 60)}}, 413),
]


@pytest.mark.parametrize("method,kwargs,status", BAD, ids=[f"{m} {str(k)[:40]} {s}" for m, k, s in BAD])
def test_bad_classification_evaluate_is_a_problem_and_changes_nothing(client, trained, Session, method, kwargs,
                                                                      status):
    before = table_counts(Session)
    assert_problem(client.request(method.upper(), "/v1/losses/digits-loss/evaluate", **kwargs), status)
    assert table_counts(Session) == before


def test_logits_to_a_regression_loss_is_a_problem(client, Session):
    register_loss(Session, "sine-loss")
    r = client.post("/v1/losses/sine-loss/evaluate", json={"logits": [[1.0, 2.0]], "labels": [0]})
    assert_problem(r, 422)


def test_bad_digits_jobs_are_problems(client, Session):
    before = table_counts(Session)
    for task in ({"family": "digits", "classes_per_task": 1}, {"family": "digits", "classes_per_task": 5},
                 {"family": "digits", "test_classes": [5, 6]}, {"family": "digits", "model": "rnn"}):
        assert_problem(client.post("/v1/jobs", json={**DIGITS, "task": task}), 422)
    assert_problem(client.post("/v1/jobs", json={**DIGITS, "loss": {"form": "weighted_se"}}), 422)
    assert table_counts(Session) == before
