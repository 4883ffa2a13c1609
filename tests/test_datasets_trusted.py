"""Users' own noisy data (issue 23): a data set's ``trusted`` column (CSV) or array (NPZ) of 0/1 marks
the rows the meta-objective and the meta-test score on (each task's held-out side); the inner steps
train on the rest, and the meta-test also tunes the robust baselines. Bad markers are a 422 that
stores nothing. And the weighted_ce form through the service: evaluate, landscape, meta-test."""

import io

import numpy as np
import pytest
import torch
from conftest import assert_problem, table_counts

from app.core.config import Settings
from app.jobs.execute import run_job
from app.services import datasets as service
from ml3core import load_loss
from ml3core.tasks import make_family

JOB = {"seeds": 1, "outer_iterations": 4, "inner_steps": 2, "eval_every": 2, "eval_steps": 5, "validation_tasks": 2,
       "validation_horizons": [5], "meta_test": {"tasks": 2, "steps": 5, "horizons": [5]}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("datasets-trusted"), runner="none", dataset_max_bytes=200_000)


def noisy_csv(tasks=8, rows=20, trusted_every=4, marker=None, untrusted_task=None, all_trusted_task=None,
              classification=False) -> bytes:
    """Rows y = a_t·u + v; every ``trusted_every``-th row is trusted and clean, the others have a third
    of their targets (labels) corrupted. marker(i, j) overrides the marker text of row j of task i."""
    rng = np.random.default_rng(0)
    lines = ["task,u,v,trusted," + ("label" if classification else "y")]
    for t in range(tasks):
        a = rng.normal()
        for j in range(rows):
            u, v = rng.normal(size=2)
            trusted = j % trusted_every == 0
            if t == untrusted_task:
                trusted = False
            if t == all_trusted_task:
                trusted = True
            mark = marker(t, j) if marker else str(int(trusted))
            if classification:
                label = int(u + v > 0) if trusted or rng.random() > 0.3 else int(rng.integers(2))
                lines.append(f"t{t},{u:.4f},{v:.4f},{mark},{label}")
            else:
                y = a * u + v + (0 if trusted or rng.random() > 0.3 else rng.normal() * 20)
                lines.append(f"t{t},{u:.4f},{v:.4f},{mark},{y:.4f}")
    return ("\n".join(lines) + "\n").encode()


def upload(client, body: bytes, fmt="csv", **params):
    return client.post("/v1/datasets", content=body, params={"format": fmt, **params})


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stored_files(settings) -> list[str]:
    return sorted(str(p.relative_to(settings.data_dir)) for p in settings.data_dir.rglob("*") if p.is_file())


def test_trusted_rows_are_the_heldout_side_and_count_as_noisy(client, settings):
    r = upload(client, noisy_csv(), name="noisy")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["inputs"] == ["u", "v"] and ds["outputs"] == ["y"]  # the marker is neither input nor output
    assert ds["trusted_rows"] == 8 * 5 and set(ds["task_trusted_rows"].values()) == {5}
    assert client.get(f"/v1/datasets/{ds['id']}").json()["trusted_rows"] == 40
    data = service.load(settings.db_url, ds["id"])
    family = make_family({"family": "dataset", "dataset": ds["id"]})
    for t in range(len(data.names)):  # the held-out rows are exactly the trusted rows, the train rows the rest
        train, heldout = family.rows_of(t)
        assert bool(data.trusted[heldout].all()) and not bool(data.trusted[train].any())
        assert len(train) + len(heldout) == 20
    assert family.noisy and {b.loss for b in family.robust_baselines()} >= {"huber", "l1"}
    loss = family.loss_defaults_for(None)
    assert "abs_error" in loss["inputs"]  # the noisy default: the weight can read each point's error size
    # a meta-train and meta-test on it: the report judges against the best tuned baseline
    job = client.post("/v1/jobs", json={"task": {"family": "dataset", "dataset": ds["id"], "points": 8,
                                                 "heldout_points": 5}, **JOB, "register_as": "noisy-loss"})
    assert job.status_code == 202, job.text
    assert run_job(job.json()["id"], "runner-a", settings) == "succeeded"
    report = client.get(f"/v1/jobs/{job.json()['id']}/report").json()
    assert report["data"]["heldout"] == "trusted rows"
    row = report["meta_test"]["horizon"][-1]
    assert "ratio_vs_best" in row and row["best_baseline"]


