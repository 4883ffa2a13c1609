"""The tuned baseline: every learned loss is judged against the plain loss at its best learning rate
for each horizon (ml3core.compare), and only meta-validation tasks choose what is published."""

import math

import pytest
import torch

import ml3core.engine as engine
from ml3core import LossSpec, MetaTrainer, make_family
from ml3core.api import meta_train, parse_spec
from ml3core.compare import Comparison, compare, verdict
from ml3core.inner import InnerOptimizer
from ml3core.sampling import fresh_theta, sample_data, stream_generator

TASK = {"family": "sine", "points": 12, "heldout_points": 6, "model_hidden": [8], "model_activation": "tanh",
        "train_task": "sampled", "meta_objective": "heldout"}
WEIGHT = {"form": "weighted_se", "inputs": ["target"], "hidden": [], "output": "exp", "init": "baseline"}
TINY = {"task": TASK, "loss": WEIGHT, "seeds": 2, "outer_iterations": 4, "inner_steps": 3, "inner_lr": 0.05,
        "outer_lr": 0.05, "eval_every": 2, "eval_steps": 3, "validation_tasks": 2, "train_horizon": 20}


def test_the_tuned_baseline_picks_the_best_lr_per_horizon_and_never_a_diverged_one():
    """A constructed case: the largest lr is best early and diverges later, the smallest is best at the
    end; the tuned baseline follows, per step and per seed."""
    #            step 10: factors 0.1, 1, 10        step 1000: factors 0.1, 1, 10
    plain = torch.tensor([[[3.0, 2.0, 1.0], [0.5, 0.6, math.nan]],   # seed 0
                          [[3.0, 2.0, 1.5], [0.9, 0.4, math.inf]]])  # seed 1: (S, R, G)
    plain = plain.permute(1, 0, 2).unsqueeze(-1)  # (R, S, G, T = 1)
    learned = torch.tensor([[1.2, 1.0], [0.45, math.nan]]).view(2, 2, 1, 1)  # (R, S, G = 1, T = 1)
    cmp = Comparison([10, 1000], [0.1, 1.0, 10.0], [1.0], 0.01, {"m": plain}, {"m": learned})
    r = cmp.ratios("m")
    assert r["tuned_lr"].tolist() == [[0.1, 0.1], [0.001, 0.01]]  # a different lr per horizon and seed
    assert r["same_lr"][0].tolist() == pytest.approx([0.6, 0.5])
    assert r["vs_tuned"].tolist()[0] == pytest.approx([1.2, 1.0 / 1.5])
    assert r["vs_tuned"][1, 0].item() == pytest.approx(0.9)  # 0.45 / 0.5: the nan lr was never the best
    assert r["vs_tuned"][1, 1].item() == math.inf  # a learned loss that diverges loses, whatever the baseline
    assert verdict({10: 1.2, 100: 0.9, 1000: None}) == "beats a tuned baseline at 100 steps"
    assert verdict({10: 1.2, 100: None}) == "no gain over a tuned baseline"


def test_mse_scaled_by_10_is_worth_nothing_once_both_are_tuned():
    """10 x MSE at lr a is MSE at lr 10a under SGD: at the same lr it looks like a better loss; against the
    tuned baseline with its own lr tuned too it is exactly MSE (ratio 1 to 1e-3). A linear model keeps
    the dynamics from amplifying the last bit of rounding."""
    torch.set_num_threads(1)
    family = make_family({**TASK, "model_hidden": []})
    gens = [stream_generator(s, "test") for s in (0, 1)]
    data = sample_data(family, gens, 4, "test", "cpu", torch.float64)
    theta = fresh_theta(family, gens, 4, "cpu", torch.float64)
    cmp = compare(family, lambda th, d: 10 * family.plain_loss(th, d), theta, data, InnerOptimizer("sgd", 0.005),
                  [10, 100, 300])
    r = cmp.ratios("mse_train")
    assert r["tuned_lr"].flatten().tolist() == [0.05] * 6  # inside the grid, so 10 x MSE can reach it
    assert r["both_tuned"].flatten().tolist() == pytest.approx([1.0] * 6, abs=1e-3)
    assert r["learned_tuned_lr"].flatten().tolist() == [0.005] * 6
    assert (r["same_lr"][0] < 0.8).all()  # the comparison at the same lr calls the step size a gain


