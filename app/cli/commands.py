"""The ``ml3`` command line. Heavy imports happen inside each command, so ``ml3 train`` never
loads the web stack and ``ml3 serve`` never waits for matplotlib."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from app.cli.spec_flags import TRAIN_FLAGS, apply_sets
from app.jobs.allocator import keep_freed_memory
from app.jobs.tracking import Tracker
from ml3core.progress import GREEN, RED, Progress, colours
from ml3core.schema import describe, loc, spec_keys


def build_train_spec(args, family_cls) -> dict:
    spec = {}
    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
    spec.setdefault("task", {})["family"] = args.family
    if args.preset:
        spec["preset"] = args.preset
    for _, key, _, _ in TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    if args.first_order:
        spec["first_order"] = True
    for flag, (key, _, _) in getattr(family_cls, "cli_flags", {}).items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            spec["task"][key] = value
    mt = spec.setdefault("meta_test", {})
    if args.meta_test_steps is not None:
        mt["steps"] = args.meta_test_steps
    if args.meta_test_tasks is not None:
        mt["tasks"] = args.meta_test_tasks
    if args.horizons is not None:
        mt["horizons"] = [int(h) for h in args.horizons.split(",") if h]
    tracking = {k: v for k, v in (("mlflow_uri", args.mlflow), ("tensorboard", args.tensorboard)) if v}
    if tracking:
        spec.setdefault("tracking", {}).update(tracking)
    return apply_sets(spec, args.set)


def cmd_train(args) -> int:
    import torch

    from ml3core import ConfigError, Hooks
    from ml3core.api import meta_train, parse_spec
    from ml3core.tasks import FAMILIES

    torch.set_num_threads(args.threads) if args.threads else None
    spec = build_train_spec(args, FAMILIES[args.family])
    try:
        plan = parse_spec(spec)
    except ConfigError as e:
        print(f"ml3 train: invalid setting {e}", file=sys.stderr)
        return 2
    cfg = plan.train
    print(f"meta-training '{args.family}': {cfg.seeds} seeds x {cfg.outer_iterations} iterations, "
          f"M={cfg.inner_steps}, device={cfg.device}", file=sys.stderr)
    bar = Progress("")
    tracker = Tracker.for_plan(plan, os.path.basename(os.path.abspath(args.out)),
                               warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    tracker.params(plan.to_dict())

    def on_progress(done, total, metrics):
        tracker.metrics(done, metrics)
        bar(done, total, metrics, phase="meta-train")

    hooks = Hooks(on_progress=on_progress, progress_every=max(1, cfg.eval_every))
    try:
        out = meta_train(plan, hooks, on_phase=lambda phase, done, total: bar(done, total, phase=phase))
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.finish(out)
    os.makedirs(args.out, exist_ok=True)
    if out.bundle is None:
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(out.report, f, indent=1)
        print(f"ml3 train: {out.report['warnings'][0]}", file=sys.stderr)
        return 0
    out.bundle.write_dir(os.path.join(args.out, "loss"))
    for seed, bundle in zip(cfg.seed_ids, out.seed_bundles, strict=True):
        bundle.write_dir(os.path.join(args.out, "seeds", f"seed-{seed}"))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(out.report, f, indent=1)
    for name, png in out.figures.items():
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(png)
    summary(out.report, plan.family.heldout_metric)
    print(f"published loss (seed {out.report['published_seed']}): {os.path.join(args.out, 'loss')}")
    paint = colours(sys.stderr)
    for warning in out.report.get("warnings", []):
        print(paint(f"warning: {warning}", RED), file=sys.stderr)
    return 0


def summary(report: dict, metric: str = "mse_heldout") -> None:
    from ml3core.api import seed_ratio

    mt = report["meta_test"]
    plain = "MSE" if metric.startswith("mse") else "plain"
    print(f"meta-test: {mt['tasks']} held-out tasks per seed, {metric} after k steps, mean over seeds; ratios "
          f"learned/{plain} for the published seed: vs {plain} at its best lr of {len(mt.get('lr_grid', []))} "
          "(the standard), vs the same lr, both at their best lr:")
    chosen = mt["seed_ids"].index(report["published_seed"]) if report.get("published_seed") in mt["seed_ids"] else 0
    fmt = lambda v: "nan" if v is None else f"{v:.4g}"  # noqa: E731
    paint = colours(sys.stdout)
    for row in mt["horizon"]:
        seed = {k: seed_ratio(row, chosen, k) for k in ("vs_tuned", "same_lr", "both_tuned")}
        lost = seed["vs_tuned"] is None or seed["vs_tuned"] > 1
        vs_tuned = paint(f"vs tuned {fmt(seed['vs_tuned'])}{'  (LOSES)' if lost else ''}", RED if lost else GREEN)
        print(f"  k={row['steps']:>6}: learned {fmt(row['learned'].get(metric))}  {plain} {fmt(row['mse'].get(metric))}"
              f"  {plain} tuned {fmt(row.get('tuned', {}).get(metric))}   ratios: {vs_tuned}"
              f"  same lr {fmt(seed['same_lr'])}  both tuned {fmt(seed['both_tuned'])}")
    if report.get("verdict"):
        print(f"verdict (meta-validation tasks): {report['verdict']}")


MT_FLAGS = {"meta_test_steps": "steps", "meta_test_tasks": "tasks", "horizons": "horizons"}  # dest -> meta_test key


def spec_defaults(family: str) -> dict:
    """What ``ml3 train FAMILY`` runs with where no flag, --spec or --set says otherwise: argparse dest ->
    value, from the family's default preset over its own training defaults over TrainConfig's. Empty for
    a family whose defaults depend on its task (the dataset family: on the data set)."""
    from dataclasses import asdict, fields

    from ml3core.api import with_preset
    from ml3core.metatest import MetaTestConfig
    from ml3core.tasks import FAMILIES, make_family
    from ml3core.train_config import TrainConfig

    try:
        spec = with_preset({"task": {"family": family}})
        fam = make_family(spec.pop("task"))  # no resolve(): nothing is read or downloaded
        train_keys = {f.name for f in fields(TrainConfig)}
        out = {**asdict(TrainConfig()), **fam.train_defaults(), **{k: v for k, v in spec.items() if k in train_keys}}
        mt = {**asdict(MetaTestConfig()), **(spec.get("meta_test") or {})}
        out.update({dest: mt[key] for dest, key in MT_FLAGS.items()})
        out["horizons"] = ",".join(str(h) for h in out["horizons"])
        out["preset"] = "default"
        task = asdict(fam.config)
        for flag, (key, _, _) in getattr(FAMILIES[family], "cli_flags", {}).items():
            if key in task:
                out[flag.lstrip("-").replace("-", "_")] = task[key]
        return out
    except Exception:  # noqa: BLE001 -- a help screen never fails: it then shows argparse's own defaults only
        return {}


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends in its default: argparse's own, or for the options that default to the
    spec what the family's default preset runs with (computed only when help is shown). The epilog (every
    spec key) keeps its lines."""

    def __init__(self, prog, family: str | None = None, **kwargs):
        super().__init__(prog, **kwargs)
        self._family, self._defaults = family, None

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        if action.default is not None and action.default is not False:
            return f"{text} (default: %(default)s)"
        if self._family is not None and not isinstance(action, argparse._StoreTrueAction):
            if self._defaults is None:
                self._defaults = spec_defaults(self._family)
            if action.dest in self._defaults:
                return f"{text} (default: {str(self._defaults[action.dest]).replace('%', '%%')})"
        return text


