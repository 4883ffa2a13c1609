"""Noisy train points and the robust baselines (issue 23): noise touches only the train points and is
deterministic per seed, runs without it are what they were, the robust losses match their formulas,
a noisy family's meta-test reports the best tuned baseline, and the forms that can learn to ignore
noise start exactly at the plain loss and have exact meta-gradients."""

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import meta_gradient_checked

from app.cli.spec_flags import apply_sets
from ml3core import compare as cmp_module
from ml3core import load_loss, robust
from ml3core.api import losing_horizons, parse_spec
from ml3core.artifact import Bundle
from ml3core.compare import Comparison, best_baseline, robust_fit
from ml3core.config import ConfigError
from ml3core.engine import MetaTrainer
from ml3core.inner import InnerOptimizer
from ml3core.losses import LossSpec, apply_loss, init_loss_params
from ml3core.metatest import MetaTestConfig, meta_test
from ml3core.rollout import fit
from ml3core.sampling import fresh_theta, sample_data, stream_generator
from ml3core.tasks import dataset, make_family
from ml3core.tasks.base import cross_entropy

torch.set_num_threads(1)
SINE = {"family": "sine", "points": 20, "heldout_points": 8, "model_hidden": [8], "model_activation": "tanh",
        "train_task": "sampled", "meta_objective": "heldout"}


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def fingerprint(family, split, n=3) -> str:
    """The sampled tasks and the generators' states after the draw (what later draws depend on)."""
    g = gens(0, 1)
    data = family.sample_tasks(g, n, split)
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        h.update(data[k].contiguous().numpy().tobytes())
    for gen in g:
        h.update(gen.get_state().numpy().tobytes())
    return h.hexdigest()[:16]


def synthetic(classification: bool) -> dataset.TaskData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12 * 30, 2, generator=g, dtype=torch.float64)
    tasks = [f"t{i // 30}" for i in range(12 * 30)]
    if classification:
        return dataset.TaskData.from_class_labels(x, [i % 3 for i in range(12 * 30)], tasks)
    w = torch.randn(12, 2, generator=g, dtype=torch.float64).repeat_interleave(30, 0)
    return dataset.TaskData.from_labels(x, (x * w).sum(1) + 0.1 * torch.randn(12 * 30, generator=g), tasks)


dataset.provide("noise-regression", synthetic(False))
dataset.provide("noise-classification", synthetic(True))


# -- 1. noise as a task property ----------------------------------------------------------------------
@pytest.mark.parametrize("task,split,field,want", [
    ({"family": "sine", "train_task": "sampled"}, "train", "outliers", "5ed37caa40521dab"),
    ({"family": "digits", "shots": 10}, "test", "label_noise", "fefd2a5061cd9543"),
    ({"family": "dataset", "dataset": "noise-regression"}, "train", "outliers", "accba3865bce5cc4"),
    ({"family": "dataset", "dataset": "noise-classification"}, "test", "label_noise", "39f6ac5b34fd2d50"),
])
def test_runs_without_noise_are_bit_for_bit_what_they_were(task, split, field, want):
    """The fingerprints were taken before noise existed (main at 81da231): tasks and generator states."""
    assert fingerprint(make_family(task), split) == want
    assert fingerprint(make_family({**task, field: 0.0}), split) == want
    assert fingerprint(make_family({**task, field: {"rate": 0.0}}), split) == want


def test_a_checkpoint_written_before_noise_existed_still_belongs_to_a_noise_free_run():
    from ml3core.checkpoint import identity

    for task, field in ((SINE, "outliers"), ({"family": "digits"}, "label_noise")):
        plan = parse_spec({"task": task, "seeds": 1, "validation_tasks": 1})
        trainer = MetaTrainer(plan.family, plan.loss, plan.train)
        assert field not in identity(trainer)["task"]
        noisy = parse_spec({"task": {**task, field: 0.2}, "seeds": 1, "validation_tasks": 1})
        assert identity(MetaTrainer(noisy.family, noisy.loss, noisy.train))["task"][field] == 0.2