def test_selection_never_touches_meta_test_tasks(monkeypatch):
    """Meta-training and the published-seed choice draw from every stream but the meta-test's, and the
    choice, the verdict and the published loss do not move when the meta-test tasks change."""
    plan = parse_spec(dict(TINY))
    real = engine.stream_generator

    def guarded(seed, stream):
        assert stream != "test", "meta-training or the publishing choice drew meta-test tasks"
        return real(seed, stream)

    monkeypatch.setattr(engine, "stream_generator", guarded)
    result = MetaTrainer(plan.family, plan.loss, plan.train).run()
    assert result.validation["verdict"]
    monkeypatch.undo()
    a = meta_train({**TINY, "meta_test": {"tasks": 2, "steps": 3, "horizons": [3, 20]}})
    b = meta_train({**TINY, "meta_test": {"tasks": 5, "steps": 4, "horizons": [5, 30]}})
    assert a.report["validation"] == b.report["validation"] == result.validation
    assert a.bundle.weights == b.bundle.weights and a.report["published_seed"] == b.report["published_seed"]


def test_every_horizon_row_carries_three_consistent_ratios_and_warns_against_the_tuned_one():
    out = meta_train({**TINY, "meta_test": {"tasks": 3, "steps": 5, "horizons": [5, 50]}})
    mt, chosen = out.report["meta_test"], out.result.chosen
    assert len(mt["lr_grid"]) == 9 and mt["lr"] in mt["lr_grid"]
    for row in mt["horizon"]:
        same, tuned, both = (row[f"ratio_{k}_per_seed"] for k in ("same_lr", "vs_tuned", "both_tuned"))
        for s in range(2):  # the grid holds the same lr: tuning can only help either side
            assert tuned[s] >= same[s] - 1e-6 and both[s] <= tuned[s] + 1e-6
        assert row["tuned"]["mse_heldout"] <= row["mse"]["mse_heldout"] + 1e-6
    losing = [row["steps"] for row in mt["horizon"] if row["ratio_vs_tuned_per_seed"][chosen] > 1]
    assert [w.split(" steps")[0].split()[-1] for w in out.report["warnings"]] == [str(h) for h in losing]
    assert out.report["verdict"] == out.result.validation["verdict"] == out.bundle.spec["metrics"]["verdict"]


def test_a_level_weight_is_a_schedule_signal_held_constant_for_the_gradient():
    """weighted_se reading "level" (the batch's log MSE): at baseline init exactly MSE; with the weight
    exp(-level) = 1 / MSE its value is 1 and its gradient is MSE's divided by the MSE (a normalised step),
    in ml3core and in the downloaded module alike."""
    from ml3core.artifact import Bundle
    from ml3core.losses import LossSpec, apply_loss, init_loss_params
    from ml3core.portable import load_loss

    spec = LossSpec.from_dict({**WEIGHT, "inputs": ["target", "level"]}, pred_dim=1, x_dim=1)
    params = init_loss_params(spec, torch.Generator().manual_seed(0))
    pred = torch.randn(2, 16, 1, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 16, 1, dtype=torch.float64)
    mse = (pred - target).square().mean((-1, -2))
    assert torch.equal(apply_loss(spec, {k: v.double() for k, v in params.items()}, pred, target), mse)
    normalised = {"layers.0.weight": torch.tensor([[0.0, -1.0]], dtype=torch.float64)}  # w = exp(-level)
    loss = apply_loss(spec, normalised, pred, target)
    assert loss.tolist() == pytest.approx([1.0, 1.0], rel=1e-9)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    (want,) = torch.autograd.grad((mse / mse.detach()).sum(), pred)
    torch.testing.assert_close(grad, want)
    bundle = Bundle.build({k: v.float() for k, v in normalised.items()}, spec, {"family": "sine"}, {}, {})
    module = load_loss(bundle.to_zip())
    assert float(module(pred[0].detach().float(), target[0].float())) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(Exception, match="level"):
        LossSpec.from_dict({"form": "net", "inputs": ["pred", "level"]}, pred_dim=1)


