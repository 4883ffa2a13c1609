"""One description of every spec key (ml3core.schema): the CLI's --help and the dashboard's form read
their help and choices from it, and the form's size estimate gives a run time before submitting."""

import json
import re
import sys

import pytest
from conftest import ROOT

from app.cli.commands import make_parser
from app.core.config import Settings
from app.dashboard.views import family_defaults, family_form
from app.services.limits import estimate_seconds, job_size
from ml3core import ConfigError, schema
from ml3core.api import parse_spec
from ml3core.tasks import FAMILIES


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The app of conftest's ``client``: no job runner."""
    return Settings(data_dir=tmp_path_factory.mktemp("schema"), runner="none")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_spec_key_has_help_and_its_default_among_its_choices(family):
    plan = family_defaults(family)
    for prefix, _, fields in schema.spec_keys(family):
        for f in fields:
            key = schema.loc(prefix, f.name)
            assert schema.help_text(key, family), key
            values = schema.choices(key, family)
            if values:
                default = (plan[prefix] if prefix else plan)[f.name]
                assert default in values, (key, default, values)


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        make_parser().parse_args(argv)
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("family", ["sine", "inverse-dynamics", "digits"])
def test_train_help_lists_every_spec_key_with_the_schemas_help(family, capsys):
    shown = _help(["train", family, "--help"], capsys)
    for prefix, _, fields in schema.spec_keys(family):
        for f in fields:
            key = schema.loc(prefix, f.name)
            assert f"{key} {' '.join(schema.describe(key, family).split())}" in shown, key
    assert "--schedule SCHEDULE " + schema.describe("schedule") in shown  # a flag's help: the same text


def test_the_form_takes_help_choices_and_presets_from_the_schema():
    form = family_form("sine")
    fields = {f["loc"]: f for s in form["sections"] for f in s["fields"]}
    assert fields["schedule"]["choices"] == schema.CHOICES["schedule"] and fields["loss.form"]["choices"]
    assert all(f["help"] == schema.help_text(loc, "sine") != "" for loc, f in fields.items())
    presets = form["presets"]
    assert set(presets) == {"default", "paper"}
    paper = parse_spec({"task": {"family": "sine"}, "preset": "paper"}).to_dict()
    assert presets["paper"]["values"]["inner_steps"] == paper["inner_steps"] == 1
    assert presets["default"]["values"]["loss.form"] == "weighted_se" and "exp(a*y + b)" in presets["default"]["why"]


def test_the_run_time_estimate_reproduces_the_scoreboard_run_it_is_calibrated_on():
    """bench/scoreboard.py's sine row: 5 seeds of the defaults took 2768 s (README)."""
    sys.path.insert(0, "bench")
    import scoreboard

    spec = {"task": scoreboard.task_of("sine"), "seeds": 5, "meta_test": {"horizons": scoreboard.HORIZONS["sine"]}}
    plan = parse_spec(spec)
    assert estimate_seconds(plan) == pytest.approx(2768, rel=0.01)
    half = parse_spec({**spec, "outer_iterations": 30})  # less work, less time, by the same rate
    assert estimate_seconds(half) / estimate_seconds(plan) == pytest.approx(job_size(half).work / job_size(plan).work)


def test_the_estimate_endpoint(client):
    r = client.post("/submit/estimate", json={"task": {"family": "sine"}, "seeds": 2, "register_as": "x"})
    assert r.status_code == 200, r.text
    e = r.json()
    expected = estimate_seconds(parse_spec({"task": {"family": "sine"}, "seeds": 2}))
    assert e["seconds"] == pytest.approx(expected, abs=0.1)
    assert e["peak_bytes"] > 0 and "estimate" in e["basis"] and e["over_limit"] is None
    big = client.post("/submit/estimate", json={"task": {"family": "sine"}, "seeds": 100_000}).json()
    assert "max_seeds" in big["over_limit"]
    bad = client.post("/submit/estimate", json={"task": {"family": "sine"}, "seeds": 0})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == "seeds"


def test_the_estimate_never_reads_a_data_set(client):
    """The page takes no key: an estimate of a data-set job does not look its id up (no probing of ids)."""
    known = client.post("/submit/estimate", json={"task": {"family": "dataset", "dataset": 1}}).json()
    unknown = client.post("/submit/estimate", json={"task": {"family": "dataset", "dataset": 99999}}).json()
    assert known == unknown and known["seconds"] is None and "at submit" in known["basis"]


# -- the job spec as a JSON Schema (ml3core.schema.job_spec_schema) ------------------------------------------------
JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
              "integer": int, "number": (int, float)}


def violations(value, s: dict, at: str = "spec") -> list[str]:
    """Where ``value`` breaks JSON Schema ``s``: the keywords job_spec_schema writes (jsonschema is no
    dependency of the project)."""
    types = [s["type"]] if isinstance(s.get("type"), str) else s.get("type", [])
    numeric = ("integer", "number")
    if types and not any(isinstance(value, JSON_TYPES[t]) and not (isinstance(value, bool) and t in numeric)
                         for t in types):
        return [f"{at}: not {types}"]
    if "const" in s and value != s["const"] or "enum" in s and value not in s["enum"]:
        return [f"{at}: {value!r} not allowed"]
    if "pattern" in s and not re.search(s["pattern"], value):
        return [f"{at}: {value!r} does not match"]
    out = []
    for key in ("anyOf", "oneOf"):
        if key in s:
            fits = [sub for sub in s[key] if not violations(value, sub, at)]
            if not fits if key == "anyOf" else len(fits) != 1:
                out.append(f"{at}: {len(fits)} of {key} fit")
    if isinstance(value, dict):
        out += [f"{at}.{k}: required" for k in s.get("required", []) if k not in value]
        for k, v in value.items():
            if k in s.get("properties", {}):
                out += violations(v, s["properties"][k], f"{at}.{k}")
            elif s.get("additionalProperties") is False:
                out.append(f"{at}.{k}: not a known key")
    if isinstance(value, list) and "items" in s:
        out += [e for i, v in enumerate(value) for e in violations(v, s["items"], f"{at}[{i}]")]
    return out