@pytest.mark.parametrize("spec", [0.3, {"rate": 0.3, "kind": "student_t"},
                                  {"rate": 0.3, "kind": "uniform", "scale": 8}])
def test_outliers_touch_only_the_train_targets_of_sine(spec):
    clean, noisy = make_family(SINE), make_family({**SINE, "outliers": spec})
    a, b = clean.sample_tasks(gens(0, 1), 4, "test"), noisy.sample_tasks(gens(0, 1), 4, "test")
    for key in ("x", "x_heldout", "y_heldout", "amplitude", "phase"):
        assert torch.equal(a[key], b[key]), key  # the trusted points stay clean
    changed = (a["y"] != b["y"]).squeeze(-1)
    assert changed.sum(-1).tolist() == [[6] * 4] * 2  # exactly round(0.3 * 20) of each task's train targets
    again = noisy.sample_tasks(gens(0, 1), 4, "test")
    assert torch.equal(again["y"], b["y"])  # the seed's generator decides
    other = noisy.sample_tasks(gens(2, 1), 4, "test")
    assert not torch.equal(other["y"][0], b["y"][0]) and torch.equal(other["y"][1], b["y"][1])
    if spec == 0.3:  # uniform in the task's mean ± 5 sd: gross outliers
        y = a["y"]
        dev = ((b["y"] - y.mean(-2, keepdim=True)) / y.std(-2, keepdim=True, correction=0)).abs()[changed.unsqueeze(-1)]
        assert dev.max() <= 5 and dev.max() > 2


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_label_noise_flips_only_train_labels_of_digits(kind):
    task = {"family": "digits", "shots": 10, "heldout_per_class": 5}
    clean, noisy = make_family(task), make_family({**task, "label_noise": {"rate": 0.4, "kind": kind}})
    a, b = clean.sample_tasks(gens(0, 1), 3, "test"), noisy.sample_tasks(gens(0, 1), 3, "test")
    for key in ("x", "x_heldout", "y_heldout", "classes"):
        assert torch.equal(a[key], b[key]), key
    was, now = a["y"].argmax(-1), b["y"].argmax(-1)
    assert (b["y"].sum(-1) == 1).all()  # still one-hot
    flipped = was != now
    assert flipped.sum(-1).tolist() == [[16] * 3] * 2  # round(0.4 * 40), never to the same class
    if kind == "pairflip":
        assert torch.equal(now[flipped], (was[flipped] + 1) % 4)
    else:  # every other class is reached
        assert set(((now - was) % 4)[flipped].tolist()) == {1, 2, 3}


def test_noise_on_a_data_set_touches_only_its_train_rows():
    for name, key, spec in (("noise-regression", "outliers", 0.25), ("noise-classification", "label_noise", 0.5)):
        task = {"family": "dataset", "dataset": name, "points": 16}
        a = make_family(task).sample_tasks(gens(0), 5, "train")
        b = make_family({**task, key: spec}).sample_tasks(gens(0), 5, "train")
        for k in ("x", "x_heldout", "y_heldout"):
            assert torch.equal(a[k], b[k]), (name, k)
        assert ((a["y"] != b["y"]).any(-1).sum(-1) == round(16 * spec)).all(), name


