"""Meta-training settings: the top-level fields of a job spec, checked where they are parsed.

``LATER_*`` name the fields added after checkpoints were first written, at the values that leave
a checkpoint's identity as it was (ml3core.checkpoint), so an older job still resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import check, check_range, from_dict
from .inner import InnerOptimizer

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainConfig:
    seeds: int = 5
    seed: int = 0  # seed ids are seed, seed+1, ..., seed+seeds-1
    outer_iterations: int = 500
    inner_steps: int = 1  # M: unrolled inner steps per meta-gradient
    inner_lr: float = 1e-3  # alpha
    inner_optimizer: str = "sgd"  # sgd | momentum | adam: the optimizer the loss is meta-trained for
    inner_momentum: float = 0.9
    inner_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    outer_lr: float = 1e-3  # eta (Adam)
    tasks_per_batch: int = 1  # T (the population P of the persistent schedule)
    # "unrolled": fresh models, one phi step per M-step unroll; "online": one phi step per inner step;
    # "persistent": T models per seed keep training across iterations (M steps each) and restart at
    # train_horizon, so phi is meta-trained on models of every age from 0 to the horizon
    schedule: str = "unrolled"
    train_horizon: int = 100  # H: the steps users train for; the published seed must not lose up to it
    # where the published seed is judged on meta-validation tasks: [] (default) is 10, 100, ... up to H
    validation_horizons: list[int] = field(default_factory=list)
    first_order: bool = False  # drop d theta_m / d theta_{m-1} terms (keeps the mixed d grad / d phi)
    # k > 0: keep only every k-th step's state of the unroll and recompute the steps between them
    # during the backward pass: the exact meta-gradient in about O(M/k + k) steps of memory, not O(M)
    unroll_checkpoint: int = 0
    eval_every: int = 10  # curves: train fresh models with the current L_phi every k iterations
    eval_steps: int = 100  # ... for this many SGD steps
    eval_tasks: int = 1  # meta-train tasks in the curve when the family samples its train tasks
    validation_tasks: int = 10  # meta-validation tasks: a curve, and the choice of the published seed
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        check_range(self.seeds, "seeds", 1, 100_000)
        check_range(self.seed, "seed", 0, 2**31 - 1)
        check_range(self.outer_iterations, "outer_iterations", 0, 10_000_000)
        check_range(self.inner_steps, "inner_steps", 1, 10_000)
        check_range(self.inner_lr, "inner_lr", 0, 1e3)
        check_range(self.outer_lr, "outer_lr", 0, 10)
        check_range(self.tasks_per_batch, "tasks_per_batch", 1, 100_000)
        check(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        check_range(self.train_horizon, "train_horizon", 1, 100_000)
        check_range(self.unroll_checkpoint, "unroll_checkpoint", 0, 10_000)
        check(isinstance(self.validation_horizons, list) and len(self.validation_horizons) <= 8
              and all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 100_000
                      for h in self.validation_horizons), "validation_horizons",
              "a list of at most 8 step counts in [1, 100000] ([]: 10, 100, ... up to train_horizon)")
        check(self.schedule != "persistent" or self.train_horizon >= self.inner_steps, "train_horizon",
              "at least inner_steps for the persistent schedule")
        check(len(self.inner_betas) == 2, "inner_betas", "two numbers [beta1, beta2]")
        self.inner  # noqa: B018  (the optimizer checks its own name and settings)
        check_range(self.eval_every, "eval_every", 1, 10_000_000)
        check_range(self.eval_steps, "eval_steps", 0, 100_000)
        check_range(self.eval_tasks, "eval_tasks", 1, 10_000)
        check_range(self.validation_tasks, "validation_tasks", 1, 10_000)
        check(self.dtype in DTYPES, "dtype", f"one of {sorted(DTYPES)}")
        check(self.device == "cpu" or self.device.startswith("cuda"), "device", "cpu or cuda[:N]")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return from_dict(cls, d, "")  # train fields sit at the top level of a job spec

    @property
    def seed_ids(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def inner(self) -> InnerOptimizer:
        return InnerOptimizer(self.inner_optimizer, self.inner_lr, self.inner_momentum, *self.inner_betas)


SCHEDULES = ("unrolled", "online", "persistent")
LATER_DEFAULTS = {"inner_optimizer": "sgd", "inner_momentum": 0.9, "inner_betas": [0.9, 0.999], "train_horizon": 100,
                  "unroll_checkpoint": 0, "validation_horizons": []}
LATER_LOSS_DEFAULTS = {"weights": "shared"}
LATER_TASK_DEFAULTS = {"inverse-dynamics": {"meta_objective": "train"}, "sine": {"outliers": 0.0},
                       "digits": {"label_noise": 0.0}, "dataset": {"label_noise": 0.0, "outliers": 0.0}}
