"""shaped-sine (review §3.2): the family, its landscapes over ω, and the three-way shaping experiment."""

import json

import pytest
import torch

from app.cli.commands import build_train_spec, make_parser
from ml3core.api import landscape, landscape_png, meta_train, parse_spec
from ml3core.artifact import Bundle
from ml3core.config import ConfigError
from ml3core.losses import init_loss_params
from ml3core.sampling import stream_generator
from ml3core.tasks import FAMILIES, make_family
from ml3core.tasks.shaped_sine import landscape_shape

PNG = b"\x89PNG\r\n\x1a\n"


def family(**settings):
    return make_family({"family": "shaped-sine", **settings})


def test_tasks_model_metrics_and_the_three_task_losses():
    fam = family()
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    data = fam.sample_tasks(gens, 3, "train")
    assert data["x"].shape == data["x_heldout"].shape == (2, 3, 64, 1)
    v = data["frequency"]
    assert v.shape == (2, 3) and v.abs().max() <= 5 and data["x"].abs().max() <= 5
    assert torch.allclose(data["y"], torch.sin(v[..., None, None] * data["x"]))
    assert torch.allclose(data["y_heldout"], torch.sin(v[..., None, None] * data["x_heldout"]))
    theta = fam.init_theta(gens, 3)
    assert theta["omega"].shape == (2, 3, 1) and torch.all(theta["omega"] == 0.1)

    mse = (torch.sin(0.1 * data["x"]) - data["y"]).pow(2).mean((-2, -1))
    shaping = (0.1 - v).pow(2)
    assert torch.allclose(fam.task_loss(theta, data), shaping)  # the default: the shaping loss
    assert torch.allclose(family(task_loss="mse").task_loss(theta, data), mse)
    mixed = family(task_loss="mixed", beta=2.0, gamma=0.5).task_loss(theta, data)
    assert torch.allclose(mixed, 2 * mse + 0.5 * shaping)
    assert torch.allclose(fam.plain_loss(theta, data), mse)

    metrics = fam.metrics({"omega": v.unsqueeze(-1) + 0.04}, data)
    assert torch.allclose(metrics["param_error"], torch.full_like(v, 0.04), atol=1e-6)
    assert metrics["converged"].tolist() == [[1.0] * 3] * 2
    assert fam.metrics(theta, data)["converged"].sum() == ((0.1 - v).abs() < 0.05).sum()


def test_review_variant_and_bad_settings():
    data = family(points=1000, x_range=[-1, 1]).sample_tasks([torch.Generator().manual_seed(0)], 2, "test")
    assert data["x"].shape == (1, 2, 1000, 1) and data["x"].abs().max() <= 1
    for bad, loc in [({"task_loss": "l2"}, "task.task_loss"), ({"x_range": [1, -1]}, "task.x_range"),
                     ({"points": 0}, "task.points"), ({"gamma": -1}, "task.gamma")]:
        with pytest.raises(ConfigError) as e:
            family(**bad)
        assert e.value.loc == loc


def test_cli_flag_and_the_official_training_defaults():
    args = make_parser().parse_args(["train", "shaped-sine", "--task-loss", "mse", "--outer-iters", "3"])
    plan = parse_spec(build_train_spec(args, FAMILIES["shaped-sine"]))
    assert plan.family.config.task_loss == "mse"
    t = plan.train
    assert (t.outer_iterations, t.inner_lr, t.outer_lr, t.tasks_per_batch, t.inner_steps, t.schedule) == (
        3, 1.0, 3e-3, 4, 10, "online")
    loss = plan.loss
    assert (loss.inputs, loss.hidden, loss.activation, loss.bias, loss.output) == (
        ["x", "pred", "target"], [10, 10, 10], "elu", True, "linear")
    # a spec's own values win over the family's defaults
    assert parse_spec({"task": {"family": "shaped-sine"}, "inner_lr": 0.5}).train.inner_lr == 0.5


