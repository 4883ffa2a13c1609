"""Meta-test: train fresh models with L_phi and with plain MSE on held-out tasks, side by side.

Index k of every curve means "after k SGD steps" (k = 0 is the initial model). Each task has
train points (the SGD steps use only these) and held-out points; both are reported. The
horizon report shows the same at longer training, where a loss meta-trained on a short
unroll may stop paying off.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .config import check, check_range, from_dict
from .engine import DTYPES, fit, fresh_theta, json_clean, learned_objective, sample_data, stream_generator
from .inner import InnerOptimizer
from .losses import LossSpec
from .tasks import TaskFamily


@dataclass
class MetaTestConfig:
    tasks: int = 10
    steps: int = 100
    lr: float = 0.0  # 0: the inner learning rate of meta-training (with its inner optimizer)
    horizons: list[int] = field(default_factory=lambda: [10, 100, 1000, 5000])

    def __post_init__(self):
        check_range(self.tasks, "meta_test.tasks", 1, 10_000)
        check_range(self.steps, "meta_test.steps", 0, 100_000)
        check_range(self.lr, "meta_test.lr", 0, 1e3)
        check(all(isinstance(h, int) and 0 <= h <= 100_000 for h in self.horizons), "meta_test.horizons",
              "a list of step counts in [0, 100000]")

    @classmethod
    def from_dict(cls, d: dict | None) -> MetaTestConfig:
        return from_dict(cls, d, "meta_test")


def meta_test(family: TaskFamily, spec: LossSpec, phi: dict, seed_ids: list[int], cfg: MetaTestConfig,
              lr: float | InnerOptimizer, device="cpu", dtype="float32", per_seed_phi: bool = True,
              progress=None) -> dict:
    """Curves of every family metric for L_phi and for MSE, one row per seed.

    ``phi`` is stacked (S, ...) with one loss per seed id when ``per_seed_phi``; otherwise a
    single loss evaluated on each seed's tasks. Seed s draws its test tasks and initial models
    from its own 'test' stream, so learned and plain training start from identical models.
    ``progress(done, total)``, if given, hears of the SGD steps of both runs (about 100 calls).
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
    record = sorted(set(range(cfg.steps + 1)) | set(cfg.horizons))
    count = _StepCounter(progress, 2 * horizon)
    runs = {
        "learned": fit(family, count(learned_objective(family, spec, phi)), theta, data, horizon, opt, record),
        "mse": fit(family, count(family.plain_loss), theta, data, horizon, opt, record),
    }
    idx = {k: i for i, k in enumerate(record)}
    curve_rows = [idx[k] for k in range(cfg.steps + 1)]
    report = {"steps": cfg.steps, "tasks": cfg.tasks, "lr": opt.lr, "optimizer": opt.to_dict(),
              "seed_ids": list(seed_ids), "curves": {},
              "final": {}, "horizon": []}
    for name, curves in runs.items():
        per_seed = {m: c.mean(-1) for m, c in curves.items()}  # (R, S): mean over tasks
        report["curves"][name] = {m: json_clean(v[curve_rows].T.tolist()) for m, v in per_seed.items()}
        report["final"][name] = {m: json_clean(v[idx[cfg.steps]].tolist()) for m, v in per_seed.items()}
    for h in sorted(set(cfg.horizons)):
        row = {"steps": h}
        for name, curves in runs.items():
            row[name] = {m: json_clean(float(c[idx[h]].mean())) for m, c in curves.items()}
        metric = family.heldout_metric
        row["heldout_ratio"] = _ratio(row["learned"].get(metric), row["mse"].get(metric))
        if metric in runs["learned"]:  # per seed: a published loss is one seed's
            per_seed = runs["learned"][metric][idx[h]].mean(-1) / runs["mse"][metric][idx[h]].mean(-1)
            row["heldout_ratio_per_seed"] = json_clean(per_seed.tolist())
        report["horizon"].append(row)
    if family.baseline_lrs:
        at = sorted({cfg.steps, *cfg.horizons})
        report["plain_best_lr"] = best_of_grid(family, theta, data, family.baseline_lrs, at, opt)
    return report


class _StepCounter:
    """Wraps the objectives ``fit`` calls once per SGD step, to report steps done (every 1%)."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0
        self.every = max(1, total // 100)

    def __call__(self, objective):
        if self.progress is None:
            return objective

        def counted(theta, data):
            self.done += 1
            if self.done % self.every == 0 or self.done == self.total:
                self.progress(self.done, self.total)
            return objective(theta, data)

        return counted


def best_of_grid(family: TaskFamily, theta: dict, data: dict, lrs, record: list[int],
                 opt: InnerOptimizer | None = None) -> dict:
    """The plain loss at each lr of a grid (with the inner optimizer ``opt``, SGD if none), and at each
    recorded step the best lr's metrics (the lowest ``heldout_metric`` over seeds and tasks): a
    baseline whose lr was tuned on the test tasks."""
    metric = family.heldout_metric
    opt = opt or InnerOptimizer("sgd")
    runs = {lr: fit(family, family.plain_loss, theta, data, max(record), replace(opt, lr=lr), record) for lr in lrs}
    out = {"lrs": list(lrs), "metric": metric, "steps": {}}
    for i, k in enumerate(record):
        best = min(lrs, key=lambda lr: _nan_last(float(runs[lr][metric][i].mean())))
        out["steps"][str(k)] = {"lr": best, **{m: json_clean(float(c[i].mean())) for m, c in runs[best].items()},
                                "per_seed": {m: json_clean(c[i].mean(-1).tolist()) for m, c in runs[best].items()}}
    return out


def _nan_last(v: float) -> float:
    return v if v == v else float("inf")


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None
