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

from app.core.errors import Problem, invalid, not_found
from app.services import limits
from ml3core import ConfigError, schema
from ml3core.api import parse_spec
from ml3core.losses import LossSpec
from ml3core.metatest import MetaTestConfig
from ml3core.tasks import FAMILIES
from ml3core.tasks.base import preset_entries
from ml3core.train_config import TrainConfig

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

def _kind(hint) -> str:
    if isinstance(hint, types.UnionType):  # e.g. task.label_noise: float | dict: the form takes the number
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (list, tuple):
        (arg, *_) = typing.get_args(hint) or (str,)
        return f"list[{getattr(arg, '__name__', 'str')}]"
    return getattr(hint, "__name__", "str")


def _fields(family: str, prefix: str, cls, fields: list, defaults: dict) -> list[dict]:
    """The form's fields of one section: each key's type, default, help and choices (ml3core.schema)."""
    hints = typing.get_type_hints(cls)
    return [{"name": f.name, "loc": schema.loc(prefix, f.name), "type": _kind(hints[f.name]),
             "default": defaults.get(f.name), "help": schema.help_text(schema.loc(prefix, f.name), family),
             "choices": schema.choices(schema.loc(prefix, f.name), family)} for f in fields]


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
    """The submit form of a family, built from its config dataclasses, the defaults that ``parse_spec``
    fills in and each key's help and choices (ml3core.schema): a family added to ``FAMILIES`` gets its form
    with no code here. ``presets``: each preset's why and the values it runs with, per field."""
    cls = FAMILIES[name]
    plan = family_defaults(name)
    doc = (cls.__doc__ or inspect.getmodule(cls).__doc__ or "").strip()
    sections = []
    for (title, prefix), (_, dc, fields) in zip(schema.SECTIONS, schema.spec_keys(name), strict=True):
        sections.append({"title": title, "fields": _fields(name, prefix, dc, fields, plan[prefix] if prefix else plan),
                         "collapsed": prefix == "loss"})
    return {"name": name, "summary": doc.split("\n\n")[0].replace("\n", " "), "sections": sections,
            "presets": family_presets(name, sections)}


def family_presets(name: str, sections: list) -> dict:
    """{preset: {"why": ..., "values": {loc: value}}}: what each preset runs with, for the form to fill in
    (the default only, for a family whose spec needs a value first: a data set id)."""
    out = {}
    for preset, entry in preset_entries(name).items():
        try:
            plan = parse_spec({"task": {"family": name}, "preset": preset}).to_dict()
        except ConfigError:
            continue
        values = {}
        for s in sections:
            for f in s["fields"]:
                prefix, _, key = f["loc"].rpartition(".")
                values[f["loc"]] = (plan[prefix] if prefix else plan)[key]
        out[preset] = {"why": entry["why"] or "the family's own defaults", "values": values}
    return out


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


@router.post("/submit/estimate")
async def estimate(request: Request):
    """The size estimate of the job the form would submit (app.services.limits), before it is submitted:
    its work, peak memory, an estimated run time and whether it is within this server's limits."""
    settings = request.app.state.settings
    body = await request.json()
    limits.check_arrays(body, settings)
    if not isinstance(body, dict):
        raise invalid("body", "a job spec object")
    task = body.get("task")
    if isinstance(task, dict) and task.get("family") == "dataset":  # the page takes no key: it never reads a data set
        return {"seconds": None, "work": None, "peak_bytes": None, "peak_phase": None, "over_limit": None,
                "basis": "a data-set job's size depends on its rows: it is checked against the limits at submit"}
    plan = parse_spec(body, ignore=("kind", "register_as"))  # ConfigError -> 422 naming the field
    size = limits.job_size(plan)
    phase, peak = size.peak
    try:
        limits.check_job(plan, settings)
        over = None
    except Problem as e:
        over = e.detail
    return {"seconds": round(limits.estimate_seconds(plan, size), 1), "work": size.work, "peak_bytes": peak,
            "peak_phase": phase, "over_limit": over,
            "basis": "an estimate: the job's multiply-adds times the seconds per multiply-add that the family's "
                     "defaults took in bench/scoreboard.py on a loaded 2-core machine"}


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
