"""Losses judged over the whole training horizon: the persistent schedule, inner optimizers,
publishing by the worst ratio over horizons, and no publishing of an untrained loss."""

import math

import pytest
import torch

from ml3core import Hooks, LossSpec, MetaTrainer, TrainConfig, make_family
from ml3core.api import meta_train
from ml3core.inner import InnerOptimizer

TASK = {"family": "sine", "points": 12, "heldout_points": 6, "model_hidden": [8], "model_activation": "tanh",
        "train_task": "sampled", "meta_objective": "heldout"}
WEIGHT = {"form": "weighted_se", "inputs": ["target", "x"], "hidden": [6], "activation": "tanh", "output": "exp",
          "init": "baseline"}


def trainer(loss=None, dtype="float32", **kw):
    family = make_family(dict(TASK))
    spec = LossSpec.from_dict(dict(loss or WEIGHT), **family.loss_defaults())
    cfg = TrainConfig(**{"seeds": 2, "outer_iterations": 12, "eval_every": 4, "eval_steps": 4, "validation_tasks": 2,
                         "tasks_per_batch": 4, "inner_steps": 2, "schedule": "persistent", "train_horizon": 6,
                         "inner_lr": 0.05, "dtype": dtype, **kw})
    return MetaTrainer(family, spec, cfg)


def test_persistent_models_age_and_restart_at_the_horizon():
    t = trainer()
    pop = t.population
    assert pop["age"].tolist() == [0, 0, 2, 4]  # spread over [0, H = 6), multiples of M = 2
    start = {k: v.clone() for k, v in pop["theta"].items()}
    t.step()
    assert t.population["age"].tolist() == [2, 2, 4, 0]  # the model at 4 reached 6: restarted
    w = "layers.0.weight"
    kept = t.population["theta"][w][:, :3]
    assert not torch.equal(kept, start[w][:, :3])  # trained on: its state persists and moved
    restarted = t.population["theta"][w][:, 3]
    assert not torch.equal(restarted, start[w][:, 3])  # a fresh model, not the old one
    t.step()
    t.step()
    assert t.population["age"].tolist() == [0, 0, 2, 4]  # one lap of H / M iterations


