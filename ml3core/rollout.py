"""The inner loop, written once: models trained by an inner optimizer on an objective.

Models are parameter dicts with leading batch dims (seeds, tasks); one call trains them all.
``rollout`` is the one loop; everything that trains models goes through it:

    fit       no graph between steps, metrics recorded (meta-test, validation, curves, examples)
    unroll    differentiable in phi, optionally in checkpointed segments (the meta-gradient)
    warm start of the persistent schedule: no graph, each model stops at its own age
"""

from __future__ import annotations

import torch

from .inner import InnerOptimizer, per_model, restart
from .tasks import TaskFamily


def rollout(objective, opt: InnerOptimizer, theta: dict, state: dict, data: dict, steps: int, *,
            differentiable: bool = False, first_order: bool = False, lr=None, stop_at=None,
            on_step=None) -> tuple[dict, dict]:
    """``steps`` updates of every model in ``theta`` (optimizer state ``state``) on
    ``objective(theta, data)`` (one value per model); returns the new (theta, state).

    differentiable  keep the graph through every update (``theta`` as given, its leaves may require
                    grad): the result is a function of whatever the objective closes over (phi).
                    ``first_order`` drops d theta_m / d theta_{m-1} (not the mixed d grad / d phi).
                    Otherwise the models are copies trained without a graph, in place.
    lr              one lr per model, a tensor of the models' leading dims (S, T) (None: the optimizer's).
    stop_at         a tensor broadcastable to (S, T): model i takes only its first stop_at[i] steps.
    on_step         f(k, theta) after step k, and once with k = 0 before the first.
    """
    if not differentiable:
        theta = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    leaves = list(theta.values())
    fast = not differentiable and opt.name == "sgd" and stop_at is None  # plain SGD, in place
    rates = [opt.lr if lr is None else per_model(lr, v) for v in leaves]
    if on_step is not None:
        on_step(0, theta)
    for k in range(steps):
        at = theta
        if differentiable and first_order:
            at = {n: v.detach().requires_grad_() for n, v in theta.items()}
        with torch.enable_grad():
            loss = objective(at, data)
            grads = torch.autograd.grad(loss.sum(), list(at.values()), create_graph=differentiable)
        if fast:
            with torch.no_grad():
                for v, g, r in zip(leaves, grads, rates, strict=True):
                    v.sub_(g * r) if lr is not None else v.sub_(g, alpha=r)
        else:
            with torch.set_grad_enabled(differentiable):
                new, new_state = opt.step(theta, dict(zip(theta, grads, strict=True)), state, lr)
                if stop_at is not None:
                    done = (torch.as_tensor(stop_at, device=leaves[0].device) <= k).expand(leaves[0].shape[:2])
                    new, new_state = restart(new, theta, done), restart(new_state, state, done)
            state = new_state
            if differentiable:
                theta = new
            else:
                with torch.no_grad():
                    for v, n in zip(leaves, new.values(), strict=True):
                        v.copy_(n)
        if on_step is not None:
            on_step(k + 1, theta)
    return theta, state


def fit(family: TaskFamily, objective, theta: dict, data: dict, steps: int, lr: float | InnerOptimizer,
        record_at=None, lr_scale=None) -> dict:
    """Train the models in ``theta`` on ``objective`` with an inner optimizer (SGD at ``lr`` when
    given a number), without a graph between steps. ``lr_scale``, a tensor of the models' leading
    dims (S, T), multiplies each model's lr (an lr grid as a batch axis).

    Returns {metric: (R, *batch)} with the family's metrics after k steps for each recorded
    k (k = 0 is the initial model; every step unless ``record_at`` names some).
    """
    record_at = set(range(steps + 1)) if record_at is None else set(record_at)
    opt = lr if isinstance(lr, InnerOptimizer) else InnerOptimizer("sgd", lr)
    leaf = next(iter(theta.values()))
    rate = None if lr_scale is None else opt.lr * lr_scale.to(leaf)
    curves: dict[str, list] = {}

    def record(k, theta):
        if k in record_at:
            with torch.no_grad():
                for name, value in family.metrics(theta, data).items():
                    curves.setdefault(name, []).append(value.detach())

    rollout(objective, opt, theta, opt.init(theta), data, steps, lr=rate, on_step=record)
    return {name: torch.stack(vals) for name, vals in curves.items()}


