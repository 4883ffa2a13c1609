"""Pages of the dashboard. Each page is a shell: its script fetches the data from the JSON API with
the API key the user stored in the browser, so the dashboard sees exactly what the API allows."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from app.cli.spec_flags import TRAIN_FLAGS
from app.core.errors import not_found
from ml3core import ConfigError
from ml3core.api import parse_spec
from ml3core.losses import LossSpec
from ml3core.metatest import MetaTestConfig
from ml3core.tasks import FAMILIES
from ml3core.train_config import TrainConfig

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

# short help under the form fields: the CLI's for the training flags, the family's ``cli_flags`` for its
# task fields, and these for the rest
HELP = {key: text for _, key, _, text in TRAIN_FLAGS} | {
    "first_order": "drop second-order terms of the meta-gradient",
    "eval_tasks": "meta-train tasks in the curve (sampled families)",
    "validation_tasks": "meta-validation tasks: a curve and the published seed",
    "meta_test.tasks": "new tasks per seed",
    "meta_test.steps": "SGD steps of each meta-test curve",
    "meta_test.lr": "0: the inner learning rate of meta-training",
    "meta_test.horizons": "step counts of the horizon report",
    "meta_test.lr_factors": "the plain loss also trains at these multiples of the lr; the best per horizon is the "
                            "tuned baseline every ratio is judged against ([1]: the same lr only)",
    "meta_test.tune_learned": "the learned loss at its own best lr factor too (the 'both tuned' ratio)",
    "loss.inputs": "what L_φ reads: pred, target, x, level (weighted_se: the batch's log MSE, a schedule signal); "
                   "ce_classwise: prob, target, logprob of each class; weighted_ce: ce, target_prob, max_prob "
                   "of each example",
    "loss.hidden": "hidden layer widths",
    "loss.form": "net (the network is the loss), weighted_se (a learned weight on the squared error) or "
                 "ce_classwise (classification: cross-entropy plus a learned per-class correction) or "
                 "weighted_ce (classification: a learned weight on each example's cross-entropy)",
    "loss.output": "softplus, linear, square or exp",
    "loss.reduction": "mean or sum over the batch",
    "loss.per_output": "one shared net per output dimension",
    "loss.weights": "weighted_se: shared (one weight per point) or per_output (one per output, e.g. per joint)",
}
FAMILY_SET = {"pred_dim", "x_dim"}  # loss fields the task family fills in


def _kind(hint) -> str:
    if isinstance(hint, types.UnionType):  # e.g. task.label_noise: float | dict: the form takes the number
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (list, tuple):
        (arg, *_) = typing.get_args(hint) or (str,)
        return f"list[{getattr(arg, '__name__', 'str')}]"
    return getattr(hint, "__name__", "str")


def _fields(cls, defaults: dict, prefix: str, helps: dict, skip=()) -> list[dict]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        loc = f"{prefix}.{f.name}" if prefix else f.name
        out.append({"name": f.name, "loc": loc, "type": _kind(hints[f.name]), "default": defaults.get(f.name),
                    "help": helps.get(loc, "")})
    return out


def _dataclass_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def family_defaults(name: str) -> dict:
    """The spec ``parse_spec`` fills in for a family; for a family with a required field (a data
    set id) there is no such spec, so the form starts from its dataclasses' own defaults."""
    try:
        return parse_spec({"task": {"family": name}}).to_dict()
    except ConfigError:
        return {"task": {"family": name, **_dataclass_defaults(FAMILIES[name].config_cls)},
                "loss": _dataclass_defaults(LossSpec), "meta_test": _dataclass_defaults(MetaTestConfig),
                **_dataclass_defaults(TrainConfig)}


def family_form(name: str) -> dict:
    """The submit form of a family, built from its config dataclasses and the defaults that
    ``parse_spec`` fills in: a family added to ``FAMILIES`` gets its form with no code here."""
    cls = FAMILIES[name]
    plan = family_defaults(name)
    task_help = {f"task.{key}": text for key, _, text in getattr(cls, "cli_flags", {}).values()}
    doc = (cls.__doc__ or inspect.getmodule(cls).__doc__ or "").strip()
    return {
        "name": name,
        "summary": doc.split("\n\n")[0].replace("\n", " "),
        "sections": [
            {"title": "Task", "fields": _fields(cls.config_cls, plan["task"], "task", task_help)},
            {"title": "Meta-training", "fields": _fields(TrainConfig, plan, "", HELP)},
            {"title": "Meta-test", "fields": _fields(MetaTestConfig, plan["meta_test"], "meta_test", HELP)},
            {"title": "Loss network L_φ", "fields": _fields(LossSpec, plan["loss"], "loss", HELP, FAMILY_SET),
             "collapsed": True},
        ],
    }


def page(request: Request, template: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request):
    return page(request, "jobs.html", nav="jobs", title="Jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: int):
    return page(request, "job.html", nav="jobs", title=f"Job {job_id}", job_id=job_id)


@router.get("/sweeps/{job_id}", response_class=HTMLResponse)
def sweep_page(request: Request, job_id: int):
    return page(request, "sweep.html", nav="jobs", title=f"Sweep {job_id}", job_id=job_id)


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request):
    forms = [family_form(name) for name in FAMILIES]
    return page(request, "submit.html", nav="submit", title="New job", families=forms)


@router.get("/losses", response_class=HTMLResponse)
def losses_page(request: Request):
    return page(request, "losses.html", nav="losses", title="Registry")


@router.get("/losses/{name}", response_class=HTMLResponse)
def loss_page(request: Request, name: str):
    return page(request, "loss.html", nav="losses", title=name, name=name)


@router.get("/losses/{name}/versions/{version}", response_class=HTMLResponse)
def version_page(request: Request, name: str, version: int):
    return page(request, "version.html", nav="losses", title=f"{name}:{version}", name=name, version=version)


@router.get("/static/{filename}")
def static(filename: str):
    """The dashboard's own CSS and JavaScript (no CDN: the machines may have no internet)."""
    if filename not in {p.name for p in STATIC.iterdir()}:
        raise not_found(f"static file {filename!r}")
    return FileResponse(STATIC / filename, headers={"Cache-Control": "no-cache"})
