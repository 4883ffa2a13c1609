"""Limits from the settings: request bodies, array lengths, job sizes, concurrent jobs per key and
the evaluate rate per key. Each violation is a 4xx problem+json whose ``code`` is
``<setting>_exceeded`` and whose detail names the setting and its ML3_* variable, so a client
knows which limit it hit and an operator which knob to turn."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select

from app.core.config import Settings
from app.core.errors import Problem, invalid
from app.db.models import QUEUED, RUNNING, Job
from ml3core.compare import LR_FACTORS
from ml3core.metatest import curve_steps


def exceeded(name: str, status: int, what: str, allowed, headers: dict | None = None, loc: str | None = None):
    detail = f"{what}; the limit {name} is {allowed} (ML3_{name.upper()})"
    extra = {"errors": [{"loc": loc, "msg": f"over the limit {name} ({allowed})"}]} if loc else {}
    return Problem(status, f"{name}_exceeded", detail, headers=headers, limit=name, allowed=allowed, **extra)


def at_most(settings: Settings, name: str, loc: str, value: int) -> None:
    allowed = getattr(settings, name)
    if value > allowed:
        raise exceeded(name, 422, f"{loc}: {value}", allowed, loc=loc)


MAX_DEPTH = 16  # nesting of a spec: the deepest real one is 4


def check_arrays(obj, settings: Settings, loc: str = "body", depth: int = 0) -> None:
    """Every list in a JSON document holds at most ``max_array_items`` items; the document nests at
    most ``MAX_DEPTH`` deep, and no string or key holds a NUL (PostgreSQL's text cannot)."""
    if depth > MAX_DEPTH:
        raise invalid(loc, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "\x00" in k:
                raise invalid(loc, "a NUL character in a key")
            check_arrays(v, settings, f"{loc}.{k}" if loc != "body" else str(k), depth + 1)
    elif isinstance(obj, list):
        if len(obj) > settings.max_array_items:
            allowed = settings.max_array_items
            raise exceeded("max_array_items", 413, f"{loc}: {len(obj)} items", allowed, loc=loc)
        for i, v in enumerate(obj):
            check_arrays(v, settings, f"{loc}.{i}", depth + 1)
    elif isinstance(obj, str) and "\x00" in obj:
        raise invalid(loc, "a NUL character in a string")


IMAGE_SIDE = 8  # the digits family's images: 8 x 8 pixels
IMAGES_PER_CLASS = 183  # the most images of one digit: held-out images per class when heldout_per_class is 0


def _points(task) -> tuple[int, int]:
    """(train, held-out) points of one task: a step trains on the first, metrics and the meta-objective
    read the second once."""
    if hasattr(task, "model_channels"):  # digits: shots and held-out images of each class
        return (task.classes_per_task * task.shots,
                task.classes_per_task * (task.heldout_per_class or IMAGES_PER_CLASS))
    per = getattr(task, "points", 1)
    if hasattr(task, "trajectories"):  # inverse dynamics: points per trajectory
        return per * task.trajectories, per * getattr(task, "heldout_trajectories", 0)
    return per, getattr(task, "heldout_points", 0)


def _mlp(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


@dataclass
class RunSize:
    """One estimate of a run's memory (the peak of its phases, in bytes) and work (multiply-adds).

    Per point of a task: the optimizee's and L_phi's activations (``width``) and the cost of a
    forward pass (``flops``, the weights it multiplies by); per model: its ``params``. A phase keeps
    alive seeds x tasks x (train points x width + params x 3: theta, its gradient, the update) per
    kept step (an unroll of M steps keeps M), and the held-out points' activations once. Work:
    forward + backward = 3 x the forward cost per point, train and held-out, and step (6 through an
    unroll)."""

    params: int
    width: int
    flops: int
    points: int  # train points of a task
    value_bytes: int
    heldout: int = 0  # held-out points of a task
    phases: dict = field(default_factory=dict)  # phase -> bytes
    work: int = 0

    @classmethod
    def of(cls, task, loss, dtype: str = "float32") -> RunSize:
        hidden = list(getattr(task, "model_hidden", []))
        outs = loss.pred_dim
        if hasattr(task, "model_channels"):  # digits: 64 pixels in, one logit per class of a task out
            params, width, flops = _image_model(task)
            outs = task.classes_per_task
        else:
            params = _mlp([loss.x_dim, *hidden, outs]) if hidden else outs * (loss.x_dim + 1)
            width, flops = loss.x_dim + sum(hidden) + outs, params
        # one shared L_phi per output dimension, or per class of a ce_classwise loss (weighted_ce: one per example)
        copies = outs if loss.per_output or loss.form == "ce_classwise" else 1
        width += copies * (sum(loss.hidden) + 1)
        loss_params = sum((a + 1) * b for a, b in loss.layer_sizes())
        train, heldout = _points(task)
        return cls(params, width, flops + copies * loss_params, train, 8 if dtype == "float64" else 4, heldout)

    def model_bytes(self, models: int, steps: int = 1) -> int:
        per_model = steps * (self.points * self.width + 3 * self.params) + self.heldout * self.width
        return models * per_model * self.value_bytes

    def step_work(self, models: int, steps: int) -> int:
        return models * steps * (self.points + self.heldout) * 3 * self.flops

    def add(self, phase: str, models: int, steps: int, kept_steps: int = 1, factor: int = 1) -> None:
        self.phases[phase] = max(self.phases.get(phase, 0), self.model_bytes(models, kept_steps))
        self.work += int(factor * self.step_work(models, steps))

    @property
    def peak(self) -> tuple[str, int]:
        return max(self.phases.items(), key=lambda kv: kv[1])


def _image_model(task) -> tuple[int, int, int]:
    """(parameters, activations per image, multiply-adds per image) of the digits optimizee: an MLP on
    the 64 pixels, or the CNN: two 3x3 convolutions (as unfolded patches times weights, each output
    before and after its activation) and 2x2 average pools, then a linear head on 4 positions."""
    pixels, k = IMAGE_SIDE * IMAGE_SIDE, task.classes_per_task
    if task.model != "cnn":
        sizes = [pixels, *task.model_hidden, k]
        params = _mlp(sizes)
        return params, sum(sizes), params
    c1, c2 = task.model_channels
    quarter = pixels // 4  # positions after the first pool; 4 after the second
    params = 10 * c1 + (9 * c1 + 1) * c2 + (4 * c2 + 1) * k
    width = pixels * (9 + 2 * c1) + quarter * (c1 + 9 * c1 + 2 * c2) + 4 * c2 + k
    flops = pixels * 9 * c1 + quarter * 9 * c1 * c2 + 4 * c2 * k
    return params, width, flops


def job_size(plan) -> RunSize:
    """Meta-training (unrolls), its curves (evaluation and meta-validation trainings) and the meta-test."""
    cfg, mt = plan.train, plan.meta_test
    size = RunSize.of(plan.family.config, plan.loss, cfg.dtype)
    kept = cfg.inner_steps if cfg.schedule == "unrolled" else 1
    size.add("meta-training unroll", cfg.seeds * cfg.tasks_per_batch, cfg.outer_iterations * cfg.inner_steps,
             kept, factor=2)
    curves = cfg.outer_iterations // cfg.eval_every + 1
    size.add("evaluation", cfg.seeds * cfg.eval_tasks, curves * cfg.eval_steps)
    size.add("meta-validation", cfg.seeds * cfg.validation_tasks, curves * cfg.eval_steps)
    # the publishing choice: L_phi and the plain loss at every lr factor, up to the horizon H
    size.add("publishing choice", cfg.seeds * cfg.validation_tasks * len(LR_FACTORS),
             max([cfg.train_horizon, *cfg.validation_horizons]), factor=2)
    add_meta_test(size, mt, cfg.seeds, _metrics(plan.family))
    return size


# seconds per multiply-add of ``job_size``'s count, per family: the wall time of bench/scoreboard.py's run of the
# family's defaults (5 seeds; README, 2-core AMD EPYC VM shared with 3-5 processes, one torch thread; sine and
# the 2-link arm at commit 324788d, digits at a33a4d5) over that run's ``job_size(...).work`` (7.51e12, 2.35e12,
# 4.67e13). A family without a scoreboard run is estimated with the sine family's rate.
SECONDS_PER_WORK = {"sine": 2768 / 7.513e12, "inverse-dynamics": 1690 / 2.345e12, "digits": 315 / 4.667e13}


def estimate_seconds(plan, size: RunSize | None = None) -> float:
    """An estimate of a meta-train job's wall time on a machine like the scoreboard's: its work times the
    family's measured seconds per unit of work. Only an estimate: the work model counts multiply-adds and
    leaves out per-step overheads, which dominate small models."""
    size = size or job_size(plan)
    return size.work * SECONDS_PER_WORK.get(plan.family.name, SECONDS_PER_WORK["sine"])


def _metrics(family) -> int:
    return 2 + len(family.extra_metrics)  # mse_train, mse_heldout and the family's own


def add_meta_test(size: RunSize, mt, seeds: int, metrics: int = 2) -> None:
    """Each seed trains ``tasks`` fresh models with L_phi and again with the plain loss, each at every lr
    factor of the grid (one batch of seeds x tasks x factors models; L_phi at its one lr unless
    ``tune_learned``), recording each of the family's ``metrics`` per model at every step of ``curve_steps``
    (every step up to ``steps``, each horizon, log-spaced steps up to the longest): those curves (both runs',
    and one more copy while a run's are stacked) are held with the models."""
    grid = len(mt.lr_factors)
    models = seeds * mt.tasks * grid
    size.add("meta-test", models, max([mt.steps, *mt.horizons]), factor=2 if mt.tune_learned else (grid + 1) / grid)
    rows = len(curve_steps(mt.steps, mt.horizons))
    size.phases["meta-test"] += 3 * rows * models * metrics * size.value_bytes


def check_size(size: RunSize, settings: Settings) -> None:
    phase, need = size.peak
    if need > settings.max_unroll_bytes:
        raise exceeded("max_unroll_bytes", 422, f"the {phase} needs about {need} bytes (seeds x tasks x (points "
                       "x activations + 3 x optimizee parameters) x kept steps x bytes per value)",
                       settings.max_unroll_bytes)
    if size.work > settings.max_work:
        raise exceeded("max_work", 422, f"the run needs about {size.work:.3g} multiply-adds (seeds x tasks x "
                       "steps x points x 3 x the weights of the optimizee and L_phi, over training, curves and "
                       "meta-test)", settings.max_work)


def check_job(plan, settings: Settings) -> None:
    """The size of a meta-train job (a parsed ``ml3core.api.Plan``) against the settings."""
    cfg, task, mt = plan.train, plan.family.config, plan.meta_test
    for name, loc, value in (
        ("max_seeds", "seeds", cfg.seeds),
        ("max_outer_iterations", "outer_iterations", cfg.outer_iterations),
        ("max_inner_steps", "inner_steps", cfg.inner_steps),
        ("max_hidden", "loss.hidden", max(plan.loss.hidden, default=0)),
        ("max_hidden", "task.model_hidden", max(getattr(task, "model_hidden", []), default=0)),
        ("max_tasks", "tasks_per_batch", cfg.tasks_per_batch),
        ("max_tasks", "validation_tasks", cfg.validation_tasks),
        ("max_tasks", "eval_tasks", cfg.eval_tasks),
        ("max_steps", "eval_steps", cfg.eval_steps),
        ("max_steps", "train_horizon", max([cfg.train_horizon, *cfg.validation_horizons])),
    ):
        at_most(settings, name, loc, value)
    check_meta_test(mt, settings, "meta_test.")
    check_size(job_size(plan), settings)


def check_meta_test(cfg, settings: Settings, prefix: str = "") -> None:
    """A meta-test (``MetaTestConfig``): its tasks and its longest fit."""
    at_most(settings, "max_tasks", f"{prefix}tasks", cfg.tasks)
    at_most(settings, "max_steps", f"{prefix}steps", max([cfg.steps, *cfg.horizons]))


def check_meta_test_job(family, loss, seeds: int, cfg, settings: Settings) -> None:
    """A meta-test job of a stored loss: its optimizee (``task.model_hidden`` overrides) and its size."""
    at_most(settings, "max_hidden", "task.model_hidden", max(getattr(family.config, "model_hidden", []), default=0))
    check_meta_test(cfg, settings)
    size = RunSize.of(family.config, loss)
    add_meta_test(size, cfg, seeds, _metrics(family))
    check_size(size, settings)


def loss_bytes(arch: dict, values: int, grad: bool) -> int:
    """Memory of evaluating a stored loss on ``values`` inputs at once (points, or points x classes of
    a classification loss), float32: per value its inputs and the logits and targets it comes from,
    and the layers' activations, the widest one and its pre-activation alive without a gradient, all of
    them kept for the backward pass with one (within 5 % of what a ce_classwise loss was measured to take)."""
    hidden = list(arch.get("hidden", []))
    layers = sum(hidden) if grad else max(hidden, default=0)
    return 4 * values * (len(arch.get("inputs", [])) + 2 * layers + 4)


def check_request_bytes(need: int, what: str, settings: Settings) -> None:
    """Work done in the API process (an evaluate batch, a landscape grid): refused before it starts
    when its memory estimate is over ``max_request_bytes``."""
    allowed = settings.max_request_bytes
    if need > allowed:
        raise exceeded("max_request_bytes", 413, f"{what} needs about {need} bytes of memory", allowed)


def check_active_jobs(db, api_key_id: int | None, settings: Settings, adding: int = 1) -> None:
    """Queued + running jobs of one key, with the ``adding`` a submit brings (a sweep: itself and its
    trials). Exact only while the key's row is locked (``db.lock_row``) from before this count until the
    new job is committed, as ``app.services.jobs.create_job`` does; else two concurrent submits can both pass."""
    if api_key_id is None:
        return
    n = db.scalar(select(func.count()).select_from(Job)
                  .where(Job.api_key_id == api_key_id, Job.status.in_((QUEUED, RUNNING))))
    if n + adding > settings.max_active_jobs:
        more = f" and this submit adds {adding}" if adding > 1 else ""
        raise exceeded("max_active_jobs", 429, f"this key has {n} queued or running jobs{more}",
                       settings.max_active_jobs, headers={"Retry-After": "10"})


class Slots:
    """At most ``settings.<name>`` requests of one caller at once, in this process's memory (per API
    process, like ``RateLimiter``): event streams open, or write requests in progress. ``take`` counts
    one or answers 429 with Retry-After; the function it returns gives the slot back."""

    def __init__(self, name: str, what: str, retry_after: int):
        self.name, self.what, self.retry_after = name, what, retry_after
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, settings: Settings):
        allowed = getattr(settings, self.name)
        with self._lock:
            n = self.counts.get(caller, 0)
            if n >= allowed:
                raise exceeded(self.name, 429, f"{caller} has {n} {self.what}", allowed,
                               headers={"Retry-After": str(self.retry_after)})
            self.counts[caller] = n + 1

        def release():
            with self._lock:
                self.counts[caller] -= 1
                if not self.counts[caller]:
                    del self.counts[caller]

        return release

    @contextmanager
    def held(self, caller: str, settings: Settings):
        release = self.take(caller, settings)
        try:
            yield
        finally:
            release()


class RateLimiter:
    """Token buckets per caller, in this process's memory: exact for one API process; with N
    processes behind a balancer each keeps its own buckets, so a caller gets up to N times the rate
    (a shared store such as Redis would make it global). The least recent callers are forgotten
    beyond ``max_callers``, which only ever lets them in sooner."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000):
        self.rate, self.burst, self.max_callers = rate, burst, max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """0.0 if a request may go now (and count it), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[caller] = (tokens - 1 if wait == 0.0 else tokens, now)
            if len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        return wait


def check_rate(limiter: RateLimiter, caller: str, settings: Settings) -> None:
    if settings.eval_rate <= 0:
        return
    wait = limiter.take(caller)
    if wait:
        what = f"evaluate requests of {caller} come faster than allowed (bursts of {settings.eval_burst})"
        retry = {"Retry-After": str(math.ceil(wait))}
        raise exceeded("eval_rate", 429, what, settings.eval_rate, headers=retry)


async def read_body(receive, limit: int) -> list | None:
    """The messages of a body sent without Content-Length (chunked), read up to ``limit`` bytes so
    it can be replayed; None once it is over the limit."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body"):
            return messages


def replay(messages: list, receive):
    pending = list(messages)

    async def receive_again():
        return pending.pop(0) if pending else await receive()

    return receive_again
