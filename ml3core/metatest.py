"""Meta-test: train fresh models with L_phi and with plain MSE on held-out tasks, side by side.

Index k of every curve means "after k SGD steps" (k = 0 is the initial model). Each task has
train points (the SGD steps use only these) and held-out points; both are reported. The
horizon report shows the same at longer training, where a loss meta-trained on a short
unroll may stop paying off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import check, check_range, from_dict
from .engine import DTYPES, fit, fresh_theta, json_clean, learned_objective, sample_data, stream_generator
from .losses import LossSpec
from .tasks import TaskFamily


@dataclass
class MetaTestConfig:
    tasks: int = 10
    steps: int = 100
    lr: float = 0.0  # 0: the inner learning rate of meta-training
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
              lr: float, device="cpu", dtype="float32", per_seed_phi: bool = True) -> dict:
    """Curves of every family metric for L_phi and for MSE, one row per seed.

    ``phi`` is stacked (S, ...) with one loss per seed id when ``per_seed_phi``; otherwise a
    single loss evaluated on each seed's tasks. Seed s draws its test tasks and initial models
    from its own 'test' stream, so learned and plain training start from identical models.
    """
    dt = DTYPES[dtype]
    lr = cfg.lr or lr
    gens = [stream_generator(s, "test") for s in seed_ids]
    data = sample_data(family, gens, cfg.tasks, "test", device, dt)
    theta = fresh_theta(family, gens, cfg.tasks, device, dt)
    phi = {k: v.to(device, dt) for k, v in phi.items()}
    phi = {k: v.unsqueeze(1) for k, v in phi.items()} if per_seed_phi else phi
    horizon = max([cfg.steps, *cfg.horizons])
    record = sorted(set(range(cfg.steps + 1)) | set(cfg.horizons))
    runs = {
        "learned": fit(family, learned_objective(family, spec, phi), theta, data, horizon, lr, record),
        "mse": fit(family, family.plain_loss, theta, data, horizon, lr, record),
    }
    idx = {k: i for i, k in enumerate(record)}
    curve_rows = [idx[k] for k in range(cfg.steps + 1)]
    report = {"steps": cfg.steps, "tasks": cfg.tasks, "lr": lr, "seed_ids": list(seed_ids), "curves": {},
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
        report["horizon"].append(row)
    if family.baseline_lrs:
        at = sorted({cfg.steps, *cfg.horizons})
        report["plain_best_lr"] = best_of_grid(family, theta, data, family.baseline_lrs, at)
    return report


def best_of_grid(family: TaskFamily, theta: dict, data: dict, lrs, record: list[int]) -> dict:
    """The plain loss at each lr of a grid, and at each recorded step the best lr's metrics (the
    lowest ``heldout_metric`` over seeds and tasks): a baseline whose lr was tuned on the test tasks."""
    metric = family.heldout_metric
    runs = {lr: fit(family, family.plain_loss, theta, data, max(record), lr, record) for lr in lrs}
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
