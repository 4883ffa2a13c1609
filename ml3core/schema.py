"""One description of every spec key: its help text and, for a key with a fixed set of values, the
choices. The values themselves are checked where the spec is parsed (the config dataclasses); the CLI's
``ml3 train FAMILY --help``, the dashboard's submit form and the JSON Schema of a job spec
(``job_spec_schema``: ``GET /v1/schemas/job-spec`` and the OpenAPI document) all read their help and choices
from here."""

from __future__ import annotations

import dataclasses
import types
import typing

from .api import TrackingConfig
from .inner import OPTIMIZERS
from .losses import INITS, WEIGHTS, LossSpec
from .metatest import MetaTestConfig
from .portable import ACTIVATIONS, FORMS, OUTPUTS
from .tasks import FAMILIES, inverse_dynamics, shaped_sine
from .train_config import DTYPES, SCHEDULES, TrainConfig

HELP = {
    # meta-training (the top level of a spec)
    "seeds": "independent seeds, trained in one batched pass; the best on meta-validation is published",
    "seed": "first seed id",
    "outer_iterations": "meta-train (outer) iterations",
    "inner_steps": "M: unrolled inner steps per meta-gradient",
    "inner_lr": "alpha: the inner learning rate the loss is meta-trained for",
    "inner_optimizer": "the inner optimizer the loss is meta-trained for (differentiable in the unroll)",
    "inner_momentum": "momentum of the momentum optimizer",
    "inner_betas": "Adam's beta1, beta2",
    "outer_lr": "eta: the outer Adam learning rate",
    "tasks_per_batch": "T: tasks per meta-batch (the population of the persistent schedule)",
    "schedule": "unrolled (one phi step per unroll of fresh models), online (one per inner step) or persistent "
                "(models of every age up to train_horizon keep training)",
    "train_horizon": "H: the steps users train for; the published seed must not lose up to it",
    "validation_horizons": "steps at which meta-validation judges the seeds ([]: 10, 100, ... up to train_horizon)",
    "first_order": "drop second-order terms of the meta-gradient",
    "unroll_checkpoint": "k > 0: keep every k-th step of the unroll and recompute the rest (less memory)",
    "eval_every": "meta-train curve: evaluate every k iterations",
    "eval_steps": "SGD steps of each evaluation",
    "eval_tasks": "meta-train tasks in the curve (sampled families)",
    "validation_tasks": "meta-validation tasks: a curve and the published seed",
    "device": "cpu or cuda (a GPU worker)",
    "dtype": "float32 or float64",
    # tracking: where the run is logged besides its own output (best effort)
    "tracking.mlflow_uri": "log the spec, curves and published loss to this MLflow tracking URI ('': "
                           "$ML3_MLFLOW_URI where set)",
    "tracking.tensorboard": "write TensorBoard event files of the curves to this directory",
    "tracking.experiment": "the MLflow experiment",
    # the meta-test
    "meta_test.tasks": "new tasks per seed",
    "meta_test.steps": "SGD steps recorded at every step (past them, log-spaced up to the longest horizon)",
    "meta_test.lr": "0: the inner learning rate of meta-training",
    "meta_test.horizons": "step counts of the horizon report",
    "meta_test.lr_factors": "the plain loss also trains at these multiples of the lr; the best per horizon is the "
                            "tuned baseline every ratio is judged against ([1]: the same lr only)",
    "meta_test.tune_learned": "the learned loss at its own best lr factor too (the 'both tuned' ratio)",
    # the loss network
    "loss.form": "net (the network is the loss), weighted_se (a learned weight on the squared error), ce_classwise "
                 "(cross-entropy plus a learned per-class correction) or weighted_ce (a learned weight on each "
                 "example's cross-entropy)",
    "loss.inputs": "what L_φ reads: pred, target, x, level, abs_error (weighted_se: level is the batch's log MSE); "
                   "ce_classwise: prob, target, logprob; weighted_ce: ce, target_prob, max_prob",
    "loss.hidden": "hidden layer widths",
    "loss.activation": "activation of the hidden layers",
    "loss.bias": "bias terms in every layer",
    "loss.output": "the last layer's output function",
    "loss.reduction": "mean or sum over the batch",
    "loss.init": "initial phi; baseline: the loss starts exactly as the plain loss",
    "loss.per_output": "one shared net per output dimension",
    "loss.weights": "weighted_se: shared (one weight per point) or per_output (one per output, e.g. per joint)",
    "loss.pred_dim": "prediction dimensions the loss reads (the task family sets it)",
    "loss.x_dim": "input dimensions the loss reads (the task family sets it)",
    # the task, shared by several families
    "task.points": "train points per task",
    "task.heldout_points": "held-out points per task (metrics and the held-out meta-objective)",
    "task.model_hidden": "the optimizee's hidden layer widths",
    "task.model_activation": "the optimizee's activation",
    "task.beta": "weight of the task loss",
    "task.train_task": "fixed: one meta-train task for the run (the paper's); sampled: new tasks each iteration",
    "task.meta_objective": "train: L_T on the points the steps used (the paper's); heldout: on held-out points",
    "task.x_range": "[low, high] of the inputs",
    "task.outliers": "fraction of train targets replaced by outliers (or {rate, kind, ...})",
    "task.label_noise": "fraction of train labels flipped (or {rate, kind})",
    # sine
    "task.amplitude": "[low, high] of the sine amplitudes",
    "task.phase": "[low, high] of the sine phases",
    "task.train_amplitude": "the fixed meta-train task's amplitude",
    "task.train_phase": "the fixed meta-train task's phase",
    "task.train_x_range": "[low, high] of the meta-train task's inputs",
    # digits
    "task.classes_per_task": "k: classes per task",
    "task.shots": "train images per class",
    "task.heldout_per_class": "held-out images per class (0: as many as the split allows)",
    "task.train_classes": "digits of the meta-train (and meta-validation) tasks",
    "task.test_classes": "digits of the meta-test tasks",
    "task.validation_fraction": "share of each meta-train class's images kept for meta-validation",
    "task.objective": "L_T: cross-entropy on the held-out images or on the train images",
    "task.model": "the optimizee's architecture",
    "task.model_channels": "channels of the CNN's two convolutions",
    # inverse dynamics
    "task.robot": "2link (closed form) or iiwa (7-DOF KUKA)",
    "task.task_loss": "the task loss at meta-train",
    "task.trajectories": "trajectories per task, for the train points",
    "task.heldout_trajectories": "held-out trajectories per task",
    "task.duration": "seconds of each trajectory",
    "task.frequency": "[low, high] Hz of the trajectories",
    "task.payload": "[low, high] kg at the end of the last link",
    "task.eps": "M_theta = L·Lᵀ + eps·I",
    # shaped sine
    "task.test_frequency": "[low, high] of v at meta-test",
    "task.converged_tol": "|ω − v| below this counts as converged",
    "task.omega0": "the frequency ω every model starts from",
    # dataset
    "task.dataset": "a data set id from POST /v1/datasets",
    "task.split": "shares of the tasks for meta-train, meta-validation and meta-test",
    "task.split_seed": "seed of the task split and of each task's held-out rows",
    "task.heldout_fraction": "rows of each task never trained on",
    "task.normalize": "standardise with the meta-train tasks' mean and std",
}