def test_noise_settings_are_checked_and_named():
    bad = [({"label_noise": 1.0}, "task.label_noise"), ({"label_noise": {"rate": 0.2, "kind": "asym"}},
           "task.label_noise.kind"), ({"label_noise": {"rate": -0.1}}, "task.label_noise.rate"),
           ({"label_noise": {"kind": "symmetric"}}, "task.label_noise.rate"),
           ({"label_noise": {"rate": 0.1, "noise": 1}}, "task.label_noise.noise"),
           ({"label_noise": "0.4"}, "task.label_noise"), ({"label_noise": 0.2, "objective": "train"}, "task.objective")]
    for extra, loc in bad:
        with pytest.raises(ConfigError) as e:
            make_family({"family": "digits", **extra})
        assert e.value.loc == loc, extra
    bad = [({"outliers": 0.95}, "task.outliers"), ({"outliers": {"rate": 0.1, "kind": "gauss"}}, "task.outliers.kind"),
           ({"outliers": {"rate": 0.1, "kind": "student_t", "df": 3}}, "task.outliers.df"),
           ({"outliers": {"rate": 0.1, "scale": -1}}, "task.outliers.scale"), ({"outliers": True}, "task.outliers")]
    for extra, loc in bad:
        with pytest.raises(ConfigError) as e:
            make_family({**SINE, **extra})
        assert e.value.loc == loc, extra
    with pytest.raises(ConfigError, match="task.meta_objective"):
        make_family({**SINE, "outliers": 0.2, "meta_objective": "train"})
    for name, key in (("noise-regression", "label_noise"), ("noise-classification", "outliers")):
        with pytest.raises(ConfigError) as e:
            make_family({"family": "dataset", "dataset": name, key: 0.2}).resolve()
        assert e.value.loc == f"task.{key}"


def test_both_spec_forms_from_set_and_json_and_noisy_defaults():
    plan = parse_spec(apply_sets({"task": {"family": "digits"}}, ["task.label_noise=0.4", "task.shots=50"]))
    assert plan.family.config.label_noise == 0.4 and plan.train.validation_horizons == [100, 1000]
    assert plan.family.robust_baselines() and max(plan.meta_test.horizons) >= 1000
    plan = parse_spec(apply_sets({"task": {"family": "digits"}},
                                 ['task.label_noise={"rate": 0.3, "kind": "pairflip"}']))
    assert plan.family.config.label_noise == {"rate": 0.3, "kind": "pairflip"}
    plan = parse_spec(apply_sets({"task": {"family": "sine"}}, ["task.outliers=0.3"]))
    assert plan.loss.form == "weighted_se" and plan.loss.inputs == ["target", "abs_error"]
    assert plan.loss.init == "baseline" and plan.train.validation_horizons == [100, 1000]
    assert plan.family.config.meta_objective == "heldout" and plan.train.train_horizon >= 1000
    clean = parse_spec({"task": {"family": "sine"}})  # no noise: the default as it was
    assert clean.loss.inputs == ["target"] and clean.train.validation_horizons == []
    assert clean.family.robust_baselines() == []
    plan = parse_spec({"task": {"family": "dataset", "dataset": "noise-regression", "outliers": 0.2}})
    assert "abs_error" in plan.loss.inputs and plan.train.validation_horizons == [100, 1000]
    plan = parse_spec({"task": {"family": "dataset", "dataset": "noise-classification", "label_noise": 0.2}})
    assert plan.train.validation_horizons == [100, 1000]
    assert [b.loss for b in plan.family.robust_baselines()] == ["gce", "gce", "label_smoothing",
                                                               "label_smoothing", "sce"]


# -- 2. the robust baselines ----------------------------------------------------------------------------
def test_regression_baselines_match_their_formulas():
    pred = torch.tensor([[[0.0], [1.0], [3.0]]])
    target = torch.tensor([[[0.05], [0.0], [0.0]]])  # errors -0.05, 1, 3
    # huber(0.3): 0.5 * 0.0025, 0.3 * (1 - 0.15), 0.3 * (3 - 0.15)
    assert robust.huber(pred, target, 0.3).item() == pytest.approx((0.00125 + 0.255 + 0.855) / 3)
    assert robust.huber(pred, target, 1.0).item() == pytest.approx((0.00125 + 0.5 + 2.5) / 3)
    assert robust.l1(pred, target).item() == pytest.approx((0.05 + 1 + 3) / 3)
    # cauchy(c): c²/2 log(1 + (e/c)²)
    want = sum(0.5 * 0.09 * math.log(1 + (e / 0.3) ** 2) for e in (0.05, 1, 3)) / 3
    assert robust.cauchy(pred, target, 0.3).item() == pytest.approx(want)
    assert robust.cauchy(pred, target, 1.0).item() == pytest.approx(sum(0.5 * math.log(1 + e * e)
                                                                        for e in (0.05, 1, 3)) / 3)
    # near 0 every one of them is ½e² (their lr is comparable with one another; MSE's e² is twice that)
    small = torch.tensor([[[1e-3]]])
    for b in robust.grid("regression")[:-1]:
        if b.loss != "l1":
            assert b(small, torch.zeros(1, 1, 1)).item() == pytest.approx(0.5e-6, rel=1e-3)


