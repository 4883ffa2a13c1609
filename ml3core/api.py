"""Job-level entry points: what the CLI, the service runner and the Celery worker call.

A meta-train spec is a JSON object:
    {"task": {"family": "sine", ...}, "loss": {...}, "meta_test": {...},
     "seeds": 5, "outer_iterations": 500, "inner_steps": 1, "device": "cpu", ...}
(every field but ``task`` optional; the train fields are those of ``TrainConfig``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from .artifact import Bundle
from .config import ConfigError, check, from_dict
from .engine import Hooks, MetaTrainer, TrainResult
from .inner import from_training
from .losses import LossSpec
from .metatest import MetaTestConfig, meta_test
from .tasks import FAMILIES, TaskFamily, make_family
from .train_config import TrainConfig


@dataclass
class TrackingConfig:
    """Where a run's curves, spec and published loss are logged besides its own output, best effort
    (app.jobs.tracking): nothing here changes what is trained."""

    mlflow_uri: str = ""  # "": $ML3_MLFLOW_URI where set, else no MLflow
    tensorboard: str = ""  # a directory for TensorBoard event files ("": none)
    experiment: str = "ml3"  # the MLflow experiment

    @classmethod
    def from_dict(cls, d: dict | None) -> TrackingConfig:
        return from_dict(cls, d, "tracking")


@dataclass
class Plan:
    family: TaskFamily
    loss: LossSpec
    train: TrainConfig
    meta_test: MetaTestConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def task_dict(self) -> dict:
        return {"family": self.family.name, **asdict(self.family.config)}

    def bundle(self, phi: dict, seed: int, metrics: dict, lr_factor: float = 1.0) -> Bundle:
        """One seed's phi with how it was meta-trained, the lr it recommends (``lr_factor`` x the inner lr,
        chosen on meta-validation tasks) and the input scales (and offsets) it saw, if any."""
        training = {**{k: v for k, v in asdict(self.train).items() if k not in ("seeds", "seed")}, "seed": seed,
                    "recommended_lr_factor": lr_factor,
                    "recommended_lr": float(f"{lr_factor * self.train.inner_lr:.4g}")}
        units = {"input_scales": self.family.input_scales(), "input_offsets": self.family.input_offsets()}
        return Bundle.build(phi, self.loss, self.task_dict(), training, metrics,
                            {k: v for k, v in units.items() if v} or None)

    def to_dict(self) -> dict:
        """The fully defaulted spec: what actually runs."""
        tracking = {"tracking": asdict(self.tracking)} if self.tracking != TrackingConfig() else {}
        return {"task": self.task_dict(), "loss": self.loss.to_dict(), "meta_test": asdict(self.meta_test),
                **asdict(self.train), **tracking}


def parse_spec(spec: dict, ignore: tuple[str, ...] = ()) -> Plan:
    """Validate a meta-train spec; raises ConfigError naming the first bad field."""
    check(isinstance(spec, dict), "spec", "an object")
    spec = {k: v for k, v in spec.items() if k not in ignore}
    check("task" in spec, "task", "required: {\"family\": ...}")
    spec = with_preset(spec)
    family = make_family(spec.pop("task"))
    family.resolve()
    loss_in = spec.pop("loss", None)
    check(loss_in is None or isinstance(loss_in, dict), "loss", "an object of loss settings, e.g. {\"hidden\": [50]}")
    form = loss_in.get("form") if isinstance(loss_in, dict) else None  # None: the family's own choice
    loss = LossSpec.from_dict(loss_in, **family.loss_defaults_for(form))
    mt = MetaTestConfig.from_dict(spec.pop("meta_test", None))
    tracking = TrackingConfig.from_dict(spec.pop("tracking", None))
    # CUDA availability is checked where the job runs: an API host without a GPU accepts CUDA jobs
    return Plan(family, loss, TrainConfig.from_dict({**family.train_defaults(), **spec}), mt, tracking)


def with_preset(spec: dict) -> dict:
    """The spec over its family's preset (``"preset"``, default "default"): a preset is a partial
    spec, and what the spec states wins, field by field."""
    task = spec.get("task")
    name = task.get("family") if isinstance(task, dict) else None
    preset = spec.pop("preset", "default")
    if not (isinstance(name, str) and name in FAMILIES):
        return spec  # no family to take a preset from: make_family says what is wrong with it
    presets = FAMILIES[name].presets()
    check(isinstance(preset, str) and preset in presets, "preset", f"one of {sorted(presets)}")
    return _merge(_merge(presets[preset], FAMILIES[name].preset_overlay(preset, task)), spec)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@dataclass
class Outcome:
    stopped: bool
    iteration: int
    result: TrainResult
    bundle: Bundle | None = None  # the published phi
    seed_bundles: list[Bundle] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # name -> PNG bytes


def meta_train(spec: dict | Plan, hooks: Hooks | None = None, resume: bytes | None = None,
               on_phase=None) -> Outcome:
    """Run (or resume) a meta-training job to the end: train, validate, meta-test every seed,
    and package each seed's phi as a bundle, publishing the best on meta-validation.

    ``hooks.on_progress`` hears of the meta-train iterations; ``on_phase(phase, done, total)`` of
    the phases after it: "validation" (the steps that choose the published seed and its lr),
    "meta-test" (SGD steps of the meta-test and the horizon report) and "figures" (0 of 1 when
    drawing starts, 1 of 1 at the end)."""
    plan = spec if isinstance(spec, Plan) else parse_spec(spec)
    if plan.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but this worker has no GPU")
    trainer = MetaTrainer(plan.family, plan.loss, plan.train)
    if resume is not None:
        trainer.load_state(resume)
    hooks = hooks or Hooks()
    if hooks.on_phase is None and on_phase is not None:
        hooks = replace(hooks, on_phase=on_phase)
    result = trainer.run(hooks)
    if result.stopped:
        return Outcome(True, result.iteration, result)
    cfg = plan.train
    if result.iteration == 0:  # phi is its initialisation: nothing learned, nothing to publish
        report = {"spec": plan.to_dict(), "history": result.history, "published_seed": None,
                  "warnings": ["0 outer iterations: the loss is untrained, so nothing was published"]}
        return Outcome(False, 0, result, report=report)
    factors = result.validation["lr_factor"]
    test = meta_test(plan.family, plan.loss, result.phi, cfg.seed_ids, plan.meta_test, cfg.inner,
                     cfg.device, cfg.dtype, progress=(lambda d, t: on_phase("meta-test", d, t)) if on_phase else None,
                     lr_factor=factors)
    model = optimizee(plan.task_dict())
    test["optimizee"] = {"meta_train": model, "meta_test": model, "same": True}
    report = {"spec": plan.to_dict(), "history": result.history, "validation": result.validation,
              "meta_test": test, "published_seed": result.validation["chosen_seed"], "data": plan.family.describe(),
              "verdict": result.validation["verdict"],
              "published_horizon": published_horizon(test, result.chosen),
              "warnings": losing_horizons(test, result.chosen, plan.family.heldout_metric)}
    bundles = []
    for i, seed in enumerate(cfg.seed_ids):
        metrics = {
            "seed": seed,
            "validation_heldout_mse": result.validation["scores"][i],
            "validation_heldout_mse_baseline": result.validation["mse_baseline"][i],
            "meta_test": {name: {m: v[i] for m, v in final.items()} for name, final in test["final"].items()},
            "meta_test_steps": test["steps"],
            "horizon": test["horizon"] if i == result.chosen else None,
            "verdict": result.validation["verdict"] if i == result.chosen else None,
        }
        bundles.append(plan.bundle(result.seed_phi(i), seed, metrics, factors[i]))
    if on_phase:
        on_phase("figures", 0, 1)
    from . import plots  # matplotlib: the server install's, not the base install's (loading a loss needs none)

    figures = {
        "meta_train.png": plots.meta_train_figure(result.history, cfg.eval_steps, plan.family.heldout_metric,
                                                  model=model),
        "meta_test.png": plots.meta_test_figure(test, plan.family.heldout_metric),
    }
    figures.update(plan.family.figures(plan.loss, bundles[result.chosen].params(), report))
    if on_phase:
        on_phase("figures", 1, 1)
    return Outcome(False, result.iteration, result, bundles[result.chosen], bundles, report, figures)


def seed_ratio(row: dict, chosen: int, name: str = "vs_tuned") -> float | None:
    """One seed's ratio of a horizon row (None: not finite, or not in the row)."""
    return (row.get(f"ratio_{name}_per_seed") or [None] * (chosen + 1))[chosen]