FAMILY_HELP = {  # where a key means something else in a family
    "inverse-dynamics": {"task.points": "samples per trajectory, evenly spaced over its duration",
                         "task.amplitude": "fraction of half the joint range",
                         "task.beta": "mixed: weight of the torque MSE", "task.gamma": "mixed: weight of the prior"},
    "shaped-sine": {"task.frequency": "[low, high] of v at meta-train", "task.beta": "weight of the MSE in mse, mixed",
                    "task.gamma": "weight of (ω − v)² in shaping, mixed"},
}

CHOICES = {
    "schedule": SCHEDULES,
    "inner_optimizer": OPTIMIZERS,
    "dtype": tuple(DTYPES),
    "device": ("cpu", "cuda"),  # or cuda:N (PATTERNS)
    "loss.form": FORMS,
    "loss.activation": tuple(sorted(ACTIVATIONS)),
    "loss.output": tuple(sorted(OUTPUTS)),
    "loss.reduction": ("mean", "sum"),
    "loss.init": INITS,
    "loss.weights": WEIGHTS,
    "task.train_task": ("fixed", "sampled"),
    "task.meta_objective": ("train", "heldout"),
    "task.model_activation": tuple(sorted(ACTIVATIONS)),
    "task.objective": ("heldout", "train"),
}

# keys whose choices are the usual values of a pattern (device: app.jobs.runner.DEVICE, checked at submit)
PATTERNS = {"device": "cpu|cuda(:[0-9]{1,3})?"}

