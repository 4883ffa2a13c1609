"""Sweeps: a search over settings of a meta-train spec, ranked on meta-validation tasks.

Each setting the sampler picks is a trial: a child meta-train job (``parent_id``) that runs on the
queues like any job. A trial is scored by the worst ratio of its published loss (at its recommended
lr) against the tuned baseline (the plain loss at its best lr for that horizon, ml3core.validation)
over the sweep's horizons, on meta-validation tasks only; lower is better. This module is what a
sweep is, without HTTP or running it: its space and samplers, the checks at submit (every key
against the spec, every trial against the limits), and its leaderboard. ``app.jobs.sweep`` drives it.

Space: ``{"outer_lr": [0.001, 0.01]}`` (a list: choices, the only kind ``grid`` takes) or
``{"outer_lr": {"low": 1e-4, "high": 1e-2, "log": true}}`` (a range for ``random`` and ``tpe``; integer
when both ends are JSON integers). Keys are dotted paths into the base spec (``task.points``).

TPE (Optuna) is replayed without state: each call builds an in-memory study from the trials in our
database (finished ones with their scores, running ones as such) and asks it for the next setting. The
database stays the one truth (no Optuna tables beside our migrations, nothing to lose or reconcile
after a restart), and the same history with the same seed asks for the same setting.
"""

from __future__ import annotations

import copy
import itertools
import math
import random

from sqlalchemy import select

from app.core.config import Settings
from app.core.errors import invalid
from app.db.models import FINAL, SUCCEEDED, Job, iso
from app.services import limits
from ml3core import ConfigError
from ml3core.api import parse_spec
from ml3core.validation import default_horizons

SAMPLERS = ("grid", "random", "tpe")
MAX_KEYS = 8  # settings searched at once
MAX_CORNERS = 256  # tpe: the corners of the space, each checked against the limits at submit
FIXED = ("kind", "register_as", "device", "task.family")  # what a trial may not change
TPE_PARALLEL = 2  # trials of a tpe sweep in flight at once (by default): each asks with what is known


def check_sweep(body: dict, settings: Settings) -> dict:
    """The plan of a sweep (``SweepSpec`` as a dict), or a 4xx naming what is wrong: every key of the
    space is applied to the base spec and parsed, and every trial (tpe: every corner of the space, as
    its trials are not known yet) must fit the job limits, all of them together ``max_work``."""
    base = dict(body["base"])
    if base.pop("kind", "meta-train") != "meta-train":
        raise invalid("base.kind", "a sweep's base is a meta-train spec")
    if "register_as" in base:
        raise invalid("base.register_as", "the sweep's own register_as names the best trial's loss")
    base_plan = _parse(base, "base")
    trials, sampler = body["trials"], body["sampler"]
    limits.at_most(settings, "max_sweep_trials", "trials", trials)
    dims = parse_space(body["space"], sampler)
    for key, dim in dims.items():  # each key alone, at each of its values: the error names the key
        for value in (dim["choices"] if "choices" in dim else (dim["low"], dim["high"])):
            _parse(apply(base, {key: value}), f"space.{key}", f"{value!r}: ")
    if sampler == "grid":
        size = math.prod(len(d["choices"]) for d in dims.values())
        if trials > size:
            raise invalid("trials", f"{trials} trials, but the grid has {size} points")
    horizons = body.get("horizons") or validation_horizons(base_plan)
    configs = points(dims, sampler, trials, body["seed"]) if sampler != "tpe" else corners(dims)
    work = []
    for params in configs:
        plan = _parse(apply(base, params), "space", f"{params}: ")
        limits.check_job(plan, settings)
        missing = sorted(set(horizons) - set(validation_horizons(plan)))
        if missing:
            raise invalid("horizons", f"{missing} are not meta-validation horizons of the trial {params} "
                          f"({validation_horizons(plan)}; see validation_horizons)")
        work.append(limits.job_size(plan).work)
    total = sum(work) if sampler != "tpe" else max(work) * trials
    if total > settings.max_work:
        raise limits.exceeded("max_work", 422, f"the sweep's {trials} trials need about {total:.3g} multiply-adds "
                              "together", settings.max_work)
    parallel = body.get("parallel") or (trials if sampler != "tpe" else min(trials, TPE_PARALLEL))
    return {"base": base, "dims": dims, "sampler": sampler, "trials": trials, "seed": body["seed"],
            "parallel": min(parallel, trials), "horizons": sorted(set(horizons)), "device": base_plan.train.device}


