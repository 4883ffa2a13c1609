"""The ML3 meta-training engine, batched over seeds and tasks.

One meta-iteration (review Alg. 1, eq. 3-5):
    theta_0 ~ init                                 fresh optimizees, one per (seed, task)
    theta_{m+1} = theta_m - alpha * grad_theta L_phi(f_theta_m(x), y[, x])    m < M, unrolled
    phi <- Adam(grad_phi L_T(theta_M))             L_T = beta * MSE + gamma * extra

S seeds x T tasks run as one batch: every parameter tensor carries leading dims (S, T) and
the forwards are broadcasting matmuls, so a single autograd pass yields every seed's exact
meta-gradient (the per-seed losses are independent, so the gradient of their sum is the
stack of per-seed gradients). The outer Adam (outer.SeedAdam) keeps one state per seed, step
count included. Each seed draws from its own generator: seed s of a 5-seed run is seed s of
a 1-seed run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import checkpoint
from .config import json_clean
from .inner import restart
from .losses import LossSpec, init_loss_params
from .models import stack_params
from .outer import SeedAdam
from .rollout import fit, rollout, unroll
from .sampling import (
    broadcast_seeds,
    cat_tasks,
    fresh_theta,
    learned_objective,
    sample_data,
    stream_generator,
)
from .tasks import TaskFamily
from .train_config import DTYPES, TrainConfig
from .validation import choose_published, default_horizons


@dataclass
class Hooks:
    """How a caller (CLI, service runner) watches and steers a run."""

    on_progress: object = None  # f(completed, total, metrics: dict)
    should_stop: object = None  # f() -> bool, checked once per iteration
    on_checkpoint: object = None  # f(state: bytes)
    on_phase: object = None  # f(phase, done, total) of the work after meta-training ("validation")
    progress_every: int = 10
    checkpoint_every: int = 50


@dataclass
class TrainResult:
    phi: dict  # stacked (S, ...) on the CPU
    seed_ids: list[int]
    history: dict
    iteration: int
    stopped: bool
    validation: dict = field(default_factory=dict)

    @property
    def chosen(self) -> int:
        return self.validation.get("chosen_index", 0)

    def seed_phi(self, i: int) -> dict:
        return {k: v[i].clone() for k, v in self.phi.items()}


class MetaTrainer:
    def __init__(self, family: TaskFamily, spec: LossSpec, config: TrainConfig):
        self.family, self.spec, self.cfg = family, spec, config
        self.device, self.dtype = torch.device(config.device), DTYPES[config.dtype]
        self.gens = [stream_generator(s, "train") for s in config.seed_ids]
        phi = stack_params([init_loss_params(spec, g) for g in self.gens])  # once per run
        self.phi = {k: v.to(self.device, self.dtype).requires_grad_() for k, v in phi.items()}
        self.opt = SeedAdam(self.phi, lr=config.outer_lr)
        self.iteration = 0
        self.history = {"iteration": [], "meta_loss": [], "eval": {}, "baseline": {}}
        self.inner = config.inner
        self.fixed = None
        if family.fixed_train:
            self.fixed = self._sample_data(self.gens, config.tasks_per_batch, "train")
        self.population = self._start_population() if config.schedule == "persistent" else None
        self.setup_eval()

    # -- data -------------------------------------------------------------------------------
    def _sample_data(self, gens, n, split):
        return sample_data(self.family, gens, n, split, self.device, self.dtype)

    def _fresh_theta(self, gens, n):
        return fresh_theta(self.family, gens, n, self.device, self.dtype)

    def sample_batch(self, n: int | None = None, split: str = "train") -> tuple[dict, dict]:
        """(theta, data): n fresh models and n tasks of ``split`` per seed from the training stream
        (the fixed train tasks where the family has them), as one meta-iteration draws them."""
        n = self.cfg.tasks_per_batch if n is None else n
        data = self.fixed if self.fixed is not None and split == "train" else self._sample_data(self.gens, n, split)
        return self._fresh_theta(self.gens, next(iter(data.values())).shape[1]), data

    def setup_eval(self):
        """Fixed models and tasks for the curves, drawn from their own streams, so evaluating
        never perturbs training (the official code reseeds its global RNG instead):
        'train_task' = the meta-train task(s); 'validation' = meta-validation tasks from the
        meta-test distribution (or the family's own validation split), never used for training
        or testing."""
        gens = [stream_generator(s, "eval") for s in self.cfg.seed_ids]
        train = self.fixed if self.fixed is not None else self._sample_data(gens, self.cfg.eval_tasks, "train")
        n = next(iter(train.values())).shape[1]
        vgens = [stream_generator(s, "validation") for s in self.cfg.seed_ids]
        self.eval_sets = {
            "train_task": (self._fresh_theta(gens, n), train),
            "validation": (self._fresh_theta(vgens, self.cfg.validation_tasks),
                           self._sample_data(vgens, self.cfg.validation_tasks, self.family.validation_split)),
        }
        # the sets joined along the tasks dim, once: they then train as one batch (None if they can't)
        self._eval_joint = cat_tasks(list(self.eval_sets.values()))

    # -- one meta-iteration ------------------------------------------------------------------
    def unroll(self, theta0: dict, state: dict, data: dict, steps: int) -> tuple[dict, dict]:
        """``steps`` inner optimizer steps on L_phi from (theta0, state), differentiable in phi
        (ml3core.rollout.unroll; in checkpointed segments of ``unroll_checkpoint`` steps when set)."""
        return unroll(lambda phi: learned_objective(self.family, self.spec, broadcast_seeds(phi)), self.phi,
                      self.inner, theta0, state, data, steps, self.cfg.unroll_checkpoint, self.cfg.first_order)

    def meta_objective(self, theta0: dict, data: dict, steps: int | None = None):
        """L_T after ``steps`` unrolled inner steps on L_phi from fresh optimizer state;
        returns (theta_M, per-seed L_T)."""
        steps = self.cfg.inner_steps if steps is None else steps
        theta, _ = self.unroll(theta0, self.inner.init(theta0), data, steps)
        return theta, self.family.task_loss(theta, data).mean(dim=1)

    def outer_step(self, per_seed_loss):
        """One Adam step on every seed's phi. A seed whose loss or gradient is not finite skips it:
        its phi, Adam moments and step count stay exactly as they were."""
        ok = torch.isfinite(per_seed_loss)
        total = torch.where(ok, per_seed_loss, torch.zeros_like(per_seed_loss)).sum()
        grads = torch.autograd.grad(total, list(self.phi.values()), allow_unused=True)
        grads = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(self.phi.items(), grads, strict=True)}
        for g in grads.values():
            ok = ok & torch.isfinite(g).flatten(1).all(1)
        self.opt.step(grads, ok)

    # -- the persistent schedule -------------------------------------------------------------
    def _start_population(self) -> dict:
        """T models per seed at ages spread over [0, H): model p is first trained p·H/T steps (with
        the initial phi, no graph), so the very first iterations already see late training."""
        T, H, M = self.cfg.tasks_per_batch, self.cfg.train_horizon, self.cfg.inner_steps
        theta, data = self.sample_batch(T)
        age = torch.tensor([(p * H // T) // M * M for p in range(T)])
        phi = broadcast_seeds({k: v.detach() for k, v in self.phi.items()})
        objective = learned_objective(self.family, self.spec, phi)
        theta, state = rollout(objective, self.inner, theta, self.inner.init(theta), data, int(age.max()),
                               stop_at=age.to(self.device))
        return {"theta": {k: v.detach() for k, v in theta.items()}, "state": state, "age": age, "data": data}

    def _persistent_step(self):
        """Unroll every model M steps from where it stands, step phi, keep the models' new states,
        and restart (fresh model, fresh task, fresh optimizer state) those that reached H."""
        pop, M, H = self.population, self.cfg.inner_steps, self.cfg.train_horizon
        with torch.no_grad():
            before = self.family.task_loss(pop["theta"], pop["data"])  # (S, T)
        theta, state = self.unroll(pop["theta"], pop["state"], pop["data"], M)
        losses = self.family.task_loss(theta, pop["data"])  # (S, T)
        # L_T relative to where the unroll started: a late model's L_T is orders of magnitude below a
        # young one's, and each age should count alike; a ratio (not its log) keeps a blow-up costly
        per_seed = (losses / before.clamp_min(1e-12)).mean(dim=1)
        self.outer_step(per_seed)
        theta = {k: v.detach() for k, v in theta.items()}
        state = {k: v.detach() for k, v in state.items()}
        age = pop["age"] + M
        done = age >= H
        if bool(done.any()):
            T = self.cfg.tasks_per_batch
            mask = done.to(self.device).expand(len(self.gens), T)
            fresh = self._fresh_theta(self.gens, T)
            theta = restart(theta, fresh, mask)
            state = restart(state, self.inner.init(fresh), mask)
            if self.fixed is None:
                pop["data"] = restart(pop["data"], self._sample_data(self.gens, T, "train"), mask)
            age = torch.where(done, torch.zeros_like(age), age)
        pop.update(theta=theta, state=state, age=age)
        return losses.detach().mean()

    def step(self) -> float:
        """One outer iteration; returns the mean meta-loss over seeds."""
        T = self.cfg.tasks_per_batch
        if self.population is not None:
            mean = self._persistent_step()
            self.iteration += 1
            return float(mean)
        theta, data = self.sample_batch(T)
        if self.cfg.schedule == "unrolled":
            _, losses = self.meta_objective(theta, data)
            self.outer_step(losses)
            mean = losses.detach().mean()
        else:  # official shaping loop: a 1-step unroll and a phi update after every inner step
            total = 0.0
            for _ in range(self.cfg.inner_steps):
                theta, losses = self.meta_objective(theta, data, steps=1)
                self.outer_step(losses)
                theta = {k: v.detach() for k, v in theta.items()}
                total = total + losses.detach().mean()
            mean = total / self.cfg.inner_steps
        self.iteration += 1
        return float(mean)

    # -- evaluation --------------------------------------------------------------------------
    def _final_metrics(self, objective) -> dict:
        """Train each eval set's models ``eval_steps`` steps on ``objective``: {set: {metric: per seed}}.
        Sets whose tensors differ only in their task count train as one batch (half the calls)."""
        sets, joint = list(self.eval_sets.items()), self._eval_joint
        runs = [joint] if joint is not None else [t for _, t in sets]
        curves = [fit(self.family, objective, theta, data, self.cfg.eval_steps, self.cfg.inner_lr,
                      record_at=[self.cfg.eval_steps]) for theta, data in runs]
        if joint is not None:  # split the tasks dim back into the sets
            sizes = [next(iter(theta.values())).shape[1] for _, (theta, _) in sets]
            curves = [{k: v for k, v in zip(curves[0], parts, strict=True)}
                      for parts in zip(*(v.split(sizes, dim=2) for v in curves[0].values()), strict=True)]
        return {name: {k: json_clean(v[-1].mean(1).tolist()) for k, v in c.items()}
                for (name, _), c in zip(sets, curves, strict=True)}

    def evaluate(self) -> dict:
        """Metrics after ``eval_steps`` with each seed's current L_phi."""
        phi = broadcast_seeds({k: v.detach() for k, v in self.phi.items()})
        return self._final_metrics(learned_objective(self.family, self.spec, phi))

    def baseline(self) -> dict:
        """The same with plain MSE: it does not depend on phi, so it is computed once per run."""
        return self._final_metrics(self.family.plain_loss)

    def _record_eval(self, meta_loss):
        self.history["iteration"].append(self.iteration)
        self.history["meta_loss"].append(meta_loss)
        for group, metrics in self.evaluate().items():
            for k, v in metrics.items():
                self.history["eval"].setdefault(group, {}).setdefault(k, []).append(v)

    def latest_metrics(self) -> dict:
        """Means over seeds as flat numbers; ``per_seed`` holds each seed's values (for bands)."""
        h = self.history
        out, per_seed = {"iteration": self.iteration}, {}
        if h["meta_loss"] and h["meta_loss"][-1] is not None:
            out["meta_loss"] = h["meta_loss"][-1]
        for group, metrics in h["eval"].items():
            for k, per_iteration in metrics.items():
                out[f"{group}.{k}"] = _mean(per_iteration[-1])
                out[f"{group}.{k}.mse_baseline"] = _mean(h["baseline"][group][k])
                per_seed[f"{group}.{k}"] = per_iteration[-1]
                per_seed[f"{group}.{k}.mse_baseline"] = h["baseline"][group][k]
        out["per_seed"] = per_seed
        return out

    # -- the loop ----------------------------------------------------------------------------
    def run(self, hooks: Hooks | None = None) -> TrainResult:
        hooks = hooks or Hooks()
        cfg, total = self.cfg, self.cfg.outer_iterations
        if not self.history["baseline"]:
            self.history["baseline"] = self.baseline()
        if self.iteration == 0 and not self.history["iteration"]:
            self._record_eval(None)
        stopped = False
        while self.iteration < total:
            if hooks.should_stop is not None and hooks.should_stop():
                stopped = True
                break
            meta_loss = self.step()
            if self.iteration % cfg.eval_every == 0 or self.iteration == total:
                self._record_eval(meta_loss)
            if hooks.on_progress and (self.iteration % hooks.progress_every == 0 or self.iteration == total):
                hooks.on_progress(self.iteration, total, self.latest_metrics())
            if hooks.on_checkpoint and self.iteration % hooks.checkpoint_every == 0 and self.iteration < total:
                hooks.on_checkpoint(self.state_bytes())
        if hooks.on_checkpoint:  # the final state too: a run can be extended or resumed later
            hooks.on_checkpoint(self.state_bytes())
        result = TrainResult(phi={k: v.detach().cpu().clone() for k, v in self.phi.items()},
                             seed_ids=cfg.seed_ids, history=self.history, iteration=self.iteration,
                             stopped=stopped)
        if not stopped and self.iteration > 0:  # an untrained phi is not published, so not judged
            progress = (lambda d, t: hooks.on_phase("validation", d, t)) if hooks.on_phase else None
            result.validation = self.validate(progress)
        return result

    def validation_horizons(self) -> list[int]:
        """Where a loss is judged before it is published: ``validation_horizons``, or 10, 100, ... up to the
        training horizon H."""
        return sorted(set(self.cfg.validation_horizons)) or default_horizons(self.cfg.train_horizon)

    def validate(self, progress=None) -> dict:
        """Choose the seed to publish and the lr it recommends on the meta-validation tasks
        (ml3core.validation), with the inner optimizer of meta-training."""
        assert self.history["iteration"][-1] == self.iteration, "the final phi has not been evaluated"
        theta, data = self.eval_sets["validation"]
        out = choose_published(self.family, self.spec, self.phi, self.inner, theta, data,
                               self.validation_horizons(), progress)
        metric = self.family.heldout_metric
        return {**out, "scores": self.history["eval"]["validation"][metric][-1],
                "mse_baseline": self.history["baseline"]["validation"][metric],
                "chosen_seed": self.cfg.seed_ids[out["chosen_index"]]}

    # -- checkpoints (ml3core.checkpoint) -----------------------------------------------------
    def state_bytes(self) -> bytes:
        """Everything needed to continue bit-for-bit: phi, Adam state, RNG states, data, history."""
        return checkpoint.state_bytes(self)

    def load_state(self, blob: bytes) -> None:
        checkpoint.load_state(self, blob)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None