def published_horizon(test: dict, chosen: int) -> list[dict]:
    """Per horizon, the published seed's ratio against the tuned baseline: a few numbers a job's result carries
    so that a list of jobs can show where the loss loses."""
    return [{"steps": row["steps"], "ratio_vs_tuned": seed_ratio(row, chosen)} for row in test["horizon"]]


def losing_horizons(test: dict, chosen: int, metric: str) -> list[str]:
    """Where the published seed's loss is worse than the tuned baseline (the plain loss at its best lr for
    that horizon) on the meta-test tasks: said, not hidden."""
    out = []
    for row in test["horizon"]:
        ratio = seed_ratio(row, chosen)
        if ratio is None or ratio > 1:
            shown = "not finite" if ratio is None else f"{ratio:.3f}x"
            lr = row["tuned_lr"][chosen]
            out.append(f"after {row['steps']} steps the published loss's {metric} is {shown} the plain loss's "
                       f"at its best lr ({lr:.3g})")
        if "ratio_vs_best_per_seed" in row:  # noisy train points: the best of the tuned plain and robust losses
            ratio, best = row["ratio_vs_best_per_seed"][chosen], row["best_baseline_per_seed"][chosen]
            if ratio is None or ratio > 1:
                shown = "not finite" if ratio is None else f"{ratio:.3f}x"
                out.append(f"after {row['steps']} steps the published loss's {metric} is {shown} the best tuned "
                           f"baseline's ({best['name']} at lr {best['lr']:.3g})")
    return out