def test_classification_baselines_match_their_formulas():
    logits = torch.tensor([[[math.log(0.7), math.log(0.2), math.log(0.1)],
                            [math.log(0.25), math.log(0.25), math.log(0.5)]]])
    target = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])
    p_y = (0.7, 0.25)
    assert robust.gce(logits, target, 0.7).item() == pytest.approx(sum((1 - p ** 0.7) / 0.7 for p in p_y) / 2)
    assert robust.gce(logits, target, 0.3).item() == pytest.approx(sum((1 - p ** 0.3) / 0.3 for p in p_y) / 2)
    # label smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1)
    ls = [-(0.8 * math.log(0.7) + 0.1 * math.log(0.2) + 0.1 * math.log(0.1)),
          -(0.8 * math.log(0.25) + 0.1 * math.log(0.25) + 0.1 * math.log(0.5))]
    assert robust.label_smoothing(logits, target, 0.3).item() == pytest.approx(sum(ls) / 2)
    # sce: 0.1 CE + 1.0 RCE, RCE = -sum_c p_c max(log y_c, -4) = 4 (1 - p_y)
    want = sum(0.1 * -math.log(p) + 4 * (1 - p) for p in p_y) / 2
    assert robust.sce(logits, target).item() == pytest.approx(want)
    assert robust.sce(logits, target, 1.0, 0.0).item() == pytest.approx(F.cross_entropy(
        logits[0], target[0].argmax(-1)).item())
    names = [b.name for b in robust.grid("classification")]
    assert names == ["gce(q=0.3)", "gce(q=0.7)", "label_smoothing(eps=0.1)", "label_smoothing(eps=0.3)",
                     "sce(alpha=0.1, beta=1)"]
    assert [b.name for b in robust.grid("regression")] == ["huber(delta=0.1)", "huber(delta=0.3)",
                                                           "huber(delta=1)", "l1", "cauchy(c=0.3)", "cauchy(c=1)"]


# -- 3. the best tuned baseline ------------------------------------------------------------------------------
def _sets(task, tasks=3, dtype=torch.float64):
    family = make_family(task)
    g = [stream_generator(s, "test") for s in (0, 1)]
    return family, sample_data(family, g, tasks, "test", "cpu", dtype), fresh_theta(family, g, tasks, "cpu", dtype)


def test_robust_baselines_train_in_one_batch_as_they_would_alone():
    family, data, theta = _sets({**SINE, "outliers": 0.3})
    opt, factors = InnerOptimizer("sgd", 0.01), [0.5, 1.0, 4.0]
    baselines, runs, grid = robust_fit(family, theta, data, opt, factors, [3, 7])
    assert grid == [0.5, 1.0, 4.0, 8.6, 18.56, 40.0]  # the plain grid, and on above its top (bounded gradients)
    assert runs["mse_heldout"].shape == (2, 2, 6, 6, 3)  # (R, S, B, G, T)
    for b in (0, 4):
        for gi, f in enumerate(grid):
            alone = fit(family, lambda th, d, b=b: baselines[b](*family.loss_inputs(th, d)[:2]), theta, data, 7,
                        InnerOptimizer("sgd", 0.01 * f), [3, 7])
            torch.testing.assert_close(runs["mse_heldout"][:, :, b, gi], alone["mse_heldout"])