def _parse(spec: dict, loc: str, prefix: str = ""):
    try:
        return parse_spec(spec)
    except ConfigError as e:
        raise invalid(loc, f"{prefix}{e}") from None


def validation_horizons(plan) -> list[int]:
    """Where a trial's published loss is judged (as ``MetaTrainer.validation_horizons``)."""
    cfg = plan.train
    return sorted(set(cfg.validation_horizons)) or default_horizons(cfg.train_horizon)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_space(space, sampler: str) -> dict:
    """{key: {"choices": [...]}} or {key: {"low", "high", "log", "int"}}, keys sorted (trials do not depend
    on the order a client wrote them in)."""
    if not isinstance(space, dict) or not 1 <= len(space) <= MAX_KEYS:
        raise invalid("space", f"an object of 1 to {MAX_KEYS} settings, e.g. {{\"outer_lr\": [0.001, 0.01]}}")
    dims = {}
    for key in sorted(space):
        value, loc = space[key], f"space.{key}"
        if key in FIXED or not key or any(not part for part in key.split(".")):
            raise invalid(loc, f"not a setting a trial may change (fixed: {', '.join(FIXED)})")
        if isinstance(value, list):
            if not value:
                raise invalid(loc, "at least one choice")
            dims[key] = {"choices": value}
        elif isinstance(value, dict):
            if set(value) - {"low", "high", "log"} or not (_number(value.get("low")) and _number(value.get("high"))):
                raise invalid(loc, "a range {\"low\": number, \"high\": number, \"log\": bool} or a list of choices")
            low, high, log = value["low"], value["high"], value.get("log", False)
            if not isinstance(log, bool) or not low < high or (log and low <= 0):
                raise invalid(loc, "low < high (and low > 0 with \"log\": true)")
            if sampler == "grid":
                raise invalid(loc, "grid takes lists of choices; ranges are for random and tpe")
            dims[key] = {"low": low, "high": high, "log": log, "int": isinstance(low, int) and isinstance(high, int)}
        else:
            raise invalid(loc, "a list of choices or a range {\"low\", \"high\", \"log\"}")
    return dims


def apply(base: dict, params: dict) -> dict:
    """The base spec with each dotted key set (objects on the way are created; a non-object is a 422)."""
    spec = copy.deepcopy(base)
    for key, value in params.items():
        *path, last = key.split(".")
        node = spec
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise invalid(f"space.{key}", f"{part} is not an object in the base spec")
        node[last] = copy.deepcopy(value)
    return spec


def get(spec: dict, key: str):
    node = spec
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def points(dims: dict, sampler: str, trials: int, seed: int) -> list[dict]:
    """The settings of every trial of a grid (its first ``trials`` points) or random sweep (drawn from
    ``seed``, so the API and every driver draw the same)."""
    keys = list(dims)
    if sampler == "grid":
        product = itertools.product(*(dims[k]["choices"] for k in keys))
        return [dict(zip(keys, values, strict=True)) for values in itertools.islice(product, trials)]
    rng = random.Random(seed)
    return [{k: _draw(rng, dims[k]) for k in keys} for _ in range(trials)]


def _draw(rng: random.Random, dim: dict):
    if "choices" in dim:
        return dim["choices"][rng.randrange(len(dim["choices"]))]
    low, high = dim["low"], dim["high"]
    if dim["int"]:
        return min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high)))))) if dim["log"] \
            else rng.randint(low, high)
    return math.exp(rng.uniform(math.log(low), math.log(high))) if dim["log"] else rng.uniform(low, high)