def parse_meta_test(bundle: Bundle, spec: dict | None = None) -> tuple[TaskFamily, list[int], MetaTestConfig]:
    """Validate a meta-test spec against a bundle (raises ConfigError): (family, seed ids, config)."""
    check(spec is None or isinstance(spec, dict), "spec", "an object")
    spec = dict(spec or {})
    overrides = spec.pop("task", {})
    check(isinstance(overrides, dict), "task", "an object of task settings")
    family = make_family({**bundle.spec["task"], **overrides})
    family.resolve()
    _check_loss_fits(bundle.loss_spec(), family.loss_defaults())
    seeds = spec.pop("seeds", 1)
    check(isinstance(seeds, (int, list)) and not isinstance(seeds, bool), "seeds",
          "a count or a list of seed ids")
    seed_ids = list(range(seeds)) if isinstance(seeds, int) else seeds
    check(0 < len(seed_ids) <= 1000 and all(isinstance(s, int) and s >= 0 for s in seed_ids), "seeds",
          "1..1000 non-negative seed ids")
    return family, seed_ids, MetaTestConfig.from_dict(spec)


def _check_loss_fits(loss: LossSpec, defaults: dict) -> None:
    """A loss reads pred/target of one width (unless per output) and x of one width."""
    for key, used in (("pred_dim", not loss.per_output), ("x_dim", "x" in loss.inputs)):
        want, have = getattr(loss, key), defaults.get(key, getattr(loss, key))
        check(not used or want == have, "task", f"the loss was meta-trained with {key} = {want}; the tasks have {have}")


def optimizee(task: dict) -> dict:
    """The optimizee's architecture as the task config states it (the ``model*`` fields)."""
    return {k: v for k, v in task.items() if k.startswith("model")}


def run_meta_test(bundle: Bundle, spec: dict | None = None, device: str = "cpu",
                  progress=None) -> tuple[dict, dict]:
    """Meta-test a stored loss: train fresh models on test tasks with it and with MSE.

    spec: {"task": {overrides of the bundle's task config}, "seeds": [0, 1] or 2, and the
    MetaTestConfig fields (tasks, steps, lr, horizons)}. Overrides may name another optimizee
    (``model_hidden``, ``model_activation``) than meta-training used: the report's ``optimizee``
    states both. ``progress(done, total)`` hears of the SGD steps (see ``meta_test``). Returns
    (report, figures).
    """
    family, seed_ids, cfg = parse_meta_test(bundle, spec)
    training = bundle.spec.get("training", {})
    opt = from_training(training)  # the grid is around the lr it was meta-trained at; L_phi at the one it recommends
    params = {k: v.to(torch.float32) for k, v in bundle.params().items()}
    factor = float(training.get("recommended_lr_factor", 1.0)) if not cfg.lr else 1.0
    report = meta_test(family, bundle.loss_spec(), params, seed_ids, cfg, opt, device, per_seed_phi=False,
                       progress=progress, lr_factor=[factor] * len(seed_ids))
    trained, tested = optimizee(bundle.spec["task"]), optimizee(asdict(family.config))
    report["optimizee"] = {"meta_train": trained, "meta_test": tested, "same": trained == tested}
    report["data"] = family.describe()
    report["loss_sha256"] = bundle.sha256
    from . import plots

    return report, {"meta_test.png": plots.meta_test_figure(report, family.heldout_metric)}


def landscape(bundle: Bundle, options: dict | None = None) -> dict:
    """The loss over a grid, as the family of the bundle defines it (see TaskFamily.landscape)."""
    family = make_family(bundle.spec["task"])
    return family.landscape(bundle.loss_spec(), bundle.params(), dict(options or {}))


def landscape_png(data: dict) -> bytes:
    from . import plots

    return plots.landscape_figure(data)