def test_meta_objective_train_is_refused_with_trusted_rows(client, Session):
    ds = upload(client, noisy_csv(), name="noisy2").json()
    before = table_counts(Session)
    r = client.post("/v1/jobs", json={"task": {"family": "dataset", "dataset": ds["id"], "meta_objective": "train"},
                                      **JOB})
    assert "trusted" in assert_problem(r, 422)["detail"]
    assert table_counts(Session) == before


def test_classification_npz_with_a_trusted_array(client, settings):
    rng = np.random.default_rng(1)
    n = 8 * 12
    x = rng.normal(size=(n, 3))
    trusted = np.tile(np.arange(12) < 4, 8).astype(np.int64)
    r = upload(client, npz(x=x, y=np.tile(np.arange(3), n // 3), task=np.repeat(np.arange(8), 12), trusted=trusted),
               fmt="npz", task_type="classification")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["trusted_rows"] == 32 and ds["classes"] == ["0", "1", "2"]
    family = make_family({"family": "dataset", "dataset": ds["id"]})
    assert family.classification and {b.loss for b in family.robust_baselines()} >= {"gce"}
    assert family.loss_defaults_for("weighted_ce")["form"] == "weighted_ce"


def test_no_marker_column_is_as_before(client, settings):
    body = b"\n".join(line.rsplit(b",", 2)[0] + b"," + line.rsplit(b",", 1)[1]
                      for line in noisy_csv().splitlines()) + b"\n"  # the same rows without the trusted column
    assert body.startswith(b"task,u,v,y\n")
    ds = upload(client, body).json()
    assert "trusted_rows" not in ds
    family = make_family({"family": "dataset", "dataset": ds["id"]})
    assert not family.noisy and family.robust_baselines() == []


BAD = [
    ("a marker of 2", noisy_csv(marker=lambda t, j: "2" if (t, j) == (3, 7) else str(int(j % 4 == 0))), "csv", {},
     "line"),
    ("a marker of yes", noisy_csv(marker=lambda t, j: "yes" if (t, j) == (0, 1) else str(int(j % 4 == 0))), "csv",
     {}, "0 or 1"),
    ("an empty marker", noisy_csv(marker=lambda t, j: "" if (t, j) == (5, 2) else str(int(j % 4 == 0))), "csv", {},
     "0 or 1"),
    ("a task with no trusted row", noisy_csv(untrusted_task=2), "csv", {}, "no trusted row"),
    ("a task of trusted rows only", noisy_csv(all_trusted_task=6), "csv", {}, "only trusted rows"),
    ("every row trusted", noisy_csv(trusted_every=1), "csv", {}, "every row is trusted"),
    ("no row trusted (classification)", noisy_csv(marker=lambda t, j: "0", classification=True), "csv",
     {"task_type": "classification"}, "no trusted row"),
    ("the marker named as an input", noisy_csv(), "csv", {"inputs": "u,trusted"}, "marks trusted rows"),
    ("an NPZ marker of 0.5", npz(x=np.zeros((48, 2)), y=np.zeros(48), task=np.repeat(np.arange(8), 6),
                                 trusted=np.tile([0.5, 1, 0, 0, 0, 0], 8)), "npz", {}, "0 or 1"),
    ("an NPZ marker of the wrong shape", npz(x=np.zeros((48, 2)), y=np.zeros(48), task=np.repeat(np.arange(8), 6),
                                             trusted=np.ones((48, 2))), "npz", {}, "one 0/1 marker per row"),
    ("an NPZ task with no trusted row", npz(x=np.zeros((48, 2)), y=np.zeros(48), task=np.repeat(np.arange(8), 6),
                                            trusted=np.r_[np.zeros(6), np.tile([1, 0, 0], 14)]), "npz", {},
     "no trusted row"),
]


@pytest.mark.parametrize("what,body,fmt,params,says", BAD, ids=[b[0] for b in BAD])
def test_bad_markers_are_4xx_and_store_nothing(client, Session, settings, what, body, fmt, params, says):
    before, files = table_counts(Session), stored_files(settings)
    problem = assert_problem(upload(client, body, fmt=fmt, **params), 422, "invalid_dataset")
    assert says in problem["detail"], problem
    assert table_counts(Session) == before and stored_files(settings) == files


# -- the weighted_ce form through the service ---------------------------------------------------------
def register_weighted_ce(Session, name: str) -> None:
    """A random weighted_ce loss of the digits family, registered as the runner would."""
    from app.services import registry
    from ml3core.artifact import Bundle
    from ml3core.losses import LossSpec, init_loss_params

    spec = LossSpec(form="weighted_ce", inputs=["ce", "target_prob"], hidden=[8], activation="tanh", bias=True,
                    output="softplus")
    bundle = Bundle.build(init_loss_params(spec, torch.Generator().manual_seed(0)), spec,
                          {"family": "digits", "classes_per_task": 2, "heldout_per_class": 10}, {"inner_lr": 0.1}, {})
    with Session.begin() as db:
        registry.register(db, name, bundle, None, None)


@pytest.fixture(scope="module")
def weighted(Session):
    register_weighted_ce(Session, "wce")
    return "wce"


def test_a_weighted_ce_loss_evaluates_like_the_downloaded_one(client, weighted):
    local = load_loss(client.get(f"/v1/losses/{weighted}/artifact").content)
    assert local.arch["form"] == "weighted_ce"
    logits, labels = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 1.0]]), torch.tensor([0, 2])
    got = client.get(f"/v1/losses/{weighted}/evaluate", params={"logits": "2,0.1,-1;0.3,0.2,1", "labels": "0,2"})
    assert got.status_code == 200, got.text
    assert got.json()["loss"] == pytest.approx(float(local(logits, labels)), rel=1e-6)
    p = logits.clone().requires_grad_()
    per = local(p, labels, reduction="none")
    (grad,) = torch.autograd.grad(per.sum(), p)
    body = {"logits": logits.tolist(), "labels": labels.tolist(), "reduction": "none", "return_grad": True}
    got = client.post(f"/v1/losses/{weighted}/evaluate", json=body).json()
    assert got["loss"] == pytest.approx(per.tolist(), rel=1e-6)
    assert torch.tensor(got["grad"]).flatten().tolist() == pytest.approx(grad.flatten().tolist(), rel=1e-5, abs=1e-8)
    wrong = client.post(f"/v1/losses/{weighted}/evaluate", json={"pred": [1.0], "target": [0.0]})
    assert_problem(wrong, 422)  # a classification loss takes logits and labels


