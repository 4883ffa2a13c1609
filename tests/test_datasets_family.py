"""The ``dataset`` task family in ml3core alone: splits by task, held-out rows, standardisation on
meta-train tasks only, fixed-size draws from tasks of different sizes, and meta-tests with other
optimizees (for ``sine`` too)."""

import pytest
import torch

from ml3core import ConfigError
from ml3core.api import meta_train, parse_spec, run_meta_test
from ml3core.tasks import make_family
from ml3core.tasks.dataset import TaskData, provide


def toy(tasks=10, x_dim=3, y_dim=2, seed=0) -> TaskData:
    """Linear tasks of 5, 8, 11, ... rows; input column 0 holds the task index (for checks)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, labels = [], [], []
    for k in range(tasks):
        n = 5 + 3 * k
        x = torch.randn(n, x_dim, generator=g, dtype=torch.float64)
        x[:, 0] = k
        xs.append(x)
        ys.append(x[:, 1:] @ torch.randn(x_dim - 1, y_dim, generator=g, dtype=torch.float64) + 3 * k)
        labels += [f"t{k:02d}"] * n
    return TaskData.from_labels(torch.cat(xs), torch.cat(ys), labels)


@pytest.fixture(scope="module", autouse=True)
def provided():
    provide("toy", toy())
    provide("toy-wide", toy(x_dim=5, y_dim=1))


def family(**task):
    f = make_family({"family": "dataset", "dataset": "toy", **task})
    f.resolve()
    return f


def test_split_is_by_task_disjoint_complete_and_seeded():
    f = family()
    tasks = f.describe()["tasks"]
    names = [n for split in ("train", "validation", "test") for n in tasks[split]]
    assert sorted(names) == [f"t{k:02d}" for k in range(10)]  # every task exactly once
    assert [len(tasks[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert family().describe()["tasks"] == tasks
    assert family(split_seed=1).describe()["tasks"] != tasks
    assert [len(v) for v in family(split=[0.5, 0.1, 0.4]).describe()["tasks"].values()] == [5, 1, 4]


def test_draws_come_from_the_split_and_never_mix_heldout_rows():
    f = family(normalize=False, points=7, heldout_points=3)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    raw = f.prepared.data
    index = {f"t{k:02d}": k for k in range(10)}
    for split in ("train", "validation", "test"):
        allowed = {index[n] for n in f.describe()["tasks"][split]}
        d = f.sample_tasks(gens, 5, split)
        assert d["x"].shape == (3, 5, 7, 3) and d["y"].shape == (3, 5, 7, 2)
        assert d["x_heldout"].shape == (3, 5, 3, 3) and d["y_heldout"].shape == (3, 5, 3, 2)
        task_of_draw = d["x"][..., 0]
        assert set(task_of_draw.unique().long().tolist()) <= allowed
        assert (task_of_draw == task_of_draw[..., :1]).all()  # one task per draw
    # held-out rows of a task never appear among its train rows
    for t in range(10):
        train_rows, held_rows = (set(r.tolist()) for r in f.rows_of(t))
        assert not train_rows & held_rows and len(train_rows) + len(held_rows) == int((raw.task == t).sum())


def test_small_tasks_are_drawn_with_replacement_big_ones_without():
    f = family(normalize=False, points=12)
    gens = [torch.Generator().manual_seed(0)]
    d = f.sample_tasks(gens, 200, "train")
    for draw in d["x"][0]:
        k = int(draw[0, 0])
        train_rows = len(f.rows_of(k)[0])
        distinct = len(torch.unique(draw, dim=0))
        if train_rows >= 12:
            assert distinct == 12
        else:
            assert distinct <= train_rows


def test_standardisation_uses_the_meta_train_tasks_only():
    f = family()
    p = f.prepared
    train = torch.cat([torch.cat(f.rows_of(t)) for t in p.tasks["train"]])
    test = torch.cat([torch.cat(f.rows_of(t)) for t in p.tasks["test"]])
    assert torch.allclose(p.y[train].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(p.y[train].std(0, correction=0), torch.ones(2, dtype=torch.float64), atol=1e-9)
    assert p.y[test].mean(0).abs().max() > 0.1  # the test tasks' own statistics were not used
    raw = f.prepared.data.y[train]
    assert f.describe()["normalization"]["y_mean"] == pytest.approx(raw.mean(0).tolist())


def test_loss_is_per_output_and_meta_train_runs_on_two_outputs():
    plan = parse_spec({"task": {"family": "dataset", "dataset": "toy"}})
    # the default: a weight w(target) on each output's squared error, starting as MSE
    assert (plan.loss.form, plan.loss.init, plan.loss.inputs) == ("weighted_se", "baseline", ["target"])
    assert (plan.loss.per_output, plan.loss.pred_dim, plan.loss.x_dim, plan.loss.in_features) == (True, 2, 3, 1)
    net = parse_spec({"task": {"family": "dataset", "dataset": "toy"}, "loss": {"form": "net"}}).loss
    assert (net.per_output, net.in_features) == (True, 2)
    out = meta_train({"task": {"family": "dataset", "dataset": "toy", "model_hidden": [8]}, "seeds": 1,
                      "outer_iterations": 4, "inner_steps": 2, "eval_every": 2, "eval_steps": 3,
                      "validation_tasks": 2, "meta_test": {"tasks": 2, "steps": 3, "horizons": [3]}})
    assert out.report["data"]["tasks"]["test"] == family().describe()["tasks"]["test"]
    for run in out.report["meta_test"]["curves"].values():  # both losses train the two-output models
        curve = run["mse_heldout"][0]
        assert curve[-1] < 0.95 * curve[0], curve  # measured: 0.93 -> 0.81 in 3 steps


def test_heldout_objective_reads_heldout_rows():
    f = family(points=4, heldout_points=4)
    d = {k: v.float() for k, v in f.sample_tasks([torch.Generator().manual_seed(0)], 2, "train").items()}
    theta = f.init_theta([torch.Generator().manual_seed(1)], 2)
    on_heldout = f.task_loss(theta, d)
    assert torch.allclose(on_heldout, f.metrics(theta, d)["mse_heldout"])
    assert torch.allclose(family(meta_objective="train").task_loss(theta, d), f.metrics(theta, d)["mse_train"])


@pytest.mark.parametrize("task, loc", [
    ({"dataset": ""}, "task.dataset"),
    ({"dataset": "nope"}, "task.dataset"),
    ({"split": [0.5, 0.5]}, "task.split"),
    ({"split": [0.5, 0.3, 0.3]}, "task.split"),
    ({"heldout_fraction": 1.0}, "task.heldout_fraction"),
    ({"model_activation": "cosine"}, "task.model_activation"),
    ({"meta_objective": "test"}, "task.meta_objective"),
])
def test_bad_configs_name_the_field(task, loc):
    with pytest.raises(ConfigError) as e:
        parse_spec({"task": {"family": "dataset", "dataset": "toy", **task}})
    assert e.value.loc == loc


def test_task_data_round_trip_and_checks():
    d = toy()
    blob = d.to_bytes()
    back = TaskData.from_bytes(blob)
    assert back.names == d.names and torch.equal(back.x, d.x) and back.sha256() == d.sha256()
    assert blob == toy().to_bytes()  # deterministic bytes: the sha256 names the content
    x = d.x.clone()
    x[7, 1] = float("nan")
    with pytest.raises(ConfigError, match="row 7, column 'x2'"):
        TaskData(x, d.y, d.task, d.names, d.inputs, d.outputs)
    with pytest.raises(ConfigError):
        TaskData.from_bytes(b"not a task file")


def bundle_of(spec):
    return meta_train({"seeds": 1, "outer_iterations": 3, "eval_every": 3, "eval_steps": 2, "validation_tasks": 2,
                       "meta_test": {"tasks": 2, "steps": 2, "horizons": [2]}, **spec}).bundle


def test_cross_architecture_meta_test_reports_both_optimizees_dataset():
    b = bundle_of({"task": {"family": "dataset", "dataset": "toy", "model_hidden": [8]}})
    same, _ = run_meta_test(b, {"tasks": 3, "steps": 5, "horizons": [5]})
    other, _ = run_meta_test(b, {"task": {"model_hidden": [16, 16], "model_activation": "tanh"}, "tasks": 3,
                                 "steps": 5, "horizons": [5]})
    assert same["optimizee"]["same"] and not other["optimizee"]["same"]
    assert other["optimizee"]["meta_train"] == {"model_hidden": [8], "model_activation": "relu"}
    assert other["optimizee"]["meta_test"] == {"model_hidden": [16, 16], "model_activation": "tanh"}
    for report in (same, other):
        assert set(report["final"]) == {"learned", "mse"}
    # a different optimizee really ran: the untrained models already differ
    assert other["curves"]["mse"]["mse_heldout"][0][0] != same["curves"]["mse"]["mse_heldout"][0][0]


def test_cross_architecture_meta_test_on_sine():
    b = bundle_of({"task": {"family": "sine", "points": 10, "heldout_points": 10, "model_hidden": [20, 10]}})
    r, figures = run_meta_test(b, {"task": {"model_hidden": [32], "model_activation": "tanh"}, "tasks": 3,
                                   "steps": 5, "horizons": [5]})
    assert r["optimizee"]["meta_train"] == {"model_hidden": [20, 10], "model_activation": "relu"}
    assert r["optimizee"]["meta_test"] == {"model_hidden": [32], "model_activation": "tanh"}
    for run in r["curves"].values():  # the other optimizee trains under both losses
        curve = run["mse_heldout"][0]
        assert curve[-1] < 0.95 * curve[0], curve  # measured: 0.84 -> 0.75 in 5 steps
    assert figures["meta_test.png"][:4] == b"\x89PNG"


def test_meta_test_on_tasks_the_loss_cannot_read_is_refused():
    b = bundle_of({"task": {"family": "dataset", "dataset": "toy"},
                   "loss": {"form": "net", "inputs": ["pred", "target", "x"]}})
    with pytest.raises(ConfigError, match="x_dim = 3"):
        run_meta_test(b, {"task": {"dataset": "toy-wide"}})
    b = bundle_of({"task": {"family": "dataset", "dataset": "toy"}})  # w(target) per output: any data
    r, _ = run_meta_test(b, {"task": {"dataset": "toy-wide"}, "tasks": 2, "steps": 2, "horizons": [2]})
    assert r["data"]["inputs"] == ["x1", "x2", "x3", "x4", "x5"]


def test_a_data_set_loss_carries_its_standardisation_and_takes_raw_units():
    """The bundle keeps the meta-train tasks' means and stds; raw_units=True applies them, so the
    loss of raw targets and inputs equals the loss of the standardised ones it was trained on."""
    from ml3core import load_loss

    bundle = bundle_of({"task": {"family": "dataset", "dataset": "toy", "model_hidden": [8]},
                        "loss": {"form": "net", "inputs": ["pred", "target", "x"]}})
    norm = family().describe()["normalization"]
    assert bundle.spec["input_scales"] == {"pred": norm["y_std"], "target": norm["y_std"], "x": norm["x_std"]}
    assert bundle.spec["input_offsets"] == {"pred": norm["y_mean"], "target": norm["y_mean"], "x": norm["x_mean"]}
    p = family().prepared
    rows = torch.cat([torch.cat(family().rows_of(t)) for t in p.tasks["test"]])
    x, y = p.data.x[rows].float(), p.data.y[rows].float()  # raw units
    xn, yn = p.x[rows].float(), p.y[rows].float()  # what L_phi saw at meta-training
    pred = y + torch.randn(y.shape, generator=torch.Generator().manual_seed(0)) * y.std(0)
    pred_n = (pred - torch.tensor(norm["y_mean"])) / torch.tensor(norm["y_std"])
    raw, plain = load_loss(bundle.to_zip(), raw_units=True), load_loss(bundle.to_zip())
    for reduction in ("mean", "none"):
        assert torch.allclose(raw(pred, y, x, reduction=reduction), plain(pred_n, yn, xn, reduction=reduction),
                              rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain(pred, y, x), plain(pred_n, yn, xn), rtol=1e-2)  # the units do matter
    unnormalised = bundle_of({"task": {"family": "dataset", "dataset": "toy", "model_hidden": [8], "normalize": False}})
    assert "input_scales" not in unnormalised.spec and "input_offsets" not in unnormalised.spec