def test_weighted_se_defaults_of_the_family():
    """form weighted_se alone gives the shaped-sine weight its inputs (x only) and output (exp)."""
    loss = parse_spec({"task": {"family": "shaped-sine"}, "loss": {"form": "weighted_se"}}).loss
    assert (loss.form, loss.inputs, loss.output, loss.hidden) == ("weighted_se", ["x"], "exp", [10, 10, 10])
    mine = parse_spec({"task": {"family": "shaped-sine"}, "loss": {"form": "weighted_se", "inputs": ["x", "target"]}})
    assert mine.loss.inputs == ["x", "target"]  # a spec's own fields still win
    sine = parse_spec({"task": {"family": "sine"}, "preset": "paper", "loss": {"form": "weighted_se"}}).loss
    assert (sine.inputs, sine.output) == (["target"], "softplus")
    out = meta_train({"task": {"family": "sine"}, "preset": "paper", "loss": {"form": "weighted_se"}, "seeds": 1,
                      "outer_iterations": 3, "eval_every": 3, "meta_test": {"tasks": 2, "steps": 5, "horizons": [5]}})
    assert out.bundle.spec["architecture"]["form"] == "weighted_se" and out.bundle.spec["format_version"] == 2
    pred = torch.randn(6, 1)
    assert out.bundle.module()(pred, pred).item() == 0.0


def test_landscape_shape_counts_minima_and_ends():
    grid = [i / 10 for i in range(-20, 21)]
    assert landscape_shape(grid, [(w - 0.5) ** 2 for w in grid], 0.5) == {
        "local_minima": 1, "minima_at": [0.5], "argmin": 0.5, "argmin_distance": 0.0}
    two = landscape_shape(grid, [min((w + 1) ** 2, (w - 1) ** 2 + 0.1) for w in grid], 1.0)
    assert two["minima_at"] == [-1.0, 1.0] and two["argmin"] == -1.0 and two["argmin_distance"] == 2.0
    assert landscape_shape(grid, [-w for w in grid], 0.0)["minima_at"] == [2.0]  # falls off the grid's end


def test_mse_landscape_at_heldout_frequencies_has_several_minima():
    """Review Fig. 4: on the official inputs x ∈ [−5, 5] the MSE over ω ∈ [−7, 7) has many local
    minima, its global one at v (measured: 12-14 minima for these v)."""
    fam = family()
    spec = parse_spec({"task": {"family": "shaped-sine"}}).loss
    phi = init_loss_params(spec, torch.Generator().manual_seed(0))
    v = fam.sample_tasks([stream_generator(0, "test")], 8, "test")["frequency"][0].tolist()
    for f in v:
        shape = fam.landscape(spec, phi, {"v": f})["shape"]["MSE"]
        assert shape["local_minima"] >= 8 and shape["argmin_distance"] <= 0.05 + 1e-9


def test_landscape_of_a_stored_loss_is_json_and_a_png():
    plan = parse_spec({"task": {"family": "shaped-sine"}})
    phi = init_loss_params(plan.loss, torch.Generator().manual_seed(0))
    bundle = Bundle.read(Bundle.build(phi, plan.loss, plan.task_dict(), {}, {}).to_zip())
    data = landscape(bundle, {"targets": [0.5]})  # the service's option name for v
    json.dumps(data, allow_nan=False)
    grid = data["grid"]
    assert len(grid) == 140 and grid[0] == -7.0 and grid[-1] == 6.9 and grid[75] == 0.5
    assert set(data["curves"]) == {"learned", "MSE"} and all(len(c) == 140 for c in data["curves"].values())
    assert data["curves"]["MSE"][75] == 0.0 and data["shape"]["MSE"]["argmin"] == 0.5
    # the learned curve is the served loss itself, evaluated at one ω
    x = torch.linspace(-5, 5, 100).view(-1, 1)
    value = bundle.module()(torch.sin(2.0 * x), torch.sin(0.5 * x), x=x)
    assert value.item() == pytest.approx(data["curves"]["learned"][90], rel=1e-5, abs=1e-6)
    shape = data["shape"]["learned"]
    assert shape["local_minima"] >= 1 and shape["argmin_distance"] == pytest.approx(abs(shape["argmin"] - 0.5))

    png = landscape_png(data)
    assert png[:8] == PNG and int.from_bytes(png[16:20], "big") > 600  # two panels side by side
    for bad in ({"targets": [0.1, 0.2]}, {"x": 1.0}, {"lo": 1.0, "hi": 1.0}, {"points": 1}, {"v": "a"}):
        with pytest.raises(ConfigError):
            landscape(bundle, bad)