def spec_epilog(family: str) -> str:
    """Every spec key of a family with its help (ml3core.schema): what --set and --spec can say."""
    lines = [TRAIN_EPILOG, "", "Every spec key (--set KEY=VALUE; the flags above set some of them):"]
    for prefix, _, fields in spec_keys(family):
        for f in fields:
            key = loc(prefix, f.name)
            lines.append(f"  {key:26s} {describe(key, family)}")
    return "\n".join(lines)


def add_train_arguments(p, name: str, cls) -> None:
    p.add_argument("--out", default=f"runs/{name}", help="output directory")
    p.add_argument("--spec", help="a JSON job spec to start from")
    p.add_argument("--preset", help="start from a named preset: default (what bench/scoreboard.py shows best "
                                    "at every horizon) or paper (the paper's code)")
    p.add_argument("--first-order", action="store_true", help="first-order meta-gradient")
    p.add_argument("--meta-test-steps", type=int, help=describe("meta_test.steps"))
    p.add_argument("--meta-test-tasks", type=int, help=describe("meta_test.tasks"))
    p.add_argument("--horizons", help=describe("meta_test.horizons") + ", comma-separated, e.g. 10,100,1000,5000")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any spec field, e.g. --set task.points=50 --set loss.hidden=[20,20]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mlflow", metavar="URI", help=describe("tracking.mlflow_uri"))
    p.add_argument("--tensorboard", metavar="DIR", help=describe("tracking.tensorboard"))
    for flag, key, typ, hlp in TRAIN_FLAGS:
        p.add_argument(flag, dest=key, type=typ, help=hlp)
    for flag, (key, typ, _) in getattr(cls, "cli_flags", {}).items():
        p.add_argument(flag, type=typ, help=describe(f"task.{key}", cls.name))


