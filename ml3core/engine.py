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

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .compare import StepCounter, compare, ratio, verdict
from .config import ConfigError, check, check_range, from_dict
from .inner import InnerOptimizer, restart
from .losses import LossSpec, apply_loss, init_loss_params
from .models import stack_params
from .outer import SeedAdam, from_torch_adam
from .rollout import fit
from .tasks import TaskFamily

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
# Fields added after checkpoints were first written: at these values they leave a checkpoint's
# identity as it was, so a job checkpointed before them resumes.
LATER_DEFAULTS = {"inner_optimizer": "sgd", "inner_momentum": 0.9, "inner_betas": [0.9, 0.999], "train_horizon": 100,
                  "unroll_checkpoint": 0, "validation_horizons": []}
LATER_LOSS_DEFAULTS = {"weights": "shared"}
LATER_TASK_DEFAULTS = {"inverse-dynamics": {"meta_objective": "train"}}


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


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A generator for one named stream of one seed, independent of the training stream."""
    if stream == "train":
        return torch.Generator().manual_seed(seed)  # seed s of any run is plain manual_seed(s)
    offset = {"eval": 1, "validation": 2, "test": 3}[stream]
    return torch.Generator().manual_seed(2**32 + 16 * seed + offset)

def sample_data(family: TaskFamily, gens: list, n: int, split: str, device, dtype) -> dict:
    """n tasks of ``split`` per seed generator, stacked to (S, n, ...)."""
    return to(family.sample_tasks(gens, n, split), device, dtype)


def fresh_theta(family: TaskFamily, gens: list, n: int, device, dtype) -> dict:
    """n freshly initialised models per seed generator, stacked to (S, n, ...)."""
    return to(family.init_theta(gens, n), device, dtype)


def to(tree: dict, device, dtype) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in tree.items()}


def _cat_tasks(sets: list[tuple[dict, dict]]):
    """(theta, data) pairs joined along the tasks dim (1), or None where any tensor differs in more."""
    joined = tuple(_cat_trees([pair[i] for pair in sets]) for i in (0, 1))
    return None if None in joined else joined


def _cat_trees(trees: list[dict]) -> dict | None:
    if any(t.keys() != trees[0].keys() for t in trees):
        return None
    out = {}
    for k, v in trees[0].items():
        vs = [t[k] for t in trees]
        if any(x.dim() < 2 or x.dtype != v.dtype or x.shape[:1] + x.shape[2:] != v.shape[:1] + v.shape[2:]
               for x in vs):
            return None
        out[k] = torch.cat(vs, dim=1)
    return out


def learned_objective(family: TaskFamily, spec: LossSpec, phi: dict):
    """theta -> L_phi on the train points. phi may be stacked per seed (S, ...) against data (S, n, ...)."""

    def objective(theta, data):
        pred, target, x = family.loss_inputs(theta, data)
        return apply_loss(spec, phi, pred, target, x)

    return objective


def broadcast_seeds(phi: dict) -> dict:
    """(S, ...) -> (S, 1, ...): one loss per seed, shared by that seed's tasks."""
    return {k: v.unsqueeze(1) for k, v in phi.items()}


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
        self._setup_eval()

    # -- data -------------------------------------------------------------------------------
    def _sample_data(self, gens, n, split):
        return sample_data(self.family, gens, n, split, self.device, self.dtype)

    def _fresh_theta(self, gens, n):
        return fresh_theta(self.family, gens, n, self.device, self.dtype)

    def _setup_eval(self):
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
        self._eval_joint = _cat_tasks(list(self.eval_sets.values()))

    # -- one meta-iteration ------------------------------------------------------------------
    def unroll(self, theta0: dict, state: dict, data: dict, steps: int) -> tuple[dict, dict]:
        """``steps`` inner optimizer steps on L_phi from (theta0, state), differentiable in phi;
        in checkpointed segments of ``unroll_checkpoint`` steps when that is set."""
        theta = {k: v.detach().requires_grad_() for k, v in theta0.items()}
        k = self.cfg.unroll_checkpoint
        if not k or k >= steps:
            return self._inner_steps(broadcast_seeds(self.phi), theta, state, data, steps)
        names, snames, pnames = list(theta), list(state), list(self.phi)

        def run(phi, carry, n):  # flat tensors in and out, as _Checkpointed needs them
            th, st = self._inner_steps(broadcast_seeds(dict(zip(pnames, phi, strict=True))),
                                       dict(zip(names, carry[:len(names)], strict=True)),
                                       dict(zip(snames, carry[len(names):], strict=True)), data, n)
            return (*th.values(), *st.values())

        flat = _Checkpointed.apply(run, len(pnames), steps, k, *self.phi.values(), *theta.values(), *state.values())
        return dict(zip(names, flat[:len(names)], strict=True)), dict(zip(snames, flat[len(names):], strict=True))

    def _inner_steps(self, phi_b: dict, theta: dict, state: dict, data: dict, steps: int) -> tuple[dict, dict]:
        for _ in range(steps):
            at = {k: v.detach().requires_grad_() for k, v in theta.items()} if self.cfg.first_order else theta
            pred, target, x = self.family.loss_inputs(at, data)
            inner = apply_loss(self.spec, phi_b, pred, target, x)  # (S, T)
            grads = torch.autograd.grad(inner.sum(), list(at.values()), create_graph=True)
            theta, state = self.inner.step(theta, dict(zip(theta, grads, strict=True)), state)
        return theta, state

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
        T, H = self.cfg.tasks_per_batch, self.cfg.train_horizon
        data = self.fixed if self.fixed is not None else self._sample_data(self.gens, T, "train")
        theta = self._fresh_theta(self.gens, T)
        state = self.inner.init(theta)
        age = torch.tensor([(p * H // T) // self.cfg.inner_steps * self.cfg.inner_steps for p in range(T)])
        phi_b = broadcast_seeds({k: v.detach() for k, v in self.phi.items()})
        objective = learned_objective(self.family, self.spec, phi_b)
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        for k in range(int(age.max())):
            active = (k < age).to(self.device).expand(len(self.gens), T)  # (S, T)
            with torch.enable_grad():
                grads = torch.autograd.grad(objective(theta, data).sum(), list(theta.values()))
            with torch.no_grad():
                new, new_state = self.inner.step(theta, dict(zip(theta, grads, strict=True)), state)
                theta = restart(new, theta, ~active)  # models past their age keep their parameters
                state = restart(new_state, state, ~active)
            theta = {k: v.requires_grad_() for k, v in theta.items()}
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
        data = self.fixed if self.fixed is not None else self._sample_data(self.gens, T, "train")
        theta = self._fresh_theta(self.gens, T)
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
        if self.cfg.validation_horizons:
            return sorted(set(self.cfg.validation_horizons))
        H = self.cfg.train_horizon
        return sorted({h for h in (10, 100, 1000, 10_000) if h < H} | {H})

    def validate(self, progress=None) -> dict:
        """Pick the seed to publish, and the lr it recommends, by the worst ratio of the held-out metric
        against the *tuned* baseline (the plain loss at its best lr factor for each horizon,
        ml3core.compare) on the meta-validation tasks, over the horizons up to H, with the inner
        optimizer of meta-training. Each seed's loss is tried at every lr factor of the grid and
        recommends the one with the best worst ratio (a loss whose gain was a step size then shows
        none); the published seed is the one whose recommended lr does best. Meta-test tasks never
        enter this choice; the verdict says where the chosen seed beats the tuned baseline."""
        assert self.history["iteration"][-1] == self.iteration, "the final phi has not been evaluated"
        metric, hs = self.family.heldout_metric, self.validation_horizons()
        theta, data = self.eval_sets["validation"]
        phi = broadcast_seeds({k: v.detach() for k, v in self.phi.items()})
        count = StepCounter(progress, 2 * hs[-1])
        cmp = compare(self.family, learned_objective(self.family, self.spec, phi), theta, data, self.inner, hs,
                      count=count)
        tuned = cmp.tuned(cmp.plain, metric)[0][metric].mean(-1)  # (R, S)
        every = ratio(cmp.learned[metric].mean(-1), tuned.unsqueeze(-1))  # (R, S, G): L_phi at each factor
        worst_each = every.max(0).values.nan_to_num(nan=math.inf, posinf=math.inf)  # (S, G)
        factors = [cmp.learned_factors[int(g)] for g in worst_each.argmin(-1)]  # each seed's recommended factor
        r = cmp.ratios(metric, factors)
        ratios = r["vs_tuned"]  # (R, S)
        worst = ratios.max(0).values.nan_to_num(nan=math.inf, posinf=math.inf)  # (S,)
        chosen = int(torch.argmin(worst))
        return {
            "metric": f"worst ratio of {metric} (learned at its recommended lr / plain at its best lr for that "
                      f"horizon) over {hs} {self.inner.name} steps on {self.cfg.validation_tasks} "
                      "meta-validation tasks",
            "horizons": hs,
            "ratios": {str(h): json_clean(ratios[i].tolist()) for i, h in enumerate(hs)},
            "ratios_same_lr": {str(h): json_clean(r["same_lr"][i].tolist()) for i, h in enumerate(hs)},
            "tuned_lr": {str(h): r["tuned_lr"][i].tolist() for i, h in enumerate(hs)},
            "lr_factor": factors,
            "recommended_lr": cmp.lrs(factors).tolist(),
            "worst_ratio": json_clean(worst.tolist()),
            "scores": self.history["eval"]["validation"][metric][-1],
            "mse_baseline": self.history["baseline"]["validation"][metric],
            "chosen_index": chosen,
            "chosen_seed": self.cfg.seed_ids[chosen],
            "verdict": verdict({h: json_clean(float(ratios[i, chosen])) for i, h in enumerate(hs)}),
        }

    # -- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> dict:
        train = {k: v for k, v in asdict(self.cfg).items()
                 if k not in ("outer_iterations", "device") and LATER_DEFAULTS.get(k, ...) != v}
        later = LATER_TASK_DEFAULTS.get(self.family.name, {})
        task = {k: v for k, v in asdict(self.family.config).items() if later.get(k, ...) != v}
        loss = {k: v for k, v in self.spec.to_dict().items() if LATER_LOSS_DEFAULTS.get(k, ...) != v}
        return {"family": self.family.name, "task": task, "loss": loss, "train": train}

    def state_bytes(self) -> bytes:
        """Everything needed to continue bit-for-bit: phi, Adam state, RNG states, data, history."""
        tensors = {f"phi.{k}": v.detach().cpu().contiguous() for k, v in self.phi.items()}
        tensors.update({f"outer.{k}": v.cpu().contiguous() for k, v in self.opt.state().items()})
        for i, g in enumerate(self.gens):
            tensors[f"rng.{i}"] = g.get_state()
        if self.fixed is not None:
            tensors.update({f"fixed.{k}": v.cpu().contiguous() for k, v in self.fixed.items()})
        if self.population is not None:
            for part in ("theta", "state", "data"):
                tensors.update({f"pop.{part}.{k}": v.cpu().contiguous() for k, v in self.population[part].items()})
            tensors["pop.age"] = self.population["age"].contiguous()
        meta = {"format": "ml3-checkpoint", "version": 2, "iteration": self.iteration,
                "identity": self._identity(), "history": self.history}
        return st_save(tensors, metadata={"json": json.dumps(meta)})

    def load_state(self, blob: bytes) -> None:
        try:
            tensors = st_load(blob)
            meta = json.loads(_safetensors_metadata(blob)["json"])
        except Exception as e:
            raise ConfigError("checkpoint", f"unreadable checkpoint: {e}") from e
        if meta.get("identity") != json.loads(json.dumps(self._identity())):
            raise ConfigError("checkpoint", "checkpoint belongs to a different configuration")
        with torch.no_grad():
            for k, v in self.phi.items():
                v.copy_(tensors[f"phi.{k}"])
        # version 1 held one torch Adam's state (one step count for all seeds)
        outer = {k[6:]: v for k, v in tensors.items() if k.startswith("outer.")}
        self.opt.load(outer or from_torch_adam(tensors, list(self.phi)))
        for i, g in enumerate(self.gens):
            g.set_state(tensors[f"rng.{i}"])
        if self.fixed is not None:
            self.fixed = to({k[6:]: v for k, v in tensors.items() if k.startswith("fixed.")}, self.device, self.dtype)
            self._setup_eval()
        if self.population is not None:
            pop = {part: to({k[len(part) + 5:]: v for k, v in tensors.items() if k.startswith(f"pop.{part}.")},
                            self.device, self.dtype) for part in ("theta", "state", "data")}
            self.population = {**pop, "age": tensors["pop.age"]}
        self.iteration = meta["iteration"]
        self.history = meta["history"]


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


def checkpoint_iteration(blob: bytes) -> int:
    """The iteration a checkpoint was taken at, read from its header alone."""
    return json.loads(_safetensors_metadata(blob)["json"])["iteration"]


def _safetensors_metadata(blob: bytes) -> dict:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {})


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def json_clean(obj):
    """JSON has no NaN/inf: report them as null, in numbers, lists and dicts alike."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj
