"""Training models without a meta-gradient: the loop of meta-test, validation, curves and examples.

Models are parameter dicts with leading batch dims (seeds, tasks); one call trains them all.
"""

from __future__ import annotations

import torch

from .inner import InnerOptimizer, per_model
from .tasks import TaskFamily


def fit(family: TaskFamily, objective, theta: dict, data: dict, steps: int, lr: float | InnerOptimizer,
        record_at=None, lr_scale=None) -> dict:
    """Train the models in ``theta`` on ``objective(theta, data)`` (one value per model) with an inner
    optimizer (SGD at ``lr`` when given a number), without a graph between steps. ``lr_scale``, a
    tensor of the models' leading dims (S, T), multiplies each model's lr (an lr grid as a batch axis).

    Returns {metric: (R, *batch)} with the family's metrics after k steps for each recorded
    k (k = 0 is the initial model; every step unless ``record_at`` names some).
    """
    record_at = set(range(steps + 1)) if record_at is None else set(record_at)
    curves: dict[str, list] = {}

    def record():
        with torch.no_grad():
            for name, value in family.metrics(theta, data).items():
                curves.setdefault(name, []).append(value.detach())

    opt = lr if isinstance(lr, InnerOptimizer) else InnerOptimizer("sgd", lr)
    theta = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    leaves = list(theta.values())
    state = opt.init(theta)
    rate = None if lr_scale is None else opt.lr * lr_scale.to(leaves[0])
    rates = [opt.lr if rate is None else per_model(rate, v) for v in leaves]  # SGD: one lr per model
    if 0 in record_at:
        record()
    for k in range(1, steps + 1):
        with torch.enable_grad():
            loss = objective(theta, data)
            grads = torch.autograd.grad(loss.sum(), leaves)
        with torch.no_grad():  # in place: no graph is needed between steps
            if opt.name == "sgd":
                for v, g, r in zip(leaves, grads, rates, strict=True):
                    v.sub_(g * r) if rate is not None else v.sub_(g, alpha=r)
            else:
                new, state = opt.step(theta, dict(zip(theta, grads, strict=True)), state, rate)
                for v, n in zip(leaves, new.values(), strict=True):
                    v.copy_(n)
        if k in record_at:
            record()
    return {name: torch.stack(vals) for name, vals in curves.items()}