def test_best_baseline_is_the_best_of_the_tuned_plain_and_every_robust_loss():
    plain = torch.tensor([[2.0, 1.0], [3.0, 1.0]]).view(1, 2, 2, 1)  # (R = 1, S = 2, G = 2, T = 1)
    learned = torch.tensor([0.9, 0.8]).view(1, 2, 1, 1)
    cmp = Comparison([100], [1.0, 2.0], [1.0], 0.1, {"m": plain}, {"m": learned})
    runs = {"m": torch.tensor([[[1.5, 0.5], [math.nan, 1.2]],  # seed 0: huber best at lr 0.2
                               [[4.0, 3.0], [2.0, math.inf]]]).view(1, 2, 2, 2, 1)}  # seed 1: plain best
    baselines = [robust.Baseline("huber", {"delta": 1.0}), robust.Baseline("l1")]
    best = best_baseline(cmp, baselines, runs, [1.0, 2.0], [100], "m")
    assert best["names"] == ["mse", "huber(delta=1)", "l1"]
    assert best["best"].tolist() == [[1, 0]] and best["lr"][0, 0].tolist() == [0.2, 0.2, 0.2]
    assert best["lr"][0, 1].tolist() == [0.2, 0.2, 0.1]  # a diverged lr is never the best
    assert best["vs_best"][0].tolist() == pytest.approx([0.9 / 0.5, 0.8 / 1.0])


