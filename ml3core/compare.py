"""Learned vs plain, judged as a user would judge it: against the plain loss at its best learning rate.

A user who would otherwise tune the plain loss's learning rate compares a learned loss with the
plain loss at the lr that is best *for the number of steps they train*. So every comparison
trains both losses at a grid of lr factors around the recommended lr, as one batch (the grid is
a batch axis, like seeds and tasks), and reads three ratios of the held-out metric at each
recorded step, per seed (below 1: the learned loss wins):

    same_lr     learned at its lr / plain at the same lr (the paper's comparison)
    vs_tuned    learned at its lr / plain at its best lr for that step (the standard)
    both_tuned  learned at its best lr / plain at its best lr (what the loss's shape alone is worth)

One divergence rule everywhere: a run whose metric is not finite is infinitely bad, so it is never
the best lr, and a learned loss that diverges has ratio inf (null in JSON).

A family with noisy train points (``TaskFamily.robust_baselines``) is also judged against
hand-designed robust losses (ml3core.robust), each at every hyperparameter of its grid and every lr
of the same grid (``robust_fit``, one batch); ``best_baseline`` picks, per step and seed, the best of
them and of the tuned plain loss, and its ratio ``vs_best``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .config import check
from .inner import InnerOptimizer
from .rollout import fit
from .tasks import TaskFamily

# thirds of a decade from 0.1x to 46x the recommended lr (the lr itself is one of them): the plain loss's
# best lr is often well above a learned loss's (sine: MSE's is about 20x the paper's lr of 0.001)
LR_FACTORS = (0.1, 0.215, 0.464, 1.0, 2.15, 4.64, 10.0, 21.5, 46.4)
RATIOS = ("same_lr", "vs_tuned", "both_tuned")


def check_factors(factors, name: str) -> list[float]:
    check(isinstance(factors, list) and 0 < len(factors) <= 32
          and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 1e-4 <= f <= 1e4 for f in factors),
          name, "a list of 1..32 lr factors in [1e-4, 1e4], e.g. [0.1, 0.3, 1, 3, 10]")
    return sorted({float(f) for f in factors} | {1.0})


def tile(tree: dict, n: int) -> dict:
    """(S, T, ...) -> (S, n*T, ...): every model and task n times, grid index first."""
    out = {}
    for k, v in tree.items():
        out[k] = v if v.dim() < 2 else v.unsqueeze(1).expand(v.shape[0], n, *v.shape[1:]).flatten(1, 2)
    return out


def grid_fit(family: TaskFamily, objective, theta: dict, data: dict, opt: InnerOptimizer, factors: list[float],
             record_at: list[int]) -> dict:
    """``fit`` at every lr ``factor * opt.lr`` in one batch: {metric: (R, S, G, T)}."""
    G = len(factors)
    S, T = next(iter(theta.values())).shape[:2]
    scale = torch.tensor(factors, dtype=torch.float64).repeat_interleave(T).expand(S, G * T)
    curves = fit(family, objective, tile(theta, G), tile(data, G), max(record_at), opt, record_at,
                 lr_scale=None if factors == [1.0] else scale)
    return {m: c.view(c.shape[0], S, G, T) for m, c in curves.items()}


@dataclass
class Comparison:
    """Both losses' metrics at every recorded step and lr factor: {metric: (R, S, G, T)}, G the
    number of the run's factors (the plain loss's grid; the learned loss's own list)."""

    steps: list[int]  # R
    factors: list[float]  # the plain loss's lr factors
    learned_factors: list[float]  # the learned loss's
    lr: float
    plain: dict
    learned: dict

    def row(self, step: int) -> int:
        return self.steps.index(step)

    def index(self, at: list[float] | None, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per seed, the index of the learned loss's lr factor (``at``, default 1: the lr it was
        given) in the learned and in the plain runs: two (S,) tensors."""
        at = [1.0] * S if at is None else at
        return (torch.tensor([self.learned_factors.index(f) for f in at]),
                torch.tensor([self.factors.index(f) for f in at]))

    def at_lr(self, runs: dict, idx: torch.Tensor) -> dict:
        """Metrics at one lr factor per seed (``idx``, (S,) indices into the runs' factors): {metric: (R, S, T)}."""
        return {m: _pick(c, idx.expand(c.shape[0], -1)) for m, c in runs.items()}

    def tuned(self, runs: dict, metric: str) -> tuple[dict, torch.Tensor]:
        """Metrics at the best lr factor per step and seed (lowest mean ``metric`` over tasks; not
        finite counts as inf): ({metric: (R, S, T)}, factor index (R, S))."""
        best = runs[metric].mean(-1).nan_to_num(nan=math.inf, posinf=math.inf).argmin(-1)  # (R, S)
        return {m: _pick(c, best) for m, c in runs.items()}, best

    def ratios(self, metric: str, at: list[float] | None = None) -> dict:
        """The three ratios per step and seed (R, S), and the chosen lrs: see the module docstring.
        ``at``: per seed, the lr factor the learned loss is used at (its recommended lr; default 1),
        and the plain loss's "same lr"."""
        S = next(iter(self.plain.values())).shape[1]
        li, pi = self.index(at, S)
        learned = self.at_lr(self.learned, li)[metric].mean(-1)
        plain = self.at_lr(self.plain, pi)[metric].mean(-1)
        (plain_best, plain_idx), (learned_best, learned_idx) = (self.tuned(r, metric) for r in (self.plain,
                                                                                                self.learned))
        tuned = plain_best[metric].mean(-1)
        return {"same_lr": ratio(learned, plain), "vs_tuned": ratio(learned, tuned),
                "both_tuned": ratio(learned_best[metric].mean(-1), tuned),
                "tuned_lr": self.lrs(self.factors)[plain_idx],
                "learned_tuned_lr": self.lrs(self.learned_factors)[learned_idx]}

    def lrs(self, factors: list[float]) -> torch.Tensor:
        return torch.tensor([float(f"{f * self.lr:.4g}") for f in factors], dtype=torch.float64)


def _pick(c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """c (R, S, G, T) at factor idx[r, s]: (R, S, T)."""
    return c.gather(2, idx[..., None, None].expand(*c.shape[:2], 1, c.shape[3])).squeeze(2)


def compare(family: TaskFamily, learned_objective, theta: dict, data: dict, opt: InnerOptimizer,
            record_at: list[int], factors=LR_FACTORS, tune_learned: bool = True, count=None,
            at: list[float] | None = None) -> Comparison:
    """Train the models in ``theta`` with the learned objective and with the family's plain loss at
    every lr factor of ``factors``; the learned one at every factor too when ``tune_learned``, else
    only at the factors of ``at`` (one per seed, default 1). ``count`` wraps each objective (progress).

    The plain loss's runs do not depend on L_phi: they are kept (a few, keyed by everything they
    depend on, the models' and tasks' values included), so comparing another loss on the same tasks
    trains only the learned one."""
    used = {float(f) for f in (at or [1.0])}
    factors = sorted({float(f) for f in factors} | used)
    record_at = sorted(set(record_at))
    key = _plain_key(family, theta, data, opt, factors, record_at)
    plain_objective = count(family.plain_loss) if count else family.plain_loss
    plain = _kept(_PLAIN, key, lambda: grid_fit(family, plain_objective, theta, data, opt, factors, record_at))
    learned_objective = count(learned_objective) if count else learned_objective
    learned_factors = factors if tune_learned else sorted(used)
    learned = grid_fit(family, learned_objective, theta, data, opt, learned_factors, record_at)
    if count is not None and hasattr(count, "finish"):
        count.finish()
    return Comparison(record_at, factors, learned_factors, opt.lr, plain, learned)


class StepCounter:
    """Wraps the objectives ``fit`` calls once per step, to report ``progress(done, total)`` (every 1%)."""

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

    def finish(self) -> None:
        """All steps done (kept plain runs skip theirs, so the count may fall short)."""
        if self.progress is not None:
            self.progress(self.total, self.total)


PLAIN_RUNS_KEPT = 8
_PLAIN: OrderedDict = OrderedDict()  # key -> the plain loss's runs, {metric: (R, S, G, T)}
_ROBUST: OrderedDict = OrderedDict()  # key -> the robust baselines' runs, {metric: (R, S, B, G, T)}
_LOCK = threading.Lock()


def _kept(cache: OrderedDict, key: str, train):
    """The runs kept under ``key``, or ``train()``'s, kept (the oldest beyond PLAIN_RUNS_KEPT dropped)."""
    with _LOCK:
        runs = cache.get(key)
    if runs is None:
        runs = train()
        with _LOCK:
            cache[key] = runs
            while len(cache) > PLAIN_RUNS_KEPT:
                cache.popitem(last=False)
    return runs


# bounded-gradient losses (L1, Huber, Cauchy, GCE) take larger steps than the plain loss: their grid goes on
# above the plain loss's top factor, so that a baseline's best lr is not cut off at the grid's edge
ROBUST_EXTRA = (2.15, 4.64, 10.0)


def robust_grid(factors: list[float]) -> list[float]:
    top = max(factors)
    return sorted({float(f) for f in factors} | {float(f"{top * x:.4g}") for x in ROBUST_EXTRA})


def robust_fit(family: TaskFamily, theta: dict, data: dict, opt: InnerOptimizer, factors: list[float],
               record_at: list[int], count=None) -> tuple[list, dict, list[float]]:
    """Every robust baseline of ``family`` (none for a family without noise: ([], {}, []), no cost) at every
    lr factor of ``robust_grid(factors)``, as one batch: (baselines, {metric: (R, S, B, G, T)}, the factors).
    Kept like the plain loss's runs."""
    from . import robust

    baselines = family.robust_baselines()
    if not baselines:
        return [], {}, []
    factors, record_at = robust_grid(factors), sorted(set(record_at))
    key = _plain_key(family, theta, data, opt, factors, record_at) + repr([b.name for b in baselines])

    def train() -> dict:
        B, G = len(baselines), len(factors)
        S, T = next(iter(theta.values())).shape[:2]
        scale = torch.tensor(factors, dtype=torch.float64).repeat(B).repeat_interleave(T).expand(S, B * G * T)
        objective = robust.objective(family, baselines)
        curves = fit(family, count(objective) if count else objective, tile(theta, B * G), tile(data, B * G),
                     max(record_at), opt, record_at, lr_scale=scale)
        return {m: c.view(c.shape[0], S, B, G, T) for m, c in curves.items()}

    return baselines, _kept(_ROBUST, key, train), factors


def best_baseline(cmp: Comparison, baselines: list, runs: dict, robust_factors: list[float], steps: list[int],
                  metric: str, at: list[float] | None = None) -> dict:
    """The best tuned baseline per step and seed: the plain loss and every robust baseline (``robust_fit``'s
    runs, recorded at ``steps``, R of them), each at its best lr factor for that step. Returns {"names": C
    candidate names (the plain loss first), "metric": (R, S, C) each one's mean ``metric`` at its best lr,
    "lr": (R, S, C) that lr, "best": (R, S) the best candidate, "reference": (R, S) its metric, "vs_best": (R, S)
    learned (at ``at``) / the best}. The robust runs are on their own grid, ``robust_factors``."""
    rows = [cmp.row(h) for h in steps]
    cmp = Comparison(list(steps), cmp.factors, cmp.learned_factors, cmp.lr,
                     {m: c[rows] for m, c in cmp.plain.items()}, {m: c[rows] for m, c in cmp.learned.items()})
    S = next(iter(cmp.plain.values())).shape[1]
    check(all(c.shape[3] == len(robust_factors) for c in runs.values()), "lr_factors", "the robust grid")
    plain_name = "cross_entropy" if baselines and baselines[0].loss in ("gce", "label_smoothing", "sce") else "mse"
    tuned, idx = cmp.tuned(cmp.plain, metric)
    lrs = cmp.lrs(cmp.factors)
    values, chosen = [tuned[metric].mean(-1)], [lrs[idx]]
    robust_lrs = cmp.lrs(robust_factors)
    for b in range(len(baselines)):
        best_b, idx_b = cmp.tuned({m: c[:, :, b] for m, c in runs.items()}, metric)
        values.append(best_b[metric].mean(-1))
        chosen.append(robust_lrs[idx_b])
    value = torch.stack(values, -1).nan_to_num(nan=math.inf, posinf=math.inf)  # (R, S, C)
    best = value.argmin(-1)
    li, _ = cmp.index(at, S)
    learned = cmp.at_lr(cmp.learned, li)[metric].mean(-1)
    reference = value.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    return {"names": [plain_name, *(b.name for b in baselines)], "metric": value, "lr": torch.stack(chosen, -1),
            "best": best, "reference": reference, "vs_best": ratio(learned, reference)}


def _plain_key(family: TaskFamily, theta: dict, data: dict, opt: InnerOptimizer, factors, record_at) -> str:
    """What the plain loss's runs depend on: the family and its settings, the optimizer, the grid, the
    steps recorded and the values of the initial models and the tasks."""
    h = hashlib.sha256(repr((type(family).__qualname__, family.config, opt, factors, record_at,
                             torch.__version__)).encode())
    for tree in (theta, data):
        for k in sorted(tree):
            v = tree[k].detach()
            h.update(f"{k}{v.dtype}{tuple(v.shape)}{v.device}".encode())
            h.update(v.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, inf where a is not finite (a diverged learned loss loses, whatever the baseline did)."""
    return torch.where(torch.isfinite(a), a / b, torch.full_like(a, math.inf))


def verdict(ratios: dict[int, float | None]) -> str:
    """One line from vs-tuned ratios per horizon (None: not finite): where the loss beats the tuned baseline."""
    wins = [h for h, r in sorted(ratios.items()) if r is not None and r < 1.0]
    if not wins:
        return "no gain over a tuned baseline"
    return "beats a tuned baseline at " + ", ".join(f"{h}" for h in wins) + " steps"