def test_persistent_resume_equals_uninterrupted_run():
    whole = trainer(inner_optimizer="adam")
    full = whole.run()
    saved = []
    first = trainer(inner_optimizer="adam")
    part = first.run(Hooks(should_stop=lambda: first.iteration >= 7, on_checkpoint=saved.append, checkpoint_every=3))
    assert part.stopped and part.iteration == 7
    resumed = trainer(inner_optimizer="adam")
    resumed.load_state(saved[-1])
    rest = resumed.run()
    for k in full.phi:
        assert torch.equal(full.phi[k], rest.phi[k]), k
    for part_name in ("theta", "state", "data"):  # the models, their Adam moments and their tasks
        for k, v in whole.population[part_name].items():
            assert torch.equal(resumed.population[part_name][k], v), (part_name, k)
    assert torch.equal(resumed.population["age"], whole.population["age"])
    assert rest.history == full.history and rest.validation == full.validation


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_meta_gradient_through_momentum_and_adam_matches_finite_differences(name):
    t = trainer(dtype="float64", inner_optimizer=name, inner_lr=0.02, inner_steps=3, schedule="unrolled",
                loss={**WEIGHT, "init": "xavier_uniform"})
    theta0, data = t.sample_batch(3)

    def meta_loss():
        return t.meta_objective(theta0, data)[1]

    grads = torch.autograd.grad(meta_loss().sum(), list(t.phi.values()))
    gen = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in t.phi.values()]
    analytic = sum((g * d).flatten(1).sum(1) for g, d in zip(grads, direction, strict=True))
    shifted = []
    for eps in (1e-6, -1e-6):
        with torch.no_grad():
            for p, d in zip(t.phi.values(), direction, strict=True):
                p.add_(eps * d)
        shifted.append(meta_loss().detach())
        with torch.no_grad():
            for p, d in zip(t.phi.values(), direction, strict=True):
                p.sub_(eps * d)
    numeric = (shifted[0] - shifted[1]) / 2e-6
    assert analytic.abs().min() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_inner_optimizers_match_torch_on_a_quadratic():
    """SGD, heavy-ball momentum and Adam follow torch.optim (Adam with eps inside the root)."""
    target = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    for name, ref in (("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
                      ("momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
                      ("adam", lambda p: torch.optim.Adam(p, lr=0.1, eps=0.0))):
        opt = InnerOptimizer(name, 0.1, eps=0.0)
        theta = {"w": torch.zeros(1, 1, 3, dtype=torch.float64)}
        state = opt.init(theta)
        w = torch.zeros(1, 1, 3, dtype=torch.float64, requires_grad=True)
        torch_opt = ref([w])
        for _ in range(5):
            theta, state = opt.step(theta, {"w": 2 * (theta["w"] - target)}, state)
            torch_opt.zero_grad()
            (w - target).pow(2).sum().backward()
            torch_opt.step()
        torch.testing.assert_close(theta["w"], w.detach(), rtol=1e-12, atol=1e-12)


def test_publishing_picks_the_seed_with_the_best_worst_ratio_against_the_tuned_baseline():
    """Three seeds' losses built by hand: MSE itself (ratio 1 at every horizon at the same lr), MSE x 3
    (a 3x learning rate) and MSE x 3000 (diverges). The published seed has the smallest worst ratio
    against the plain loss at its best lr per horizon, over the horizons up to H."""
    loss = {**WEIGHT, "bias": True}
    t = trainer(loss=loss, seeds=3, schedule="unrolled", train_horizon=100, eval_steps=3, inner_lr=0.01,
                validation_tasks=3)
    last = max(k for k in t.phi if k.endswith(".bias"))
    with torch.no_grad():
        t.phi[last][:, 0] = torch.log(torch.tensor([1.0, 3.0, 3000.0]))
    t.history["baseline"] = t.baseline()
    t._record_eval(None)
    v = t.validate()
    assert v["horizons"] == [10, 100]
    same = [[math.inf if r is None else r for r in v["ratios_same_lr"][str(h)]] for h in v["horizons"]]
    assert [row[0] for row in same] == pytest.approx([1.0, 1.0], abs=1e-6)  # MSE itself at the same lr
    assert max(row[1] for row in same) < 1  # the 3x loss wins at both horizons at the same lr
    tuned = [[math.inf if r is None else r for r in v["ratios"][str(h)]] for h in v["horizons"]]  # (horizon, seed)
    for row, s in zip(tuned, same, strict=True):  # the grid holds the same lr: tuned is at least as good
        assert row[0] >= 1 - 1e-6 and row[1] >= s[1] - 1e-6
    assert max(row[2] for row in tuned) == math.inf  # the 3000x one diverges: infinitely bad
    worst = [math.inf if r is None else r for r in v["worst_ratio"]]
    assert worst == pytest.approx([max(row[i] for row in tuned) for i in range(3)])
    assert v["chosen_index"] == min(range(3), key=lambda i: worst[i]) != 2
    wins = [h for h, row in zip(v["horizons"], tuned, strict=True) if row[v["chosen_index"]] < 1]
    assert v["verdict"] == (f"beats a tuned baseline at {', '.join(map(str, wins))} steps" if wins
                            else "no gain over a tuned baseline")


def test_a_job_with_zero_outer_iterations_publishes_nothing():
    out = meta_train({"task": dict(TASK), "loss": dict(WEIGHT), "seeds": 1, "outer_iterations": 0,
                      "eval_steps": 2, "validation_tasks": 1, "meta_test": {"tasks": 1, "steps": 2, "horizons": [2]}})
    assert not out.stopped and out.bundle is None and out.seed_bundles == []
    assert out.report["published_seed"] is None and "nothing was published" in out.report["warnings"][0]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_checkpointed_unroll_gives_the_same_meta_gradient(name):
    """unroll_checkpoint recomputes segments in the backward pass; the meta-gradient is the same."""
    grads = []
    for k in (0, 3):
        t = trainer(dtype="float64", inner_optimizer=name, inner_steps=7, unroll_checkpoint=k, schedule="unrolled",
                    loss={**WEIGHT, "init": "xavier_uniform"})
        losses = t.meta_objective(*t.sample_batch(2))[1]
        grads.append(torch.autograd.grad(losses.sum(), list(t.phi.values())))
    for a, b in zip(*grads, strict=True):
        assert a.abs().max() > 1e-4  # a real meta-gradient, not zeros agreeing
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_zero_iteration_job_through_the_service_registers_nothing(tmp_path):
    import threading

    from conftest import wait_for
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from app.core.config import Settings
    from app.db.models import LossVersion
    from app.db.session import get_sessionmaker
    from app.jobs.runner import serve
    from app.main import create_app

    settings = Settings(data_dir=tmp_path, runner="none", poll_seconds=0.05, lease_seconds=5)
    spec = {"task": dict(TASK), "loss": dict(WEIGHT), "seeds": 1, "outer_iterations": 0, "eval_steps": 2,
            "validation_tasks": 1, "meta_test": {"tasks": 1, "steps": 2, "horizons": [2]}, "register_as": "untrained"}
    with TestClient(create_app(settings)) as c:
        job_id = c.post("/v1/jobs", json=spec).json()["id"]
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings, stop))
        thread.start()
        try:
            job = wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] == "succeeded" and j, 120,
                           "the job to finish")
        finally:
            stop.set()
            thread.join(60)
        assert job["result"]["loss"] is None and "nothing was published" in job["result"]["warnings"][0]
        assert c.get("/v1/losses/untrained").status_code == 404
    with get_sessionmaker(settings.db_url)() as db:
        assert db.scalar(select(func.count()).select_from(LossVersion)) == 0