def task_schema(spec_schema: dict, family: str) -> dict:
    [task] = [t for t in spec_schema["properties"]["task"]["oneOf"] if t["properties"]["family"]["const"] == family]
    return task


def at(spec_schema: dict, key: str, family: str) -> dict | None:
    """The schema of dotted spec key ``key`` (in ``family``), None where the spec has no such key."""
    *section, name = key.split(".")
    props = spec_schema["properties"]
    if section == ["task"]:
        props = task_schema(spec_schema, family)["properties"]
    elif section:
        props = props[section[0]]["properties"]
    return props.get(name)


def test_the_job_spec_schema_describes_every_key_with_its_help_and_choices(client):
    r = client.get("/v1/schemas/job-spec")
    assert r.status_code == 200, r.text
    s = r.json()
    documented = client.get("/openapi.json").json()["components"]["schemas"]["JobSpec"]  # POST /v1/jobs' body
    assert documented["properties"]["task"] == s["properties"]["task"] and documented["properties"].keys() == s[
        "properties"].keys() and documented["additionalProperties"] is False
    assert {"kind", "register_as", "preset", "task", "loss", "meta_test", "tracking", "seeds"} <= set(s["properties"])
    for key, text in schema.HELP.items():  # each key of the schema's help, in some family, with that help
        found = [at(s, key, f) for f in sorted(FAMILIES) if at(s, key, f)]
        assert found and any(p["description"] == text for p in found), key
    for family in sorted(FAMILIES):
        for key, text in schema.FAMILY_HELP.get(family, {}).items():
            assert at(s, key, family)["description"] == text, (family, key)
        for prefix, _, fields in schema.spec_keys(family):  # every key --help lists, with its help and choices
            for f in fields:
                key = schema.loc(prefix, f.name)
                p = at(s, key, family)
                assert p["description"] == schema.help_text(key, family), key
                values = schema.choices(key, family)
                if key in schema.PATTERNS:
                    assert p["examples"] == list(values) and "enum" not in p, key
                else:
                    assert p.get("enum") == (list(values) if values else None), (family, key)
    assert at(s, "task.model", "digits")["enum"] == ["mlp", "cnn"]  # a family's own choices
    assert at(s, "task.amplitude", "sine")["type"] == "array" and at(s, "task.amplitude", "inverse-dynamics")[
        "type"] == "number"


def test_presets_and_readme_specs_validate_and_the_schema_refuses_what_the_engine_does(client):
    """The schema documents and does not reject: every preset of every family, and the README's specs,
    fit it (and parse_spec takes them); an unknown key or a value outside the choices fits neither."""
    from app.jobs.runner import DEVICE

    s = client.get("/v1/schemas/job-spec").json()
    specs = []
    for family in sorted(FAMILIES):
        stored = {"dataset": "sensors"} if family == "dataset" else {}  # a data set the service stores
        for name, preset in FAMILIES[family].presets().items():
            specs.append({**preset, "task": {**preset.get("task", {}), "family": family, **stored}, "preset": name})
    readme = (ROOT / "README.md").read_text()
    posted = [json.loads(m.group(1)) for m in re.finditer(r"-d '(\{.*?\})'", readme, re.S)
              if "/v1/jobs " in readme[readme.rfind("curl ", 0, m.start()):m.start()]]
    assert [body.get("kind") for body in posted] == ["meta-train", "sweep"]
    specs += [body["base"] if body["kind"] == "sweep" else body for body in posted]
    specs += [{"task": {"family": "sine", "outliers": {"rate": 0.1}, "meta_objective": "heldout"}, "loss": None,
               "device": "cuda:1", "meta_test": {"lr_factors": [0.5, 1]}, "kind": "meta-train", "register_as": None}]
    for spec in specs:
        try:
            parse_spec(spec, ignore=("kind", "register_as"))
        except ConfigError as e:  # the spec is good; only the data set "sensors" is not stored here
            assert (e.loc, spec["task"]["family"]) == ("task.dataset", "dataset"), e
        assert violations(spec, s) == [], spec
    for bad in ({"task": {"family": "sine"}, "schedul": "online"}, {"task": {"family": "sine"}, "schedule": "x"},
                {"task": {"family": "sine", "robot": "2link"}}, {"task": {"family": "nope"}}, {"seeds": 1},
                {"task": {"family": "sine"}, "device": "gpu"}, {"task": {"family": "sine"}, "loss": {"hidden": 50}}):
        assert violations(bad, s), bad
        with pytest.raises(ConfigError):
            parse_spec(bad)
    assert schema.PATTERNS["device"] == DEVICE.pattern  # the pattern the API checks at submit
