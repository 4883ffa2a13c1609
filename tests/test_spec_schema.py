"""One description of every spec key (ml3core.schema): the CLI's --help and the dashboard's form read
their help and choices from it, and the form's size estimate gives a run time before submitting."""

import sys

import pytest

from app.cli.commands import make_parser
from app.core.config import Settings
from app.dashboard.views import family_defaults, family_form
from app.services.limits import estimate_seconds, job_size
from ml3core import schema
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
