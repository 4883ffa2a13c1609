"""Hand-designed robust losses: the baselines a learned loss must beat on noisy train points.

Each is a per-task reduction like ``mse``/``cross_entropy`` (ml3core.tasks.base): (pred, target)
of shape (*batch, N, D) -> (*batch), the mean over points (and, for regression, output dims).

Regression (e = pred − target, elementwise):
    huber(δ)    ½e² where |e| ≤ δ, else δ(|e| − ½δ)           (torch's HuberLoss)
    l1          |e|
    cauchy(c)   (c²/2)·log(1 + (e/c)²)                         (Cauchy/Lorentzian, Barron's α = 0)
Classification (logits, one-hot or soft targets y; p = softmax(logits)):
    gce(q)              Σ_c y_c (1 − p_c^q)/q                  (Zhang & Sabuncu 2018: (1 − p_y^q)/q)
    label_smoothing(ε)  cross-entropy against (1 − ε)·y + ε/k
    sce(α, β)           α·CE + β·RCE, RCE = −Σ_c p_c·max(log y_c, A), A = −4   (Wang et al. 2019)

``GRIDS`` holds each loss's small hyperparameter grid; a meta-test of a noisy family trains every
entry at every lr of its grid (ml3core.compare.robust_fit) and reports the best of them and of
the tuned plain loss per horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SCE_A = -4.0  # log 0, clipped


def _mean(values):
    """(*batch, N, D) -> (*batch): mean over points and output dims, as ``mse``."""
    return values.flatten(-2).mean(-1)


def huber(pred, target, delta: float = 1.0):
    a = (pred - target).abs()
    return _mean(torch.where(a <= delta, 0.5 * a.square(), delta * (a - 0.5 * delta)))


def l1(pred, target):
    return _mean((pred - target).abs())


def cauchy(pred, target, c: float = 1.0):
    return _mean(0.5 * c * c * torch.log1p(((pred - target) / c).square()))


def gce(logits, target, q: float = 0.7):
    p = torch.softmax(logits, -1)
    return ((target * (1 - p.pow(q))).sum(-1) / q).mean(-1)


def label_smoothing(logits, target, eps: float = 0.1):
    k = target.shape[-1]
    smooth = (1 - eps) * target + eps / k
    return -(smooth * torch.log_softmax(logits, -1)).sum(-1).mean(-1)


def sce(logits, target, alpha: float = 0.1, beta: float = 1.0):
    logp = torch.log_softmax(logits, -1)
    ce = -(target * logp).sum(-1)
    log_y = torch.log(target.clamp_min(math.exp(SCE_A))).clamp_min(SCE_A)
    rce = -(logp.exp() * log_y).sum(-1)
    return (alpha * ce + beta * rce).mean(-1)


LOSSES = {"huber": huber, "l1": l1, "cauchy": cauchy, "gce": gce, "label_smoothing": label_smoothing, "sce": sce}
REGRESSION = ("huber", "l1", "cauchy")
CLASSIFICATION = ("gce", "label_smoothing", "sce")
GRIDS = {"huber": [{"delta": 0.1}, {"delta": 0.3}, {"delta": 1.0}], "l1": [{}],
         "cauchy": [{"c": 0.3}, {"c": 1.0}],
         "gce": [{"q": 0.3}, {"q": 0.7}], "label_smoothing": [{"eps": 0.1}, {"eps": 0.3}],
         "sce": [{"alpha": 0.1, "beta": 1.0}]}


@dataclass(frozen=True)
class Baseline:
    """One robust loss at one hyperparameter setting."""

    loss: str
    params: dict = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.loss}({inner})" if inner else self.loss

    def __call__(self, pred, target):
        return LOSSES[self.loss](pred, target, **self.params)

    def to_dict(self) -> dict:
        return {"name": self.name, "loss": self.loss, "params": dict(self.params)}


def grid(kind: str) -> list[Baseline]:
    """Every loss of a task type ("regression" or "classification") at every setting of its grid."""
    names = REGRESSION if kind == "regression" else CLASSIFICATION
    return [Baseline(n, dict(p)) for n in names for p in GRIDS[n]]


def baselines_for(family) -> list[Baseline]:
    """The robust baselines of a family whose train points are noisy: its config's ``label_noise``
    (classification) or ``outliers`` (regression) with a rate above 0; none otherwise."""
    from .tasks.noise import label_noise, outliers

    config = family.config
    if label_noise(getattr(config, "label_noise", 0.0)).rate > 0:
        return grid("classification")
    if outliers(getattr(config, "outliers", 0.0)).rate > 0:
        return grid("regression")
    return []


def objective(family, baselines: list[Baseline]):
    """theta -> one value per model, for models tiled ``len(baselines)`` times along dim 1 (baseline
    index first, as ``compare.tile``): each block of models trains with its own baseline, in one batch."""
    B = len(baselines)

    def fn(theta, data):
        pred, target, _ = family.loss_inputs(theta, data)
        preds, targets = pred.chunk(B, dim=1), target.chunk(B, dim=1)
        return torch.cat([b(p, t) for b, p, t in zip(baselines, preds, targets, strict=True)], dim=1)

    return fn