def test_the_recommended_lr_is_chosen_on_validation_and_undoes_a_pure_step_size():
    """Two seeds' losses built by hand: MSE and MSE x 10. Under SGD the second at lr a/10 is the first at
    lr a, so on meta-validation it recommends a 10x smaller lr and scores the same ratios: a loss
    whose only trick is a step size gets no credit for it."""
    from ml3core.train_config import TrainConfig

    family = make_family(dict(TASK))
    spec = LossSpec.from_dict({**WEIGHT, "bias": True}, **family.loss_defaults())
    # lr 0.005: the plain loss's best lr (about 0.1) is inside both seeds' grids (21.5x and 2.15x)
    cfg = TrainConfig(seeds=2, outer_iterations=1, eval_steps=2, validation_tasks=3, train_horizon=100,
                      inner_lr=0.005, dtype="float64")
    t = MetaTrainer(family, spec, cfg)
    last = max(k for k in t.phi if k.endswith(".bias"))
    with torch.no_grad():
        t.phi[last][:, 0] = torch.log(torch.tensor([1.0, 10.0], dtype=torch.float64))
    t.history["baseline"] = t.baseline()
    t._record_eval(None)
    t.eval_sets["validation"] = tuple({k: v[:1].expand(2, *v.shape[1:]) for k, v in part.items()}
                                      for part in t.eval_sets["validation"])  # both seeds on seed 0's tasks
    v = t.validate()
    assert v["lr_factor"][0] > 1 and v["lr_factor"][0] == pytest.approx(10 * v["lr_factor"][1], rel=1e-3)
    assert v["recommended_lr"][0] == pytest.approx(10 * v["recommended_lr"][1], rel=1e-3)
    for h in v["horizons"]:  # equal up to rounding, which 100 steps near the edge of stability amplify
        assert v["ratios"][str(h)][1] == pytest.approx(v["ratios"][str(h)][0], rel=0.03)


def test_the_plain_runs_are_kept_per_tasks_and_models_and_equal_fresh_ones():
    """Comparing a second loss on the same tasks reuses the plain loss's runs (they do not depend on
    L_phi); other tasks, other models or another optimizer train afresh, and a kept run is the run."""
    import ml3core.compare as cmp_module

    family = make_family(dict(TASK))
    gens = [stream_generator(s, "test") for s in (0, 1)]
    data = sample_data(family, gens, 3, "test", "cpu", torch.float32)
    theta = fresh_theta(family, gens, 3, "cpu", torch.float32)
    opt = InnerOptimizer("sgd", 0.05)
    calls = []

    def counting(objective):
        def counted(th, d):
            calls.append(objective)
            return objective(th, d)
        return counted

    cmp_module._PLAIN.clear()
    first = compare(family, lambda th, d: 2 * family.plain_loss(th, d), theta, data, opt, [5], count=counting)
    n = len(calls)
    second = compare(family, lambda th, d: 3 * family.plain_loss(th, d), theta, data, opt, [5], count=counting)
    assert len(calls) - n == n / 2  # only the learned loss trained
    assert second.plain is first.plain
    moved = {k: v + 1e-3 for k, v in theta.items()}
    third = compare(family, family.plain_loss, moved, data, opt, [5])
    fourth = compare(family, family.plain_loss, theta, data, InnerOptimizer("sgd", 0.04), [5])
    assert third.plain is not first.plain and fourth.plain is not first.plain
    cmp_module._PLAIN.clear()
    fresh = compare(family, family.plain_loss, theta, data, opt, [5])
    for m, c in fresh.plain.items():
        assert torch.equal(c, first.plain[m])
