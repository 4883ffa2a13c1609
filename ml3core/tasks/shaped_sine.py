"""Learning a frequency (review §3.2, paper §IV.B): y = sin(v·x), model f_ω(x) = sin(ω·x).

The MSE landscape over ω is badly non-convex, so SGD from ω₀ = 0.1 stops in a local minimum
unless v is close. At meta-train time the true v is known: the task loss
``task_loss="shaping"``, (ω − v)², is meant to shape L_φ into a loss with one basin at v (the
paper's claim; what holds is measured in tests/test_shaped_sine.py). ``"mse"`` meta-trains on
the MSE instead (the review's blue curve), ``"mixed"`` on β·MSE + γ·(ω − v)².

Defaults are the official code's: v ~ U[−5, 5], 64 points x ~ U[−5, 5] per task (the same
points for every inner step), ω₀ = 0.1, and L_φ on (x, f_ω(x), y) with 3 hidden layers of 10
ELU units, biases (zero-initialised; the official code fills 0.01) and a linear output. The
review's variant is ``points=1000, x_range=[-1, 1]``. That official loss does not reproduce the
paper's picture here; ``loss.form="weighted_se"`` (a learned weight on the squared error, see
``loss_defaults_for``), meta-trained on v ∈ [−7, 7] (the plotted ω range), does. The training settings are
``train_defaults()``; the official loop takes its φ step after every inner step of every task
in turn (40 Adam steps per iteration), here the 4 tasks run as a batch (10 per iteration).
Unlike the official code every task also has held-out points, and the meta-test frequencies
come from their own random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import check, check_interval, check_range
from ..losses import apply_loss
from .base import TaskFamily, TaskLoss, check_task_loss_weights, mse, uniform

TASK_LOSSES = ("mse", "shaping", "mixed")


@dataclass
class ShapedSineConfig:
    frequency: list[float] = field(default_factory=lambda: [-5.0, 5.0])  # v at meta-train
    test_frequency: list[float] = field(default_factory=lambda: [-5.0, 5.0])  # v at meta-test
    x_range: list[float] = field(default_factory=lambda: [-5.0, 5.0])
    points: int = 64
    heldout_points: int = 64
    omega0: float = 0.1  # every model starts here (official)
    task_loss: str = "shaping"  # mse | shaping | mixed
    beta: float = 1.0  # weight of the MSE in "mse" and "mixed"
    gamma: float = 1.0  # weight of (ω − v)² in "shaping" and "mixed"
    converged_tol: float = 0.05  # |ω − v| below this counts as converged

    def __post_init__(self):
        check_interval(self.frequency, "task.frequency", -1e3, 1e3)
        check_interval(self.test_frequency, "task.test_frequency", -1e3, 1e3)
        check_interval(self.x_range, "task.x_range")
        check_range(self.points, "task.points", 1, 100_000)
        check_range(self.heldout_points, "task.heldout_points", 1, 100_000)
        check_range(self.omega0, "task.omega0", -1e3, 1e3)
        check(self.task_loss in TASK_LOSSES, "task.task_loss", f"one of {TASK_LOSSES}")
        check_task_loss_weights(self.beta, self.gamma)
        check_range(self.converged_tol, "task.converged_tol", 0, 1e3)


class ShapedSineFamily(TaskFamily):
    """Learn the frequency v of sin(v·x); meta-train a loss shaped by the true v."""

    name = "shaped-sine"
    config_cls = ShapedSineConfig
    extra_metrics = ("param_error", "converged")
    cli_flags = {"--task-loss": ("task_loss", str, "task loss at meta-train: mse, shaping or mixed")}

    def loss_defaults(self) -> dict:
        return {"inputs": ["x", "pred", "target"], "hidden": [10, 10, 10], "activation": "elu",
                "bias": True, "output": "linear", "pred_dim": 1, "x_dim": 1}

    def loss_defaults_for(self, form: str) -> dict:
        """``weighted_se``: L_φ = mean_i exp(g_φ(x_i))·(f_ω(x_i) − y_i)², a learned weight per input.

        Why it works where the official net does not: sin(ω·x) is monotone in ω only while |ω·x| <
        π/2, so a loss that weighs the points near x = 0 and ignores the rest is a bowl in ω with its
        bottom exactly at v. The weight reads x alone, so the bowl is the same for every v; exp lets
        it fall by orders of magnitude away from x = 0 (measured in tests/test_shaped_sine.py)."""
        if form == "weighted_se":
            return {**self.loss_defaults(), "form": form, "inputs": ["x"], "output": "exp"}
        return super().loss_defaults_for(form)

    def train_defaults(self) -> dict:
        """The official run: 4 tasks, 10 inner SGD steps of lr 1.0, a φ update (Adam 3e-3)
        after each (schedule "online"), 1500 outer iterations; curves after the 10 steps."""
        return {"inner_lr": 1.0, "outer_lr": 3e-3, "tasks_per_batch": 4, "inner_steps": 10,
                "schedule": "online", "outer_iterations": 1500, "eval_steps": 10}

    def init_theta(self, generators, n):
        return {"omega": torch.full((len(generators), n, 1), float(self.config.omega0))}

    def predict(self, theta, x):
        return torch.sin(theta["omega"].unsqueeze(-2) * x)

    def sample_tasks(self, generators, n, split):
        c, S = self.config, len(generators)
        v = uniform(generators, (n, 1, 1), c.frequency if split == "train" else c.test_frequency)
        x = uniform(generators, (n, c.points, 1), c.x_range)
        xh = uniform(generators, (n, c.heldout_points, 1), c.x_range)
        return {"x": x, "y": torch.sin(v * x), "x_heldout": xh, "y_heldout": torch.sin(v * xh),
                "frequency": v.view(S, n)}

    def extra_loss(self, theta, data, part=""):
        """(ω − v)²: the true frequency, known at meta-train time only."""
        return (theta["omega"].squeeze(-1) - data["frequency"]).pow(2)

    def objective(self):
        c = self.config
        return TaskLoss("train", c.beta if c.task_loss in ("mse", "mixed") else 0.0,
                        c.gamma if c.task_loss in ("shaping", "mixed") else 0.0)

    def metrics(self, theta, data):
        error = (theta["omega"].squeeze(-1) - data["frequency"]).abs()
        return {**super().metrics(theta, data), "param_error": error,
                "converged": (error < self.config.converged_tol).to(error.dtype)}

    # -- landscapes --------------------------------------------------------------------------
    def landscape(self, spec, params, options):
        """L_φ(ω) and MSE(ω) over a grid of ω for one frequency v (review Figs. 4-5).

        options: v (0.5; or ``targets``: [v], as the service names it), lo (-7), hi (7,
        excluded), points (140: step 0.1, the official grid), x_points (100 evenly spaced inputs
        over x_range, as the official plot). Each curve's shape is summarised: its local minima
        on the grid and the distance of its global minimum from v.
        """
        unknown = sorted(set(options) - {"v", "targets", "lo", "hi", "points", "x_points"})
        check(not unknown, unknown[0] if unknown else "", "not an option of a shaped-sine landscape")
        targets = options.get("targets", [0.5])
        check(isinstance(targets, list) and len(targets) == 1, "targets", "one frequency v")
        v = options.get("v", targets[0])
        lo, hi = options.get("lo", -7.0), options.get("hi", 7.0)
        n, n_x = options.get("points", 140), options.get("x_points", 100)
        check_range(v, "v", -1e3, 1e3)
        check_range(lo, "lo", -1e3, 1e3)
        check_range(hi, "hi", lo, 1e3)
        check(hi > lo, "hi", "greater than lo")
        check_range(n, "points", 2, 10_000)
        check_range(n_x, "x_points", 1, 10_000)
        grid = lo + (hi - lo) * torch.arange(int(n), dtype=torch.float64) / int(n)  # [lo, hi)
        x = torch.linspace(*self.config.x_range, int(n_x), dtype=torch.float64).view(1, -1, 1).expand(len(grid), -1, -1)
        pred, target = self.predict({"omega": grid.view(-1, 1)}, x), torch.sin(v * x)
        phi = {k: t.to(torch.float64) for k, t in params.items()}  # float64: no rounding ripples
        with torch.no_grad():
            curves = {"learned": apply_loss(spec, phi, pred, target, x), "MSE": mse(pred, target)}
        grid_list = [round(w, 10) for w in grid.tolist()]
        return {"kind": "parameter", "grid": grid_list, "xlabel": "ω", "v": v, "markers": [v],
                "title": f"Loss over ω for v = {v:g}", "panels": True,
                "curves": {k: c.tolist() for k, c in curves.items()},
                "shape": {k: landscape_shape(grid_list, c.tolist(), v) for k, c in curves.items()}}

    def figures(self, spec, params, report):
        from .. import plots

        lo, hi = self.config.test_frequency  # the official reference v = 0.5 where the tasks have it
        v = 0.5 if lo <= 0.5 <= hi else (lo + hi) / 2
        figs = {"landscape.png": plots.landscape_figure(self.landscape(spec, params, {"v": v}))}
        if "meta_test" in report:
            figs["meta_test_param_error.png"] = plots.meta_test_figure(report["meta_test"], "param_error")
        return figs


def landscape_shape(grid: list, values: list, v: float) -> dict:
    """Local minima of a curve on its grid (the ends count when the curve falls towards them)
    and where its global minimum lies relative to v."""
    n = len(values)
    minima = [grid[i] for i in range(n)
              if (i == 0 or values[i] < values[i - 1]) and (i == n - 1 or values[i] <= values[i + 1])]
    best = min(range(n), key=values.__getitem__)
    return {"local_minima": len(minima), "minima_at": minima, "argmin": grid[best],
            "argmin_distance": round(abs(grid[best] - v), 10)}
