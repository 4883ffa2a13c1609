"""Meta-test: train fresh models with L_phi and with plain MSE on held-out tasks, side by side.

Column i of every curve is the models after ``curve_steps[i]`` SGD steps: every step up to ``steps`` (so
index k is "after k steps", k = 0 the initial model), then log-spaced steps up to the longest horizon. Each task has
train points (the SGD steps use only these) and held-out points; both are reported. The
horizon report shows the same at longer training, where a loss meta-trained on a short
unroll may stop paying off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .compare import LR_FACTORS, RATIOS, StepCounter, best_baseline, check_factors, compare, robust_fit
from .config import check, check_range, from_dict, json_clean
from .inner import InnerOptimizer
from .losses import LossSpec
from .sampling import fresh_theta, learned_objective, sample_data, stream_generator
from .tasks import TaskFamily
from .train_config import DTYPES


@dataclass
class MetaTestConfig:
    tasks: int = 10
    steps: int = 100
    lr: float = 0.0  # 0: the inner learning rate of meta-training (with its inner optimizer)
    horizons: list[int] = field(default_factory=lambda: [10, 100, 1000, 5000])
    # the plain loss (and the learned one) also train at these multiples of the lr, as one batch: the
    # "tuned" baseline is the best of them per horizon; [1] compares at the same lr only
    lr_factors: list[float] = field(default_factory=lambda: list(LR_FACTORS))
    tune_learned: bool = True  # the learned loss at its own best lr factor too ("both tuned")

    def __post_init__(self):
        check_range(self.tasks, "meta_test.tasks", 1, 10_000)
        check_range(self.steps, "meta_test.steps", 0, 100_000)
        check_range(self.lr, "meta_test.lr", 0, 1e3)
        check(all(isinstance(h, int) and 0 <= h <= 100_000 for h in self.horizons), "meta_test.horizons",
              "a list of step counts in [0, 100000]")
        self.lr_factors = check_factors(self.lr_factors, "meta_test.lr_factors")
        check(isinstance(self.tune_learned, bool), "meta_test.tune_learned", "true or false")

    @classmethod
    def from_dict(cls, d: dict | None) -> MetaTestConfig:
        return from_dict(cls, d, "meta_test")


CURVE_POINTS_PER_DECADE = 8  # past ``steps``, the curves are recorded at log-spaced steps up to the longest horizon


def curve_steps(steps: int, horizons: list[int]) -> list[int]:
    """The steps a meta-test curve is recorded at: every step up to ``steps``, every horizon, and beyond
    ``steps`` up to the longest horizon ``CURVE_POINTS_PER_DECADE`` log-spaced steps a decade (at most ~40
    more points: a curve reaches the horizon report's last row without recording every step)."""
    longest = max([steps, *horizons])
    out = set(range(steps + 1)) | set(horizons)
    if longest > steps:
        lo, hi = math.log10(max(steps, 1)), math.log10(longest)
        n = math.ceil((hi - lo) * CURVE_POINTS_PER_DECADE)
        out |= {round(10 ** (lo + (hi - lo) * i / n)) for i in range(n + 1)}
    return sorted(out)


def dense_curves(report: dict) -> dict:
    """A report's curves at every step 0..``steps`` only (index k = after k steps), without the sparse tail."""
    n = report["steps"] + 1
    return {name: {m: [row[:n] for row in rows] for m, rows in c.items()} for name, c in report["curves"].items()}


def meta_test(family: TaskFamily, spec: LossSpec, phi: dict, seed_ids: list[int], cfg: MetaTestConfig,
              lr: float | InnerOptimizer, device="cpu", dtype="float32", per_seed_phi: bool = True,
              progress=None, lr_factor: list[float] | None = None) -> dict:
    """Curves and the horizon report of every family metric for L_phi and for the plain loss, per seed.

    ``phi`` is stacked (S, ...) with one loss per seed id when ``per_seed_phi``; otherwise a
    single loss evaluated on each seed's tasks. Seed s draws its test tasks and initial models
    from its own 'test' stream, so learned and plain training start from identical models. Both
    train at every lr factor of ``cfg.lr_factors`` around ``lr`` (ml3core.compare); L_phi is used
    at ``lr_factor[s] * lr`` (the lr its bundle recommends; default ``lr``), and each horizon row
    carries the three ratios (same lr, vs the tuned baseline, both tuned). ``progress(done,
    total)``, if given, hears of the steps of both runs (about 100 calls).
    """
    dt = DTYPES[dtype]
    opt = lr if isinstance(lr, InnerOptimizer) else InnerOptimizer("sgd", lr)
    opt = replace(opt, lr=cfg.lr) if cfg.lr else opt
    gens = [stream_generator(s, "test") for s in seed_ids]
    data = sample_data(family, gens, cfg.tasks, "test", device, dt)
    theta = fresh_theta(family, gens, cfg.tasks, device, dt)
    phi = {k: v.to(device, dt) for k, v in phi.items()}
    phi = {k: v.unsqueeze(1) for k, v in phi.items()} if per_seed_phi else phi
    horizon = max([cfg.steps, *cfg.horizons])
    noisy = bool(family.robust_baselines())  # noisy train points: the robust baselines train too (a third run)
    count = StepCounter(progress, (3 if noisy else 2) * horizon)
    at = [float(f) for f in (lr_factor or [1.0] * len(seed_ids))]
    record_at = curve_steps(cfg.steps, cfg.horizons)
    if noisy:
        baselines, robust, robust_factors = robust_fit(family, theta, data, opt, sorted(set(cfg.lr_factors) | set(at)),
                                       sorted(set(cfg.horizons)), count)
    cmp = compare(family, learned_objective(family, spec, phi), theta, data, opt,
                  record_at, cfg.lr_factors, cfg.tune_learned, count, at)
    metric = family.heldout_metric
    li, pi = cmp.index(at, len(seed_ids))
    runs = {"learned": cmp.at_lr(cmp.learned, li), "mse": cmp.at_lr(cmp.plain, pi)}
    tuned, _ = cmp.tuned(cmp.plain, metric)
    ratios = cmp.ratios(metric, at)
    if noisy:
        hs = sorted(set(cfg.horizons))
        best = best_baseline(cmp, baselines, robust, robust_factors, hs, metric, at)
    report = {"steps": cfg.steps, "tasks": cfg.tasks, "lr": opt.lr, "optimizer": opt.to_dict(),
              "learned_lr": [float(f"{f * opt.lr:.4g}") for f in at],  # per seed: the lr L_phi trains at
              "seed_ids": list(seed_ids), "lr_grid": cmp.lrs(cmp.factors).tolist(), "metric": metric,
              "curve_steps": record_at, "curves": {}, "final": {}, "horizon": []}
    if noisy:  # the robust baselines' own grid: it goes on above the plain loss's (ml3core.compare.robust_grid)
        report["robust_lr_grid"] = cmp.lrs(robust_factors).tolist()
    # curves at every step of ``curve_steps``: L_phi, the plain loss at the same lr and the tuned baseline (the
    # plain loss at its best lr for that many steps: what the horizon report's ratios are against)
    for name, curves in (*runs.items(), ("tuned", tuned)):
        per_seed = {m: c.mean(-1) for m, c in curves.items()}  # (R, S): mean over tasks
        report["curves"][name] = {m: json_clean(v.T.tolist()) for m, v in per_seed.items()}
        if name in runs:
            report["final"][name] = {m: json_clean(v[cmp.row(cfg.steps)].tolist()) for m, v in per_seed.items()}
    for h in sorted(set(cfg.horizons)):
        i = cmp.row(h)
        row = {"steps": h}
        for name, curves in (*runs.items(), ("tuned", tuned)):
            row[name] = {m: json_clean(float(c[i].mean())) for m, c in curves.items()}
        row["tuned_lr"] = ratios["tuned_lr"][i].tolist()  # per seed: the plain loss's best lr at h steps
        row["tuned_per_seed"] = json_clean(tuned[metric][i].mean(-1).tolist())  # its metric there
        if cfg.tune_learned:
            row["learned_tuned_lr"] = ratios["learned_tuned_lr"][i].tolist()
        for name in RATIOS:  # per seed (a published loss is one seed's), and over all seeds' tasks
            if name == "both_tuned" and not cfg.tune_learned:
                continue
            row[f"ratio_{name}_per_seed"] = json_clean(ratios[name][i].tolist())
            row[f"ratio_{name}"] = _overall(ratios[name][i])
        row["heldout_ratio"] = _ratio(row["learned"].get(metric), row["mse"].get(metric))  # same lr, as before
        row["heldout_ratio_per_seed"] = row["ratio_same_lr_per_seed"]
        if noisy:
            row.update(_best_rows(best, hs.index(h), metric, baselines))
        report["horizon"].append(row)
    return report


def _best_rows(best: dict, i: int, metric: str, baselines: list) -> dict:
    """A horizon row's fields for the best tuned baseline (ml3core.compare.best_baseline) at step index ``i``:
    every candidate at its best lr, the best one over all seeds' tasks and per seed, and ratio_vs_best."""
    names, value, lr = best["names"], best["metric"][i], best["lr"][i]  # (S, C)
    params = [{}, *(b.params for b in baselines)]
    losses = [names[0], *(b.loss for b in baselines)]

    def entry(c: int, seeds) -> dict:
        return {"name": names[c], "loss": losses[c], "params": dict(params[c]),
                "lr": lr[seeds, c].tolist(), metric: json_clean(value[seeds, c].mean().tolist())}

    S = value.shape[0]
    overall = int(value.mean(0).argmin())  # the candidate best over all seeds' tasks (inf if one seed diverged)
    return {"baselines": {names[c]: {metric: json_clean(value[:, c].mean().item()), "lr": lr[:, c].tolist()}
                          for c in range(len(names))},
            "best_baseline": entry(overall, slice(None)),
            "best_baseline_per_seed": [entry(int(best["best"][i, s]), s) for s in range(S)],
            "ratio_vs_best_per_seed": json_clean(best["vs_best"][i].tolist()),
            "ratio_vs_best": _overall(best["vs_best"][i])}


def _overall(per_seed) -> float | None:
    """A ratio over all seeds: the geometric mean of the per-seed ratios (None if any is not finite)."""
    return json_clean(float(per_seed.log().mean().exp())) if bool(torch.isfinite(per_seed).all()) else None


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None