def cmd_experiment(args) -> int:
    """Meta-train one loss per task-loss variant, meta-test all against plain MSE, write the figure."""
    import torch

    from ml3core import ConfigError, Hooks
    from ml3core.experiments.inverse_dynamics import experiment
    from ml3core.tasks import FAMILIES

    torch.set_num_threads(args.threads) if args.threads else None
    spec = build_train_spec(args, FAMILIES[args.family])
    variants = tuple(v for v in args.variants.split(",") if v)
    try:
        bar = Progress("")
        hooks = Hooks(on_progress=lambda done, total, metrics: bar(done, total, metrics, phase="meta-train"),
                      progress_every=1)
        out = experiment(spec, variants, hooks=hooks, on_phase=lambda phase, done, total: bar(done, total, phase=phase))
    except ConfigError as e:
        print(f"ml3 experiment: invalid setting {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "figure7.png"), "wb") as f:
        f.write(out["figure"])
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"summary": out["summary"], "reports": out["reports"]}, f, indent=1)
    fmt = lambda v: "nan" if v is None else f"{v:.4g}"  # noqa: E731
    for name, final in out["summary"]["final"].items():
        diverged = out["summary"]["diverged_seeds"][name]
        print(f"{name:34s} held-out torque MSE {fmt(final['mse_heldout'])}, "
              f"inertia error {fmt(final['prior_heldout'])}" + (f" ({diverged} seeds diverged)" if diverged else ""))
    print(f"figure: {os.path.join(args.out, 'figure7.png')}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from ml3core import __version__
    from ml3core.tasks import FAMILIES

    parser = argparse.ArgumentParser(prog="ml3", description="Meta-learn loss functions and serve them.")
    parser.add_argument("--version", action="version", version=f"ml3 {__version__} ({version_line()})")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a loss locally (no server needed)")
    fam_sub = train.add_subparsers(dest="family", required=True)
    for name, cls in FAMILIES.items():
        p = fam_sub.add_parser(name, help=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None,
                               formatter_class=functools.partial(DefaultsHelpFormatter, family=name),
                               epilog=spec_epilog(name))
        add_train_arguments(p, name, cls)
        p.set_defaults(func=cmd_train)

    experiment = sub.add_parser("experiment", help="reproduce a figure of the paper locally")
    exp_sub = experiment.add_subparsers(dest="family", required=True)
    p = exp_sub.add_parser("inverse-dynamics", help="review Fig. 7: plain MSE vs L_phi learned with MSE / the prior")
    add_train_arguments(p, "experiment-inverse-dynamics", FAMILIES["inverse-dynamics"])
    p.add_argument("--variants", default="mse,prior,mixed", help="task losses to meta-train, comma-separated")
    p.set_defaults(func=cmd_experiment)
    add_shaping_experiment(exp_sub)

    from app.cli import service  # the service's commands (serve, db, jobs, losses, worker)

    service.add_commands(sub)
    return parser


TRAIN_EPILOG = ("Defaults are those of the family's 'default' preset; --preset, --spec and --set change them.")


def version_line() -> str:
    import platform

    import torch

    return f"torch {torch.__version__}, Python {platform.python_version()}"


def add_shaping_experiment(exp_sub) -> None:
    p = exp_sub.add_parser("shaping", help="review Figs. 4-6: shaped L_phi vs MSE-trained L_phi vs plain MSE")
    p.add_argument("--out", default="runs/shaping", help="output directory")
    p.add_argument("--spec", help="a JSON experiment config to start from (ml3core.experiments.shaping)")
    p.add_argument("--seeds", type=int, help="independent seeds of each loss")
    p.add_argument("--outer-iters", type=int, help="meta-train (outer) iterations of each loss")
    p.add_argument("--schedule", help="online (official: a phi step after every inner step) or unrolled")
    p.add_argument("--loss-form", help="weighted_se (the default: reproduces the paper's picture) or net "
                   "(the official loss network; with --set task.frequency=[-5,5] the official run)")
    p.add_argument("--test-tasks", type=int, help="held-out frequencies per seed")
    p.add_argument("--steps", type=int, help="K: SGD steps from omega0 at meta-test")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, e.g. --set task.points=1000 --set train.inner_steps=5")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=cmd_experiment_shaping)


def cmd_experiment_shaping(args) -> int:
    """Meta-train the shaped and the MSE-trained loss, meta-test both against plain MSE."""
    import torch

    from ml3core import ConfigError
    from ml3core.experiments import shaping

    torch.set_num_threads(args.threads) if args.threads else None
    spec = {}
    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
    flags = {"seeds": args.seeds, "outer_iterations": args.outer_iters, "schedule": args.schedule}
    spec.setdefault("train", {}).update({k: v for k, v in flags.items() if v is not None})
    for key in ("test_tasks", "steps"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.loss_form is not None:
        spec.setdefault("loss", {})["form"] = args.loss_form
    try:
        out = shaping.run(shaping.ShapingConfig.from_dict(apply_sets(spec, args.set)), progress=Progress)
    except ConfigError as e:
        print(f"ml3 experiment: invalid setting {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    for name, bundle in out.bundles.items():
        bundle.write_dir(os.path.join(args.out, f"loss-{name}"))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(out.report, f, indent=1)
    for name, png in out.figures.items():
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(png)
    test, lands = out.report["meta_test"], out.report["landscapes"]
    print(f"meta-test: {len(test['frequencies'][0])} held-out v per seed, {test['steps']} SGD steps from omega0 "
          f"(plain MSE at its best lr, {test['mse_lr']:g})")
    for name, m in test["methods"].items():
        held = lands["heldout"][name]
        print(f"  {shaping.LABELS[name]:32s} converged {100 * m['converged_fraction']:5.1f}%  "
              f"median |omega - v| {_or_inf(m['param_error_quartiles'][1]):.3g}  "
              f"landscape: single basin at {100 * held['single_basin_fraction']:.0f}% of held-out v")
    print(f"report and figures: {args.out}")
    return 0


def _or_inf(value):
    """A quartile the report stores as null (a diverged model) prints as inf."""
    return float("inf") if value is None else value


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    keep_freed_memory()
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
