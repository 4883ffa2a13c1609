"""The review's Fig. 7 (inverse dynamics with a physics prior): one loss meta-trained per task-loss
variant, each meta-tested against plain torque MSE on the same held-out tasks. Wiring of the layers
below (api, engine, metatest) lives here, above the task family it runs."""

from __future__ import annotations

import torch

from ..api import parse_spec
from ..config import check
from ..engine import MetaTrainer
from ..metatest import dense_curves, meta_test
from ..portable import _network, loss_features
from ..sampling import fresh_theta, sample_data, stream_generator
from ..tasks.inverse_dynamics import TASK_LOSSES, InverseDynamicsFamily
from ..train_config import DTYPES

VARIANT_LABELS = {"mse": "L_φ learned with torque MSE", "prior": "L_φ learned with the prior",
                  "mixed": "L_φ learned with β·MSE + γ·prior"}


def experiment(spec: dict | None = None, variants=TASK_LOSSES, hooks=None, on_phase=None) -> dict:
    """Meta-train one loss per task-loss variant, meta-test each against plain torque MSE on the
    same held-out tasks from the same initial models, and draw the curves (review Fig. 7).

    ``spec`` is a job spec (seeds, iterations, ``task`` settings such as the robot); its
    ``task.task_loss`` is replaced by each variant in turn. Returns {"summary": end points per
    curve, "reports": meta-test report per variant, "figure": PNG bytes}. ``on_phase(phase, done,
    total)`` hears of each meta-test's SGD steps (phase "meta-test VARIANT").
    """
    spec = dict(spec or {})
    task = {**spec.pop("task", {}), "family": InverseDynamicsFamily.name}
    check(len(variants) > 0 and all(v in TASK_LOSSES for v in variants), "variants", f"some of {TASK_LOSSES}")
    reports, weights = {}, {}
    for variant in variants:
        plan = parse_spec({**spec, "task": {**task, "task_loss": variant}})
        cfg = plan.train
        result = MetaTrainer(plan.family, plan.loss, cfg).run(hooks)
        progress = (lambda d, t, v=variant: on_phase(f"meta-test {v}", d, t)) if on_phase else None
        reports[variant] = meta_test(plan.family, plan.loss, result.phi, cfg.seed_ids, plan.meta_test,
                                     cfg.inner_lr, cfg.device, cfg.dtype, progress=progress)
        weights[VARIANT_LABELS[variant]] = mean_weights(plan, result.phi)
    robot = plan.family.config.robot
    first = reports[variants[0]]
    dense = {v: dense_curves(r) for v, r in reports.items()}  # every step 0..steps: the figure's and the summary's
    plain = {m: [sum(col) / len(col) for col in zip(*rows, strict=True)]
             for m, rows in dense[variants[0]]["mse"].items() if all(None not in r for r in rows)}
    curves = {"MSE": dense[variants[0]]["mse"]}
    curves.update({VARIANT_LABELS[v]: c["learned"] for v, c in dense.items()})
    summary = {"robot": robot, "steps": first["steps"], "tasks": first["tasks"], "seed_ids": first["seed_ids"],
               "final": {name: {m: _mean(rows, -1) for m, rows in c.items()} for name, c in curves.items()},
               # a seed whose training diverged has no final value: ``final`` is the mean of the others
               "diverged_seeds": {name: sum(r[-1] is None for r in c["mse_heldout"]) for name, c in curves.items()},
               "horizon": [{"steps": row["steps"], "MSE": row["mse"],
                            **{VARIANT_LABELS[v]: r["horizon"][i]["learned"] for v, r in reports.items()}}
                           for i, row in enumerate(first["horizon"])],
               "mse_at_equal_torque_error": {VARIANT_LABELS[v]: _at_equal_torque(plain, c) for v, c in dense.items()},
               # per seed, each joint's learned weight averaged over the meta-test tasks' held-out points
               "mean_weights": weights}
    return {"summary": summary, "reports": reports, "figure": _figure7(curves, first["steps"], robot)}


def mean_weights(plan, phi: dict) -> list[list[float]] | None:
    """Per seed, the mean over the held-out points of its meta-test tasks (the tasks ``meta_test``
    draws) of each joint's weight w_phi,j, for a ``weighted_se`` loss with one weight per joint whose
    inputs do not include pred (then the weight depends on the data alone); None for other forms."""
    arch = plan.loss.architecture()
    if arch.get("form") != "weighted_se" or arch.get("weights") != "per_output" or "pred" in arch["inputs"]:
        return None
    cfg, family = plan.train, plan.family
    gens = [stream_generator(s, "test") for s in cfg.seed_ids]
    data = sample_data(family, gens, plan.meta_test.tasks, "test", cfg.device, DTYPES[cfg.dtype])
    theta = fresh_theta(family, gens, plan.meta_test.tasks, cfg.device, DTYPES[cfg.dtype])
    pred, target, x = family.loss_inputs(theta, {"x": data["x_heldout"], "y": data["y_heldout"]})
    params = {k: v.to(cfg.device, DTYPES[cfg.dtype]).unsqueeze(1) for k, v in phi.items()}  # (S, 1, ...): per seed
    with torch.no_grad():
        w = _network(params, arch, loss_features(arch, pred, target, x))  # (S, tasks, N, joints)
    return [[round(float(v), 4) for v in seed] for seed in w.flatten(1, 2).mean(1)]


def _at_equal_torque(plain: dict, curves: dict) -> dict | None:
    """Plain MSE's inertia error at its first step whose held-out torque MSE is as low as the
    learned loss's at the end: a loss that merely fits torques more slowly keeps M_theta near its
    initial value, so an inertia error is only better if it beats this."""
    target = _mean(curves["learned"]["mse_heldout"], -1)
    if target is None or "mse_heldout" not in plain:
        return None
    step = next((k for k, v in enumerate(plain["mse_heldout"]) if v <= target), None)
    return None if step is None else {"step": step, "mse_heldout": plain["mse_heldout"][step],
                                      "prior_heldout": plain["prior_heldout"][step]}


def _mean(rows, index):
    vals = [r[index] for r in rows if r[index] is not None]
    return sum(vals) / len(vals) if vals else None


def _figure7(curves: dict, steps: int, robot: str) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plots import LEARNED, PLAIN, SHAPED, _band, _png

    colors = {"MSE": PLAIN, VARIANT_LABELS["mse"]: LEARNED, VARIANT_LABELS["prior"]: SHAPED,
              VARIANT_LABELS["mixed"]: "tab:purple"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(steps + 1)
    for ax, metric, label in ((axes[0], "mse_heldout", "torque MSE, held-out trajectories (normalised)"),
                              (axes[1], "prior_heldout", "inertia error ‖D^-½(M − M_θ)D^-½‖² (held-out)")):
        for name, c in curves.items():
            _band(ax, x, c[metric], colors.get(name), "trained with " + name if name == "MSE" else name)
        ax.set_xlabel("gradient step (meta-test, torques only)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].set_title(f"Inverse dynamics, {robot}: held-out tasks")
    axes[1].legend(fontsize=8)
    return _png(fig)