def test_a_weighted_ce_loss_draws_its_landscape(client, weighted):
    data = client.get(f"/v1/losses/{weighted}/landscape", params={"classes": 4, "points": 9}).json()
    assert data["kind"] == "margin" and len(data["grid"]) == 9
    assert set(data["curves"]) == {"learned, C=4", "cross-entropy, C=4"}
    png = client.get(f"/v1/losses/{weighted}/landscape", params={"format": "png"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_a_weighted_ce_landscape_too_large_is_413(client, weighted):
    r = client.get(f"/v1/losses/{weighted}/landscape", params={"classes": 1000, "points": 10_000})
    assert_problem(r, 413)


def test_a_weighted_ce_loss_meta_tests(client, weighted, settings):
    r = client.post(f"/v1/losses/{weighted}/meta-test", json={"tasks": 1, "steps": 3, "horizons": [3]})
    assert r.status_code == 202, r.text
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    report = client.get(f"/v1/jobs/{r.json()['id']}/report").json()
    assert report["horizon"][-1]["steps"] == 3 and "error_heldout" in report["curves"]["learned"]


@pytest.mark.integration
def test_trusted_rows_on_postgresql(tmp_path):
    """On PostgreSQL too: a data set with trusted rows stores and loads its markers; bad ones store nothing."""
    from conftest import postgres_database
    from fastapi.testclient import TestClient

    from app.db.session import get_sessionmaker
    from app.main import create_app

    with postgres_database("ml3_trusted") as url:
        settings = Settings(data_dir=tmp_path, database_url=url, runner="none")
        with TestClient(create_app(settings)) as c:
            ds = upload(c, noisy_csv()).json()
            assert ds["trusted_rows"] == 40
            assert int(service.load(url, ds["id"]).trusted.sum()) == 40
            Session = get_sessionmaker(url)
            before, files = table_counts(Session), stored_files(settings)
            for body in (noisy_csv(untrusted_task=1), noisy_csv(trusted_every=1)):
                assert_problem(upload(c, body), 422, "invalid_dataset")
            assert table_counts(Session) == before and stored_files(settings) == files