def corners(dims: dict) -> list[dict]:
    """Every choice of a list and both ends of a range, in every combination: what bounds a tpe sweep."""
    values = [d["choices"] if "choices" in d else [d["low"], d["high"]] for d in dims.values()]
    if math.prod(len(v) for v in values) > MAX_CORNERS:
        raise invalid("space", f"more than {MAX_CORNERS} combinations of choices and range ends to check against "
                      "the limits; search fewer settings at once")
    return [dict(zip(dims, combo, strict=True)) for combo in itertools.product(*values)]


def tpe_point(dims: dict, seed: int, history: list[tuple[dict, str, float | None]]) -> dict:
    """The next setting TPE asks for, given ``history``: (params, status, score) of the trials so far."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = {}
    for key, d in dims.items():  # choices by index: a choice may be a list (loss.hidden), Optuna's are scalars
        if "choices" in d:
            dist[key] = CategoricalDistribution(list(range(len(d["choices"]))))
        else:
            cls = IntDistribution if d["int"] else FloatDistribution
            dist[key] = cls(d["low"], d["high"], log=d["log"])
    startup = max(2, len(history) // 4 + 1) if len(history) < 10 else 10
    sampler = optuna.samplers.TPESampler(seed=seed + len(history), n_startup_trials=startup, constant_liar=True)
    study = optuna.create_study(sampler=sampler)
    for params, status, score in history:
        encoded = {k: (dims[k]["choices"].index(v) if "choices" in dims[k] else v) for k, v in params.items()}
        if status == SUCCEEDED:
            state, value = TrialState.COMPLETE, math.inf if score is None else score
        else:
            state, value = (TrialState.FAIL if status in FINAL else TrialState.RUNNING), None
        study.add_trial(create_trial(params=encoded, distributions=dist, state=state, value=value))
    asked = study.ask(dist).params
    return {k: (dims[k]["choices"][asked[k]] if "choices" in dims[k] else asked[k]) for k in dims}


def score(result: dict | None, horizons: list[int]) -> tuple[float | None, dict]:
    """A finished trial's score (None: diverged or not finished: last) and its ratio at each horizon."""
    ratios = (result or {}).get("validation_ratios") or {}
    picked = {str(h): ratios.get(str(h)) for h in horizons}
    if not picked or any(r is None for r in picked.values()):
        return None, picked
    return max(picked.values()), picked


def trial_ids(db, sweep_id: int) -> list[int]:
    return list(db.scalars(select(Job.id).where(Job.parent_id == sweep_id).order_by(Job.id)))


def trials(db, sweep: Job) -> list[dict]:
    """Every trial of a sweep, in the order they were created: id, params, status, score, ratios."""
    plan = sweep.plan
    rows = db.scalars(select(Job).where(Job.parent_id == sweep.id).order_by(Job.id))
    return [trial_json(i, job, plan) for i, job in enumerate(rows)]


def params_of(job: Job, plan: dict) -> dict:
    """A trial's setting, read back from its spec."""
    return {k: get(job.spec, k) for k in plan["dims"]}


def trial_json(index: int, job: Job, plan: dict) -> dict:
    value, ratios = score(job.result, plan["horizons"]) if job.status == SUCCEEDED else (None, {})
    return {"trial": index, "id": job.id, "status": job.status, "params": params_of(job, plan),
            "score": value, "ratios": ratios, "error": job.error, "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at), "links": {"self": f"/v1/jobs/{job.id}"}}


def leaderboard(rows: list[dict]) -> list[dict]:
    """Trials best first: succeeded ones by score (ties: the earlier trial), then the rest."""
    return sorted(rows, key=lambda t: (t["score"] is None, t["score"] or 0.0, t["trial"]))


METRIC = ("worst ratio over the horizons {horizons} of the held-out metric, the published loss at its recommended lr "
          "/ the tuned baseline at its best lr for that horizon, on meta-validation tasks (lower is better)")