def test_a_noisy_meta_test_reports_the_best_tuned_baseline_and_keeps_its_runs():
    family = make_family({**SINE, "outliers": 0.3})
    spec = LossSpec.from_dict({"form": "weighted_se", "inputs": ["target", "abs_error"], "hidden": [4],
                               "activation": "tanh", "output": "exp", "init": "baseline", "bias": True},
                              **family.loss_defaults())
    phi = init_loss_params(spec, torch.Generator().manual_seed(0), 2)
    with torch.no_grad():
        phi["layers.1.weight"].normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    cfg = MetaTestConfig(tasks=2, steps=3, horizons=[5, 20], lr_factors=[0.5, 2.0])
    cmp_module._ROBUST.clear()
    seen = []
    report = meta_test(family, spec, phi, [0, 1], cfg, 0.02, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 3 * 20 and all(d <= t for d, t in seen)
    for row in report["horizon"]:
        assert set(row["baselines"]) == {"mse", "huber(delta=0.1)", "huber(delta=0.3)", "huber(delta=1)", "l1",
                                         "cauchy(c=0.3)", "cauchy(c=1)"}
        best, per_seed = row["best_baseline"], row["best_baseline_per_seed"]
        assert best["mse_heldout"] == min(v["mse_heldout"] for v in row["baselines"].values())
        for s in range(2):  # the best includes the tuned plain loss: never easier than it
            assert row["ratio_vs_best_per_seed"][s] >= row["ratio_vs_tuned_per_seed"][s] - 1e-9
            assert per_seed[s]["lr"] in report["robust_lr_grid"]
        assert set(report["lr_grid"]) < set(report["robust_lr_grid"])
        assert row["ratio_vs_best"] == pytest.approx(math.exp(sum(map(math.log, row["ratio_vs_best_per_seed"])) / 2))
    warnings = losing_horizons(report, 0, "mse_heldout")
    losing = [r for r in report["horizon"] if r["ratio_vs_best_per_seed"][0] > 1]
    assert len([w for w in warnings if "best tuned baseline" in w]) == len(losing)
    again = meta_test(family, spec, phi, [0, 1], cfg, 0.02)  # the robust runs are kept, like the plain ones
    assert len(cmp_module._ROBUST) == 1
    assert [r["ratio_vs_best_per_seed"] for r in again["horizon"]] == [r["ratio_vs_best_per_seed"]
                                                                       for r in report["horizon"]]


def test_the_published_seed_of_a_noisy_family_is_judged_against_the_best_tuned_baseline():
    """On noisy train points the publishing choice divides by the best of the tuned plain loss and every tuned
    robust loss (never easier than the tuned plain loss alone), and says which baseline was best."""
    from ml3core.train_config import TrainConfig

    family = make_family({**SINE, "outliers": 0.3})
    spec = LossSpec.from_dict({"form": "weighted_se", "inputs": ["target", "abs_error"], "hidden": [],
                               "output": "exp", "init": "baseline", "bias": True}, **family.loss_defaults())
    cfg = TrainConfig(seeds=2, outer_iterations=1, eval_steps=2, validation_tasks=3, train_horizon=40,
                      validation_horizons=[10, 40], inner_lr=0.01, dtype="float64")
    t = MetaTrainer(family, spec, cfg)
    t.history["baseline"] = t.baseline()
    t._record_eval(None)
    v = t.validate()
    assert "best of the plain and robust losses" in v["metric"]
    for h in ("10", "40"):
        for s in range(2):
            assert v["ratios"][h][s] >= v["ratios_vs_tuned"][h][s] - 1e-12
        assert all(name in ("mse", "l1") or name.startswith(("huber", "cauchy")) for name in v["best_baseline"][h])
    assert any(v["ratios"][h][s] > v["ratios_vs_tuned"][h][s] * 1.01 for h in ("10", "40") for s in range(2))


def test_a_noise_free_meta_test_is_as_before():
    family = make_family(SINE)
    spec = LossSpec.from_dict({"form": "weighted_se", "inputs": ["target"], "hidden": [], "output": "exp",
                               "init": "baseline"}, **family.loss_defaults())
    phi = init_loss_params(spec, torch.Generator().manual_seed(0), 1)
    cmp_module._ROBUST.clear()
    report = meta_test(family, spec, phi, [0], MetaTestConfig(tasks=2, steps=2, horizons=[4], lr_factors=[1.0]), 0.02)
    assert not any(k.startswith(("best_", "ratio_vs_best", "baselines")) for k in report["horizon"][0])
    assert not cmp_module._ROBUST
    assert robust_fit(family, *_sets(SINE)[2:0:-1], InnerOptimizer("sgd", 0.1), [1.0], [2]) == ([], {}, [])


# -- 4. forms that can be robust and start at the baseline -----------------------------------------------
WEIGHTED_CE = {"form": "weighted_ce", "inputs": ["ce", "target_prob", "max_prob"], "hidden": [6],
               "activation": "tanh", "bias": True, "output": "softplus"}
ABS_ERROR = {"form": "weighted_se", "inputs": ["target", "abs_error"], "hidden": [6], "activation": "tanh",
             "bias": True, "output": "softplus"}


def _bundle(spec, params, family="digits"):
    return Bundle.build(params, spec, {"family": family}, {"inner_lr": 0.1}, {})


@pytest.mark.parametrize("output", ["softplus", "exp", "square"])
def test_weighted_ce_starts_as_exactly_cross_entropy(output):
    spec = LossSpec(**{**WEIGHTED_CE, "output": output}, init="baseline")
    params = init_loss_params(spec, torch.Generator().manual_seed(3))
    logits = (torch.randn(32, 4, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    labels = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
    onehot = F.one_hot(labels, 4).float()
    ours, ref = apply_loss(spec, params, logits, onehot), cross_entropy(logits, onehot)  # the plain loss
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])
    module = load_loss(_bundle(spec, params).to_zip())
    assert torch.equal(module(logits, labels), ref)
    assert module(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert torch.allclose(module(logits, labels, reduction="none"), F.cross_entropy(logits, labels, reduction="none"))


def test_abs_error_weight_starts_as_exactly_mse():
    spec = LossSpec(**ABS_ERROR, init="baseline", pred_dim=1)
    params = init_loss_params(spec, torch.Generator().manual_seed(3))
    pred = torch.randn(2, 9, 1, requires_grad=True)
    target = torch.randn(2, 9, 1)
    ours, ref = apply_loss(spec, params, pred, target), (pred - target).square().mean((-1, -2))
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours.sum(), pred)[0], torch.autograd.grad(ref.sum(), pred)[0])