def unroll(objective_for, phi: dict, opt: InnerOptimizer, theta0: dict, state: dict, data: dict, steps: int,
           every: int = 0, first_order: bool = False) -> tuple[dict, dict]:
    """``steps`` differentiable updates from (theta0, state) on ``objective_for(phi)``; the result is
    differentiable in ``phi``. ``every`` = k > 0 keeps only every k-th state and recomputes the steps
    between them in the backward pass: the exact meta-gradient in O(steps/k + k) steps of memory."""
    theta = {k: v.detach().requires_grad_() for k, v in theta0.items()}

    def run(p, th, st, n):
        return rollout(objective_for(p), opt, th, st, data, n, differentiable=True, first_order=first_order)

    if not every or every >= steps:
        return run(phi, theta, state, steps)
    names, snames, pnames = list(theta), list(state), list(phi)

    def flat_run(p, carry, n):  # flat tensors in and out, as _Checkpointed needs them
        th, st = run(dict(zip(pnames, p, strict=True)), dict(zip(names, carry[:len(names)], strict=True)),
                     dict(zip(snames, carry[len(names):], strict=True)), n)
        return (*th.values(), *st.values())

    flat = _Checkpointed.apply(flat_run, len(pnames), steps, every, *phi.values(), *theta.values(), *state.values())
    return dict(zip(names, flat[:len(names)], strict=True)), dict(zip(snames, flat[len(names):], strict=True))


class _Checkpointed(torch.autograd.Function):
    """An unroll that keeps only the states at segment boundaries: the backward pass recomputes
    each segment's graph from its boundary, last segment first, and hands the adjoint back one
    segment at a time. The meta-gradient is the exact one; the graph alive at any time is one
    segment's (k steps) plus M/k boundary states."""

    @staticmethod
    def forward(ctx, run, n_phi, steps, every, *tensors):
        phi, carry = tensors[:n_phi], tensors[n_phi:]
        boundaries, lengths = [], []
        for start in range(0, steps, every):
            n = min(every, steps - start)
            boundaries.append(carry)
            lengths.append(n)
            with torch.enable_grad():  # inner gradients need a graph within a step, nothing is kept
                carry = tuple(t.detach() for t in run(phi, tuple(t.detach().requires_grad_() for t in carry), n))
        ctx.run, ctx.lengths, ctx.n_phi, ctx.n_carry = run, lengths, n_phi, len(carry)
        ctx.save_for_backward(*phi, *[t for b in boundaries for t in b])
        return carry

    @staticmethod
    def backward(ctx, *adjoint):
        saved = ctx.saved_tensors
        phi, flat = saved[:ctx.n_phi], saved[ctx.n_phi:]
        m = ctx.n_carry
        boundaries = [flat[i * m:(i + 1) * m] for i in range(len(ctx.lengths))]
        phi_grads = [torch.zeros_like(p) for p in phi]
        adjoint = [torch.zeros_like(b) if a is None else a for a, b in zip(adjoint, boundaries[-1], strict=True)]
        for start, n in zip(reversed(boundaries), reversed(ctx.lengths), strict=True):
            with torch.enable_grad():
                p = tuple(t.detach().requires_grad_() for t in phi)
                c = tuple(t.detach().requires_grad_() for t in start)
                out = ctx.run(p, c, n)
                grads = torch.autograd.grad(out, (*p, *c), adjoint, allow_unused=True)
            for acc, g in zip(phi_grads, grads[:len(p)], strict=True):
                if g is not None:
                    acc.add_(g)
            adjoint = [torch.zeros_like(t) if g is None else g for g, t in zip(grads[len(p):], c, strict=True)]
        return (None, None, None, None, *phi_grads, *adjoint)