FAMILY_CHOICES = {  # where a key's values depend on the family
    "digits": {"task.model": ("mlp", "cnn")},
    "inverse-dynamics": {"task.model": inverse_dynamics.MODELS, "task.task_loss": inverse_dynamics.TASK_LOSSES,
                         "task.robot": tuple(inverse_dynamics.ROBOTS),
                         "task.model_activation": tuple(sorted(inverse_dynamics.DERIVATIVES))},
    "shaped-sine": {"task.task_loss": shaped_sine.TASK_LOSSES},
}



def choices(loc: str, family: str | None = None) -> tuple | None:
    """The fixed values of a key, or None (any value of its type)."""
    return FAMILY_CHOICES.get(family, {}).get(loc) or CHOICES.get(loc)


SECTIONS = (("Task", "task"), ("Meta-training", ""), ("Meta-test", "meta_test"), ("Loss network L_φ", "loss"))
FAMILY_SET = {"pred_dim", "x_dim"}  # loss fields the task family fills in


def spec_keys(family: str) -> list[tuple[str, type, list[dataclasses.Field]]]:
    """(prefix, dataclass, the fields a spec may set) per section: what --help and the form list."""
    classes = {"task": FAMILIES[family].config_cls, "": TrainConfig, "meta_test": MetaTestConfig, "loss": LossSpec}
    return [(prefix, classes[prefix],
             [f for f in dataclasses.fields(classes[prefix]) if f.init and f.name not in FAMILY_SET])
            for _, prefix in SECTIONS]


def loc(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def help_text(key: str, family: str | None = None) -> str:
    """A key's help ("" for a key of a family added without help here: tests/test_spec_schema.py says so)."""
    return FAMILY_HELP.get(family, {}).get(key) or HELP.get(key, "")


def describe(key: str, family: str | None = None) -> str:
    """The help of a key (in ``family``), with its choices."""
    values = choices(key, family)
    return f"{help_text(key, family)} (one of: {', '.join(values)})" if values else help_text(key, family)


JSON_TYPES = {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
              str: {"type": "string"}, dict: {"type": "object"}}


def _json_type(hint) -> dict:
    """The JSON Schema of a dataclass field's type, as ``config.from_dict`` accepts it (an int is a number)."""
    if typing.get_origin(hint) is list:
        return {"type": "array", "items": _json_type(typing.get_args(hint)[0])}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return {"anyOf": [_json_type(h) for h in typing.get_args(hint)]}
    return dict(JSON_TYPES[hint])


def _section(cls, prefix: str, family: str | None = None) -> dict:
    """An object of ``cls``'s fields: every field ``from_dict`` accepts, and no other."""
    hints = typing.get_type_hints(cls)
    props = {}
    for name in (f.name for f in dataclasses.fields(cls) if f.init):
        key = loc(prefix, name)
        props[name] = {**_json_type(hints[name]), "description": help_text(key, family)}
        if key in PATTERNS:
            props[name].update(pattern=f"^({PATTERNS[key]})$", examples=list(choices(key, family)))
        elif choices(key, family):
            props[name]["enum"] = list(choices(key, family))
    return {"type": "object", "properties": props, "additionalProperties": False}


def job_spec_schema() -> dict:
    """The meta-train spec (``ml3core.api.parse_spec``) as a JSON Schema: types from the config dataclasses,
    descriptions and enums from HELP and CHOICES, ``task`` one object per family. It documents a spec;
    parse_spec stays the judge of ranges and of how fields combine."""
    tasks = []
    for family in sorted(FAMILIES):
        task = _section(FAMILIES[family].config_cls, "task", family)
        task["properties"] = {"family": {"const": family, "description": "the task family"}, **task["properties"]}
        tasks.append({**task, "title": family, "required": ["family"]})
    nullable = {"type": ["object", "null"]}  # null: the defaults, as when absent
    props = {
        "task": {"description": "the task family and its settings", "oneOf": tasks},
        "preset": {"type": "string", "description": "a named partial spec of the family under what this spec "
                                                      "states (ml3core/presets.json; default: \"default\")"},
        **_section(TrainConfig, "")["properties"],
        "meta_test": {**_section(MetaTestConfig, "meta_test"), **nullable},
        "loss": {**_section(LossSpec, "loss"), **nullable},
        "tracking": {**_section(TrackingConfig, "tracking"), **nullable},
    }
    return {"type": "object", "title": "MetaTrainSpec", "required": ["task"], "properties": props,
            "additionalProperties": False}