def test_the_weight_is_constant_for_the_loss_gradient():
    """w(|e|)·e² trains the model on w·e² (w held constant, as Meta-Weight-Net's detached loss), not on w's slope."""
    spec = LossSpec(**{**ABS_ERROR, "hidden": []}, pred_dim=1)
    params = {"layers.0.weight": torch.tensor([[0.0, -2.0]]), "layers.0.bias": torch.tensor([0.5])}
    pred, target = torch.tensor([[[1.5]]], requires_grad=True), torch.zeros(1, 1, 1)
    loss = apply_loss(spec, params, pred, target)
    w = F.softplus(torch.tensor(0.5 - 2 * 1.5))
    assert loss.item() == pytest.approx((w * 2.25).item())
    assert torch.autograd.grad(loss, pred)[0].item() == pytest.approx((w * 2 * 1.5).item())


@pytest.mark.parametrize("loss", [WEIGHTED_CE, ABS_ERROR])
def test_a_bundle_of_a_new_form_loads_and_gives_the_same_values(loss):
    classification = loss["form"] == "weighted_ce"
    spec = LossSpec(**loss, pred_dim=1)
    params = init_loss_params(spec, torch.Generator().manual_seed(4))  # xavier: not the baseline
    bundle = _bundle(spec, params, "digits" if classification else "sine")
    assert bundle.spec["format_version"] == 4
    module = load_loss(bundle.to_zip())
    if classification:
        logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
        want = apply_loss(spec, params, logits, F.one_hot(labels, 5).float())
        assert torch.allclose(module(logits, labels), want)
        assert abs(want.item() - F.cross_entropy(logits, labels).item()) > 1e-4  # a real weighting
    else:
        pred, target = torch.randn(16), torch.randn(16)
        want = apply_loss(spec, params, pred.view(16, 1), target.view(16, 1))
        assert torch.allclose(module(pred, target), want)


@pytest.mark.parametrize("which", ["weighted_ce", "abs_error"])
def test_meta_gradient_through_a_new_form_matches_finite_differences(which):
    """d L_T(theta_M(phi)) / d phi through M = 3 unrolled steps on noisy tasks, float64, against central
    differences: exact, the weight's dependence on the model included."""
    if which == "weighted_ce":
        spec = {"task": {"family": "digits", "model_hidden": [8], "heldout_per_class": 5, "shots": 4,
                         "label_noise": 0.4}, "loss": {**WEIGHTED_CE, "init": "xavier_uniform"}, "inner_lr": 0.5}
    else:
        spec = {"task": {**SINE, "outliers": 0.3}, "loss": {**ABS_ERROR, "init": "xavier_uniform"}, "inner_lr": 0.05}
    plan = parse_spec({**spec, "seeds": 1, "inner_steps": 3, "tasks_per_batch": 2, "dtype": "float64",
                       "validation_tasks": 1})
    trainer = MetaTrainer(plan.family, plan.loss, plan.train)
    g = gens(5)
    data = {k: v.double() if v.is_floating_point() else v for k, v in plan.family.sample_tasks(g, 2, "train").items()}
    theta = {k: v.double() for k, v in plan.family.init_theta(g, 2).items()}
    assert meta_gradient_checked(trainer, theta, data) >= 3


def test_new_forms_are_checked():
    with pytest.raises(ConfigError, match="unknown input"):
        LossSpec(**{**WEIGHTED_CE, "inputs": ["prob"]})
    with pytest.raises(ConfigError, match="abs_error"):
        LossSpec(form="net", inputs=["pred", "target", "abs_error"])
    with pytest.raises(ConfigError, match="loss.output"):
        LossSpec(**{**WEIGHTED_CE, "output": "linear"})
    spec = LossSpec.from_dict({"form": "weighted_ce"}, **make_family({"family": "digits"}).loss_defaults_for(
        "weighted_ce"))
    assert spec.init == "baseline" and spec.output == "softplus" and spec.inputs == ["ce", "target_prob"]