def test_a_job_adds_the_landscape_and_reports_parameter_error():
    out = meta_train({"task": {"family": "shaped-sine"}, "seeds": 1, "outer_iterations": 2, "eval_every": 1,
                      "meta_test": {"tasks": 3, "steps": 5, "horizons": [5]}})
    assert {"landscape.png", "meta_test_param_error.png", "meta_test.png"} <= set(out.figures)
    assert all(png[:8] == PNG for png in out.figures.values())
    final = out.report["meta_test"]["final"]
    assert {"param_error", "converged"} <= set(final["learned"]) and {"param_error", "converged"} <= set(final["mse"])
    assert out.bundle.spec["task"]["task_loss"] == "shaping"


def test_experiment_config_errors_change_nothing(tmp_path, capsys):
    from app.cli import main
    from ml3core.experiments.shaping import ShapingConfig

    for bad, loc in [({"task": {"task_loss": "mse"}}, "task.task_loss"), ({"steps": -1}, "steps"),
                     ({"bogus": 1}, "bogus"), ({"test_tasks": 5, "landscape_tasks": 6}, "landscape_tasks"),
                     ({"mse_lrs": []}, "mse_lrs"), ({"mse_lrs": [0.1, -1]}, "mse_lrs")]:
        with pytest.raises(ConfigError) as e:
            ShapingConfig.from_dict(bad)
        assert e.value.loc == loc
    out = tmp_path / "run"
    assert main(["experiment", "shaping", "--out", str(out), "--set", "train.inner_lr=-1"]) == 2
    assert "inner_lr" in capsys.readouterr().err and not out.exists()
    assert main(["experiment", "shaping", "--out", str(out), "--loss-form", "cubic"]) == 2
    assert "loss.form" in capsys.readouterr().err and not out.exists()


# The three-way experiment at CI size: 2 seeds x 1500 iterations of the official loop (4 tasks, 10
# inner SGD steps of lr 1, a phi step after each), 2 x 100 held-out v ~ U[-5, 5], 100 SGD steps from
# omega0 = 0.1. The paper's claim holds with the experiment's defaults: the weighted_se loss,
# meta-trained on v ~ U[-7, 7] with outer lr 1e-3. With the official 3x10 ELU loss net (v ~ U[-5, 5],
# outer lr 3e-3) it did not in our runs (2.0 % converged over 8 seeds, README), but that outcome is
# chaotic: a 2e-5 change in the net's float rounding moved a 2-seed run from 2.5 % to 49 %, so no
# test pins it.


@pytest.fixture(scope="module")
def shaped():
    from ml3core.experiments import shaping

    return shaping.run(shaping.ShapingConfig.from_dict({"train": {"seeds": 2}, "test_tasks": 100}))


@pytest.mark.slow
def test_the_shaped_loss_converges_where_mse_is_stuck(shaped):
    """Review Fig. 6. Measured: the shaped loss converges (|ω − v| < 0.05) on 96.5 % of held-out v
    (99 % and 94 % per seed); the MSE-trained loss on 12 %, plain MSE at its best lr (0.1 of
    0.01-1) on 12.5 %: they stop in the local minimum nearest ω0 unless v is close to it.
    Over 8 seeds the shaped loss converged on 97.1 % (90-100 % per seed)."""
    test = shaped.report["meta_test"]
    m = test["methods"]
    assert m["shaped"]["converged_fraction"] >= 0.9
    assert min(m["shaped"]["converged_per_seed"]) >= 0.85
    assert m["learned_mse"]["converged_fraction"] <= 0.2 and m["mse"]["converged_fraction"] <= 0.2
    assert test["mse_lr"] == 0.1 and max(test["mse_converged_by_lr"].values()) == m["mse"]["converged_fraction"]
    assert m["shaped"]["param_error_quartiles"][2] < 0.01 < 1.0 < m["mse"]["param_error_quartiles"][1]


