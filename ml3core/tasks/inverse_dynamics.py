"""Inverse dynamics with a physics prior (review §3.3, paper §IV.C): u = M(q)·q̈ + c(q, q̇) + g(q).

A task is a set of joint trajectories q_i(t) = c_i + A_i·sin(2π·f_i·t + φ_i) around the task's
own centres c_i (and with its payload, if any); each trajectory has its own frequencies and
phases. (Were the frequencies shared, q̈ = −ω²·(q − c) would be a function of q on every
trajectory of a task, and M·q̈ could hide in g(q).) The train points come from ``trajectories``
of them, the held-out points from other ones; q̇, q̈ are analytic and u comes from the robot's
inverse dynamics, so the data are exact. Each sample also carries the true M(q): the label of
the prior, known only at meta-train time.

The optimizee (``model="delan"``) is a Deep Lagrangian Network with its own inertia M_theta(q);
``"mlp"`` is a black box whose implied inertia is ∂û/∂q̈. Task losses at meta-train:
``"mse"`` torque MSE (the review's blue curve), ``"prior"`` the inertia error alone (green, as
the review reads the paper) and ``"mixed"`` β·MSE + γ·prior (the review's eq. 5 reading).
Meta-test trains on torques only; the inertia error is measured, never trained on. The default
preset's loss weighs each joint's squared torque error by a learned w_φ,j(τ, x) > 0 (Morse et al.
2020), judged on the held-out trajectories (``meta_objective="heldout"``); "paper" keeps the net.

Scales, all from a fixed reference set of the family's train distribution: torques are divided
per joint by their standard deviation, and the inertia error is measured in
D^{-1/2}·(M − M_theta)·D^{-1/2} with D the mean diagonal of M, so that the iiwa's joint 7
(torques ≈0.1 Nm, M77 ≈ 0.003) counts as much as joint 2 (≈140 Nm). L_phi sees those
normalised torques and x = [q, q̇, q̈] divided by its std (``scales``); a published loss keeps
them (``input_scales``): ``load_loss(path, raw_units=True)`` takes torques in Nm and the raw
state. The DeLaN's inertia gets a per-joint unit √(torque std / q̈ std), taken from torques and
motions only, never from M.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from ..config import check, check_interval, check_layers, check_range
from ..losses import apply_loss
from ..models import mlp_forward, mlp_init
from ..models_delan import DERIVATIVES, delan_gravity, delan_inertia, delan_init, mlp_torque
from ..robots import JOINTS, ROBOTS, make_robot
from .base import TaskFamily, TaskLoss, check_task_loss_weights, mse, uniform

TASK_LOSSES = ("mse", "prior", "mixed")
MODELS = ("delan", "mlp")
REFERENCE_SEED, REFERENCE_TASKS = 20_200_503, 16


@dataclass
class InverseDynamicsConfig:
    robot: str = "2link"  # 2link | iiwa
    model: str = "delan"  # delan | mlp
    task_loss: str = "mse"  # mse | prior | mixed
    beta: float = 1.0  # "mixed": beta * torque MSE + gamma * prior
    gamma: float = 1.0
    train_task: str = "sampled"  # "sampled": new meta-train tasks each iteration; "fixed": one set per run
    meta_objective: str = "train"  # "heldout": the task loss is measured on the held-out trajectories
    trajectories: int = 2  # per task, for the train points
    heldout_trajectories: int = 2
    points: int = 32  # samples per trajectory, evenly spaced over ``duration``
    duration: float = 4.0  # seconds
    frequency: list[float] = field(default_factory=lambda: [0.1, 0.5])  # Hz
    amplitude: float = 0.3  # fraction of half the joint range
    payload: list[float] = field(default_factory=lambda: [0.0, 0.0])  # kg at the end of the last link
    model_hidden: list[int] = field(default_factory=lambda: [64, 64])
    model_activation: str = "softplus"
    eps: float = 1e-5  # M_theta = L·Lᵀ + eps·I

    def __post_init__(self):
        check(self.robot in ROBOTS, "task.robot", f"one of {ROBOTS}")
        if self.robot == "iiwa":
            from ..robots.iiwa import INSTALL, available

            check(available(), "task.robot", f"the iiwa needs the 'robots' extra: {INSTALL}")
        check(self.model in MODELS, "task.model", f"one of {MODELS}")
        check(self.task_loss in TASK_LOSSES, "task.task_loss", f"one of {TASK_LOSSES}")
        check_task_loss_weights(self.beta, self.gamma)
        check(self.train_task in ("fixed", "sampled"), "task.train_task", "fixed or sampled")
        check(self.meta_objective in ("train", "heldout"), "task.meta_objective", "train or heldout")
        check_range(self.trajectories, "task.trajectories", 1, 1000)
        check_range(self.heldout_trajectories, "task.heldout_trajectories", 1, 1000)
        check_range(self.points, "task.points", 1, 10_000)
        check_range(self.duration, "task.duration", 1e-3, 1e4)
        check_interval(self.frequency, "task.frequency", 0, 100)
        check_range(self.amplitude, "task.amplitude", 0, 0.5)
        check_interval(self.payload, "task.payload", 0, 100)
        check_layers(self.model_hidden, "task.model_hidden")
        check(self.model_activation in DERIVATIVES, "task.model_activation", f"one of {sorted(DERIVATIVES)}")
        check_range(self.eps, "task.eps", 0, 1e-4)


class InverseDynamicsFamily(TaskFamily):
    """Inverse dynamics of a robot arm; meta-train a loss shaped by the true inertia matrix."""

    name = "inverse-dynamics"
    config_cls = InverseDynamicsConfig
    extra_metrics = ("prior_train", "prior_heldout")
    cli_flags = {
        "--robot": ("robot", str, "2link or iiwa"),
        "--task-loss": ("task_loss", str, "task loss at meta-train: mse, prior or mixed"),
        "--model": ("model", str, "optimizee: delan (Deep Lagrangian Network) or mlp"),
    }

    def __init__(self, config):
        super().__init__(config)
        self.n = JOINTS[config.robot]

    @property
    def fixed_train(self) -> bool:
        return self.config.train_task == "fixed"

    def loss_defaults(self) -> dict:
        """L_phi reads the state too: weighing torque errors by (q, q̇, q̈) is how a loss can
        steer M_theta (without x, the prior-shaped loss lowered the 2-link inertia error about
        half as much in our runs)."""
        return {"inputs": ["pred", "target", "x"], "pred_dim": self.n, "x_dim": 3 * self.n}

    def train_defaults(self) -> dict:
        """A phi update after every inner step along 100-step trainings (``online``): the loss
        is shaped over the whole meta-test horizon, not only at the initial models. Plain SGD
        on a DeLaN diverges on some 2-link tasks from lr ≈ 0.01 on (0.005 leaves a margin) and
        on most iiwa tasks from 5e-4 on: with torques per joint std, joint 7's tiny torques
        amplify every q7-dependence of the big joints' inertia."""
        lr = 0.005 if self.config.robot == "2link" else 1e-4
        return {"inner_lr": lr, "outer_lr": 1e-3, "tasks_per_batch": 4, "schedule": "online",
                "inner_steps": 100, "outer_iterations": 20, "eval_every": 5, "eval_steps": 100}

    # -- scales -------------------------------------------------------------------------------
    @property
    def scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(torque std per joint (n,), mean inertia diagonal (n,), std of [q, q̇, q̈] (3n,)) of the
        reference set."""
        c = self.config
        return _reference_scales(c.robot, c.points, c.duration, tuple(c.frequency), c.amplitude,
                                 tuple(c.payload))

    def input_scales(self) -> dict:
        sigma, _, x_std = (t.tolist() for t in self.scales)
        return {"pred": sigma, "target": sigma, "x": x_std}

    # -- the optimizee --------------------------------------------------------------------------
    def init_theta(self, generators, n):
        c = self.config
        if c.model == "delan":
            return delan_init(self.n, c.model_hidden, generators, n)
        return mlp_init([3 * self.n, *c.model_hidden, self.n], generators, n)

    def forward(self, theta, x):
        """(normalised torque (..., N, n), M_theta (..., N, n, n)) at x = [q, q̇, q̈]."""
        sigma, _, x_std = (s.to(x) for s in self.scales)
        q, qd, qdd = x.split(self.n, -1)
        act = self.config.model_activation
        if self.config.model == "delan":  # the gravity head speaks normalised torque directly
            unit = (sigma / x_std[2 * self.n :]).sqrt()  # √(torque std / acceleration std): data, not M
            inertia, c = delan_inertia(theta, q, qd, act, self.config.eps, unit)
            u = (inertia @ qdd.unsqueeze(-1)).squeeze(-1) + c
            return u / sigma + delan_gravity(theta, q, act), inertia
        u, jac = mlp_torque(theta, q, qd, qdd, act)
        return u, sigma.unsqueeze(-1) * jac

    def predict(self, theta, x):
        if self.config.model == "mlp":  # no Jacobian needed
            return mlp_forward(theta, x, self.config.model_activation)
        return self.forward(theta, x)[0]

    def prior(self, inertia, target):
        """Mean over points and entries of (D^{-1/2}·(M_theta − M)·D^{-1/2})², per task."""
        d = self.scales[1].to(target).rsqrt()
        err = (inertia - target) * d.unsqueeze(-1) * d
        return err.square().flatten(-3).mean(-1)

    # -- data ----------------------------------------------------------------------------------
    def sample_tasks(self, generators, n, split):
        c = self.config
        raw = _sample_raw(make_robot(c.robot), generators, n, c.trajectories, c.heldout_trajectories,
                          c.points, c.duration, c.frequency, c.amplitude, c.payload)
        sigma = self.scales[0]
        k = c.trajectories * c.points
        out = {"payload": raw["payload"], "frequency": raw["frequency"]}
        for key, sl in (("", slice(None, k)), ("_heldout", slice(k, None))):
            out["x" + key] = raw["x"][:, :, sl]
            out["y" + key] = raw["u"][:, :, sl] / sigma
            out["M" + key] = raw["M"][:, :, sl]
        return out

    # -- losses and metrics --------------------------------------------------------------------
    def loss_inputs(self, theta, data):
        """L_phi sees normalised torques and the state [q, q̇, q̈] divided by its reference std."""
        x = data["x"]
        return self.predict(theta, x), data["y"], x / self.scales[2].to(x)

    def extra_loss(self, theta, data, part=""):
        return self.task_terms(theta, data, part, False, True)[1]

    def objective(self):
        c = self.config
        beta, gamma = {"mse": (1.0, 0.0), "prior": (0.0, 1.0), "mixed": (c.beta, c.gamma)}[c.task_loss]
        return TaskLoss(c.meta_objective, beta, gamma)

    def task_terms(self, theta, data, part, fit, extra):
        """Torque MSE and the physics prior from one forward (it yields torques and inertia at once)."""
        pred, inertia = self.forward(theta, data["x" + part])
        return (mse(pred, data["y" + part]) if fit else None,
                self.prior(inertia, data["M" + part]) if extra else None)

    def metrics(self, theta, data):
        out = {}
        for key, name in (("", "train"), ("_heldout", "heldout")):
            pred, inertia = self.forward(theta, data["x" + key])
            out[f"mse_{name}"] = mse(pred, data["y" + key])
            out[f"prior_{name}"] = self.prior(inertia, data["M" + key])
        return out

    # -- what the service shows ----------------------------------------------------------------
    def landscape(self, spec, params, options):
        """L_phi as one joint's prediction moves off its target (normalised torque units), the
        others on target, averaged over points of the reference distribution; MSE beside it."""
        lo, hi, points = options.get("lo", -3.0), options.get("hi", 3.0), options.get("points", 61)
        check_range(points, "points", 2, 10_000)
        check_range(lo, "lo", -1e6, 1e6)
        check_range(hi, "hi", lo, 1e6)
        data = self.sample_tasks([torch.Generator().manual_seed(REFERENCE_SEED)], 1, "test")
        x, y = data["x"][0, 0].float(), data["y"][0, 0].float()  # (N, 3n), (N, n)
        grid = torch.linspace(float(lo), float(hi), int(points))
        curves = {}
        for j in range(self.n):
            pred = y + grid.view(-1, 1, 1) * torch.nn.functional.one_hot(torch.tensor(j), self.n)
            with torch.no_grad():
                values = apply_loss(spec, params, pred, y.expand_as(pred), x.expand(len(grid), *x.shape))
            curves[f"learned, joint {j + 1}"] = values.tolist()
        curves["MSE"] = (grid.square() / self.n).tolist()
        return {"kind": "residual", "grid": grid.tolist(), "curves": curves, "markers": [0.0],
                "xlabel": "prediction − target, one joint (torque std)", "title": "Learned loss vs MSE"}

    def figures(self, spec, params, report):
        from .. import plots

        test = report["meta_test"]
        return {"inertia_error.png": plots.meta_test_figure(test, "prior_heldout", "Inertia error, held-out")}


# -- data ------------------------------------------------------------------------------------------
def sinusoids(t, frequency, phase, centre, amplitude):
    """q, q̇, q̈ of q = c + A·sin(2π·f·t + φ): t (P,), centre/amplitude (..., n), frequency and
    phase (..., K, n) -> each (..., K, P, n)."""
    w = (2 * math.pi * frequency).unsqueeze(-2)
    arg = w * t.view(-1, 1) + phase.unsqueeze(-2)
    a = amplitude.unsqueeze(-2).unsqueeze(-2)
    q = centre.unsqueeze(-2).unsqueeze(-2) + a * torch.sin(arg)
    return q, a * w * torch.cos(arg), -a * w * w * torch.sin(arg)


def _sample_raw(robot, generators, n, trajectories, heldout, points, duration, frequency, amplitude, payload):
    """Physical data of n tasks per generator: x = [q, q̇, q̈] (S, n, K·P, 3n), u, M."""
    lower, upper = robot.joint_limits
    mid, half = (upper + lower) / 2, (upper - lower) / 2
    amp = amplitude * half
    J, K = robot.n_joints, trajectories + heldout
    f = uniform(generators, (n, K, J), frequency).double()
    centre = mid + uniform(generators, (n, J), (-1.0, 1.0)).double() * amp
    phase = uniform(generators, (n, K, J), (0.0, 2 * math.pi)).double()
    mass = uniform(generators, (n,), payload).double()
    t = torch.arange(points, dtype=torch.float64) * (duration / points)
    q, qd, qdd = (v.flatten(-3, -2) for v in sinusoids(t, f, phase, centre, amp))  # (S, n, K·P, J)
    u, M = torch.empty_like(q), torch.empty(*q.shape, J, dtype=q.dtype)
    for s in range(len(generators)):
        for i in range(n):
            r = robot.with_payload(float(mass[s, i])) if mass[s, i] else robot
            u[s, i] = r.inverse_dynamics(q[s, i], qd[s, i], qdd[s, i])
            M[s, i] = r.mass_matrix(q[s, i])
    return {"x": torch.cat([q, qd, qdd], -1), "u": u, "M": M, "payload": mass, "frequency": f}


@functools.cache
def _reference_scales(robot, points, duration, frequency, amplitude, payload):
    gen = [torch.Generator().manual_seed(REFERENCE_SEED)]
    raw = _sample_raw(make_robot(robot), gen, REFERENCE_TASKS, 2, 0, points, duration, frequency, amplitude,
                      payload)
    u, M, x = raw["u"].flatten(0, -2), raw["M"].flatten(0, -3), raw["x"].flatten(0, -2)
    return u.std(0), M.diagonal(dim1=-2, dim2=-1).mean(0), x.std(0)
