"""Which seed's loss is published, and at which lr: chosen on meta-validation tasks only.

Each seed's loss is tried at every lr factor of the grid (ml3core.compare) against the plain loss
at its best lr for each horizon. A seed recommends the factor with its best worst ratio over the
horizons (a loss whose gain was a step size then shows none), and the published seed is the one
whose recommended lr does best. Meta-test tasks never enter this choice; the verdict says where
the chosen seed beats the tuned baseline.
"""

from __future__ import annotations

import math

import torch

from .compare import StepCounter, best_baseline, compare, ratio, robust_fit, verdict
from .config import json_clean
from .inner import InnerOptimizer
from .losses import LossSpec
from .sampling import broadcast_seeds, learned_objective
from .tasks import TaskFamily


def default_horizons(train_horizon: int) -> list[int]:
    """10, 100, ... below the training horizon H, and H."""
    return sorted({h for h in (10, 100, 1000, 10_000) if h < train_horizon} | {train_horizon})


def choose_published(family: TaskFamily, spec: LossSpec, phi: dict, opt: InnerOptimizer, theta: dict, data: dict,
                     horizons: list[int], progress=None) -> dict:
    """phi stacked (S, ...); theta and data the meta-validation models and tasks (S, T, ...).
    Returns the per-seed ratios at every horizon, each seed's recommended lr factor, the chosen
    index and its verdict (JSON)."""
    metric, hs = family.heldout_metric, sorted(set(horizons))
    phi = broadcast_seeds({k: v.detach() for k, v in phi.items()})
    noisy = bool(family.robust_baselines())
    count = StepCounter(progress, (3 if noisy else 2) * hs[-1])
    cmp = compare(family, learned_objective(family, spec, phi), theta, data, opt, hs, count=count)
    reference = cmp.tuned(cmp.plain, metric)[0][metric].mean(-1)  # (R, S): the tuned plain loss
    best = None
    if noisy:  # noisy train points: the best of the tuned plain loss and every tuned robust loss
        baselines, runs, grid = robust_fit(family, theta, data, opt, cmp.factors, hs, count)
        best = best_baseline(cmp, baselines, runs, grid, hs, metric)
        reference = best["reference"]
    every = ratio(cmp.learned[metric].mean(-1), reference.unsqueeze(-1))  # (R, S, G): L_phi at each factor
    worst_each = every.max(0).values.nan_to_num(nan=math.inf, posinf=math.inf)  # (S, G)
    factors = [cmp.learned_factors[int(g)] for g in worst_each.argmin(-1)]  # each seed's recommended factor
    r = cmp.ratios(metric, factors)
    ratios = every.gather(-1, cmp.index(factors, len(factors))[0].expand(len(hs), -1).unsqueeze(-1)).squeeze(-1)
    worst = ratios.max(0).values.nan_to_num(nan=math.inf, posinf=math.inf)  # (S,)
    chosen = int(torch.argmin(worst))
    against = "the best of the plain and robust losses, each" if noisy else "plain"
    out = {
        "metric": f"worst ratio of {metric} (learned at its recommended lr / {against} at its best lr for that "
                  f"horizon) over {hs} {opt.name} steps on {next(iter(theta.values())).shape[1]} "
                  "meta-validation tasks",
        "horizons": hs,
        "ratios": {str(h): json_clean(ratios[i].tolist()) for i, h in enumerate(hs)},
        "ratios_same_lr": {str(h): json_clean(r["same_lr"][i].tolist()) for i, h in enumerate(hs)},
        "tuned_lr": {str(h): r["tuned_lr"][i].tolist() for i, h in enumerate(hs)},
        "lr_factor": factors,
        "recommended_lr": cmp.lrs(factors).tolist(),
        "worst_ratio": json_clean(worst.tolist()),
        "chosen_index": chosen,
        "verdict": verdict({h: json_clean(float(ratios[i, chosen])) for i, h in enumerate(hs)}),
    }
    if best is not None:
        out["ratios_vs_tuned"] = {str(h): json_clean(r["vs_tuned"][i].tolist()) for i, h in enumerate(hs)}
        out["best_baseline"] = {str(h): [best["names"][int(c)] for c in best["best"][i]] for i, h in enumerate(hs)}
    return out