@pytest.mark.slow
def test_the_shaped_landscape_is_one_basin_at_v(shaped):
    """Review Figs. 4-5, over ω ∈ [−7, 7) at 2 x 10 held-out v. Measured: the shaped loss has a
    single basin at every one, its minimum within 0.1 of v; MSE has 12.7 local minima on average
    (at least 8 at each v), and so has the MSE-trained loss (12.7)."""
    held = shaped.report["landscapes"]["heldout"]
    assert len(held["v"]) == 20 and all(-5 <= v <= 5 for v in held["v"])
    assert held["shaped"]["single_basin_fraction"] >= 0.9 and held["shaped"]["argmin_within_0.1_fraction"] == 1.0
    assert min(held["mse"]["local_minima"]) >= 8 and held["mse"]["argmin_within_0.1_fraction"] == 1.0
    assert sum(held["learned_mse"]["local_minima"]) / 20 >= 8
    reference = shaped.report["landscapes"]["reference"]
    assert reference["v"] == 0.5 and reference["shape"]["shaped"]["local_minima"] == 1
    assert reference["shape"]["shaped"]["argmin_distance"] <= 0.1 and reference["shape"]["mse"]["local_minima"] >= 8


@pytest.mark.slow
def test_experiment_outputs(shaped, tmp_path):
    from ml3core import load_loss

    report = json.loads(json.dumps(shaped.report, allow_nan=False))
    assert set(report["meta_test"]["methods"]) == {"shaped", "learned_mse", "mse"}
    reference = report["landscapes"]["reference"]
    assert set(reference["curves"]) == {"mse", "shaped", "learned_mse"} and reference["shape"]["mse"]["argmin"] == 0.5
    assert {"landscapes.png", "meta_test.png"} == set(shaped.figures)
    assert all(png[:8] == PNG for png in shaped.figures.values())
    x = torch.linspace(-5, 5, 100).view(-1, 1)
    for name, task_loss in (("shaped", "shaping"), ("learned_mse", "mse")):
        bundle = shaped.bundles[name]
        assert bundle.spec["task"]["task_loss"] == task_loss and bundle.spec["task"]["frequency"] == [-7.0, 7.0]
        assert bundle.spec["architecture"]["form"] == "weighted_se" and bundle.spec["input_order"] == ["x"]
        bundle.write_dir(tmp_path / name)
        loss = load_loss(tmp_path / name)
        curve = make_family({"family": "shaped-sine"}).landscape(bundle.loss_spec(), bundle.params(), {"v": 0.5})
        assert loss(torch.sin(2.0 * x), torch.sin(0.5 * x), x=x).item() == pytest.approx(
            curve["curves"]["learned"][90], rel=1e-5, abs=1e-6)
        assert loss(torch.sin(0.5 * x), torch.sin(0.5 * x), x=x).item() == 0.0  # its minimum is the data


def test_landscape_endpoint_serves_a_registered_shaped_sine_loss(tmp_path):
    """Through the service: a shaped-sine job registers a loss whose landscape is drawn over ω."""
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.jobs.execute import run_job
    from app.main import create_app

    settings = Settings(data_dir=tmp_path, runner="none")
    spec = {"kind": "meta-train", "task": {"family": "shaped-sine", "task_loss": "shaping"}, "seeds": 1,
            "outer_iterations": 2, "eval_every": 2, "eval_steps": 5, "validation_tasks": 2,
            "meta_test": {"tasks": 2, "steps": 5, "horizons": [5]}, "register_as": "shaped"}
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        assert run_job(r.json()["id"], "test-runner", settings) == "succeeded"
        data = c.get("/v1/losses/shaped/landscape", params={"targets": "1.5"}).json()
        assert data["kind"] == "parameter" and data["v"] == 1.5 and len(data["grid"]) == 140
        assert set(data["curves"]) >= {"learned", "MSE"} and len(data["curves"]["MSE"]) == 140
        assert data["shape"]["MSE"]["local_minima"] >= 5  # sin(ωx) on x in [-5, 5]: a rugged landscape
        png = c.get("/v1/losses/shaped/landscape", params={"targets": "1.5", "format": "png"})
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        bad = c.get("/v1/losses/shaped/landscape", params={"targets": "1,2"})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
