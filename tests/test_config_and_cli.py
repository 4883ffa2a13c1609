"""Specs are strict, ml3core stays pure, and `ml3 train sine` writes what it promises."""

import json
import os
import subprocess
import sys

import pytest
from conftest import free_port

from ml3core import ConfigError, LossBundleError, load_loss
from ml3core.api import parse_spec

ML3 = os.path.join(os.path.dirname(sys.executable), "ml3")


@pytest.mark.parametrize("spec,loc", [
    ({"task": {"family": "sine"}, "sedes": 3}, "sedes"),
    ({"task": {"family": "cosine"}}, "task.family"),
    ({"task": {"family": "sine", "points": 0}}, "task.points"),
    ({"task": {"family": "sine", "amplitude": [5, 1]}}, "task.amplitude"),
    ({"task": {"family": "sine", "points": "many"}}, "task.points"),
    ({"task": {"family": "sine"}, "inner_steps": 0}, "inner_steps"),
    ({"task": {"family": "sine"}, "outer_lr": float("nan")}, "outer_lr"),
    ({"task": {"family": "sine"}, "loss": {"activation": "swish"}}, "loss.activation"),
    ({"task": {"family": "sine"}, "loss": {"inputs": ["pred", "pred"]}}, "loss.inputs"),
    ({"task": {"family": "sine"}, "meta_test": {"steps": -1}}, "meta_test.steps"),
    ({"task": {"family": "sine"}, "device": "tpu"}, "device"),
    ({"task": {"family": "sine"}, "seeds": True}, "seeds"),
    ({}, "task"),
])
def test_bad_specs_name_the_field(spec, loc):
    with pytest.raises(ConfigError) as err:
        parse_spec(spec)
    assert err.value.loc == loc, err.value


def test_the_paper_preset_is_the_official_sine_settings():
    plan = parse_spec({"task": {"family": "sine"}, "preset": "paper"})
    assert plan.train.seeds == 5 and plan.train.outer_iterations == 500 and plan.train.inner_steps == 1
    assert plan.train.inner_lr == 1e-3 and plan.train.outer_lr == 1e-3
    assert plan.loss.hidden == [50, 50] and not plan.loss.bias and plan.loss.output == "softplus"
    assert plan.family.config.model_hidden == [100, 10] and plan.family.config.points == 100
    assert plan.to_dict()["task"]["family"] == "sine" and plan.train.schedule == "unrolled"


def test_the_default_sine_preset_covers_the_horizon_and_yields_to_the_spec():
    plan = parse_spec({"task": {"family": "sine"}})
    assert plan.train.inner_steps == 500 and plan.train.unroll_checkpoint == 25 and plan.train.train_horizon == 5000
    assert plan.loss.form == "weighted_se" and plan.loss.init == "baseline"
    assert plan.family.config.train_task == "sampled" and plan.family.config.meta_objective == "heldout"
    mine = parse_spec({"task": {"family": "sine", "points": 30}, "schedule": "online", "loss": {"hidden": [4]}})
    assert mine.train.schedule == "online" and mine.family.config.points == 30
    assert mine.loss.hidden == [4] and mine.loss.form == "weighted_se"  # field by field
    assert parse_spec(plan.to_dict()).to_dict() == plan.to_dict()  # a stored plan parses to itself
    for bad in ("nope", 3):
        with pytest.raises(ConfigError) as err:
            parse_spec({"task": {"family": "sine"}, "preset": bad})
        assert err.value.loc == "preset"


def test_ml3core_does_not_import_the_web_or_database_stack():
    code = ("import sys, ml3core, ml3core.api, ml3core.engine, ml3core.plots;"
            "bad = [m for m in ('fastapi', 'sqlalchemy', 'celery', 'starlette', 'app') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_train_sine_writes_bundles_report_and_figures(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [ML3, "train", "sine", "--preset", "paper", "--seeds", "2", "--outer-iters", "10", "--eval-every", "5",
         "--eval-steps", "5", "--meta-test-steps", "10", "--meta-test-tasks", "3", "--horizons", "10,20",
         "--threads", "1",
         "--set", "task.points=30", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "published loss" in proc.stdout
    for line in ("meta-train 10/10", "meta-test 40/40", "figures 1/1"):  # every phase reports its end
        assert line in proc.stderr, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["spec"]["task"]["points"] == 30
    assert report["history"]["iteration"] == [0, 5, 10]
    assert len(report["meta_test"]["curves"]["learned"]["mse_heldout"]) == 2  # one row per seed
    steps = report["meta_test"]["curve_steps"]  # k = 0..10, then log-spaced to the longest horizon
    assert steps[:11] == list(range(11)) and steps[-1] == 20 and len(steps) < 16
    assert len(report["meta_test"]["curves"]["learned"]["mse_heldout"][0]) == len(steps)
    assert [h["steps"] for h in report["meta_test"]["horizon"]] == [10, 20]
    for fig in ("meta_train.png", "meta_test.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for seed in (0, 1):
        assert load_loss(out / "seeds" / f"seed-{seed}").spec["training"]["seed"] == seed
    published = load_loss(out / "loss").spec
    assert published["training"]["seed"] == report["published_seed"]


def test_cli_rejects_a_bad_setting_with_exit_2(tmp_path):
    proc = subprocess.run([ML3, "train", "sine", "--inner-steps", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "inner_steps" in proc.stderr


@pytest.mark.parametrize("argv", [["jobs", "list"], ["losses", "list"], ["jobs", "watch", "1"],
                                  ["jobs", "submit", "--family", "sine"], ["datasets", "list"]])
def test_cli_against_a_closed_port_is_one_line_naming_the_url(argv):
    port = free_port()  # nothing listens there
    proc = subprocess.run([ML3, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ML3_SERVER": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"http://127.0.0.1:{port}/v1/" in lines[0] and "ml3 serve" in lines[0] and "ML3_SERVER" in lines[0]


def test_progress_bar_starts_a_line_per_phase_and_ends_each():
    import io

    from ml3core.progress import Progress

    out = io.StringIO()  # not a terminal: a phase's first and last line, and one every 5 s between
    bar = Progress("job 3", out)
    for done in range(0, 11):
        bar(done, 10, {"meta_loss": 0.5}, phase="meta-train")
    for done in (0, 50, 100):
        bar(done, 100, phase="meta-test")
    lines = out.getvalue().splitlines()
    assert [line.split()[:4] for line in lines] == [["job", "3", "meta-train", "0/10"],
                                                   ["job", "3", "meta-train", "10/10"],
                                                   ["job", "3", "meta-test", "0/100"],
                                                   ["job", "3", "meta-test", "100/100"]]
    assert "meta_loss=0.5" in lines[1]


def test_load_loss_from_a_closed_port_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1/losses/x"
    with pytest.raises(LossBundleError, match=f"GET {url}/artifact: cannot reach the server"):
        load_loss(url)


def test_cli_version_prints_the_package_version(capsys):
    from app.cli import main
    from ml3core import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"ml3 {__version__} (torch ") and __version__ != "0+unknown"


@pytest.mark.parametrize("family", ["sine", "shaped-sine"])
def test_train_help_shows_the_defaults_the_family_runs_with(family, capsys):
    """The defaults in --help are what parse_spec makes of a spec that sets nothing."""
    from app.cli.commands import make_parser

    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", family, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    plan = parse_spec({"task": {"family": family}})
    for flag, value in (("--outer-iters", plan.train.outer_iterations), ("--inner-steps", plan.train.inner_steps),
                        ("--inner-lr", plan.train.inner_lr), ("--outer-lr", plan.train.outer_lr),
                        ("--seeds", plan.train.seeds), ("--schedule", plan.train.schedule),
                        ("--meta-test-steps", plan.meta_test.steps),
                        ("--horizons", ",".join(map(str, plan.meta_test.horizons)))):
        upper = flag.lstrip("-").replace("-", "_").upper().replace("OUTER_ITERS", "OUTER_ITERATIONS")
        start = text.index(f"{flag} {upper} ")
        assert f"(default: {value})" in text[start:text.index(" --", start + 1)], (flag, value)
    assert f"--out OUT output directory (default: runs/{family})" in text
    assert "--threads THREADS torch threads (0: torch's default) (default: 0)" in text
    assert "'default' preset" in text


JOB = {"id": 7, "kind": "meta-train", "status": "succeeded",
       "progress": {"completed": 20, "total": 20, "unit": "iterations"}, "error": None,
       "links": {"self": "/v1/jobs/7"}, "spec": {"task": {"family": "sine"}}, "metrics": {"x": [1] * 50},
       "result": {"loss": "toy:3", "sha256": "ab" * 32, "verdict": "beats the tuned baseline at 10, 100",
                  "warnings": ["seed 1 diverged"]}}


class FakeClient:
    def __init__(self, *_):
        self.waited = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def submit(self, spec, idempotency_key=None):
        return {**JOB, "status": "queued", "result": None}

    def wait(self, job_id):
        self.waited.append(job_id)
        return JOB


@pytest.mark.parametrize("as_json", [False, True])
def test_jobs_submit_wait_ends_in_a_summary_or_the_json(monkeypatch, capsys, as_json):
    from app.cli import main, service

    monkeypatch.setattr(service, "_client", FakeClient)
    code = main(["jobs", "submit", "--family", "sine", "--wait", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == 0
    if as_json:
        assert json.loads(out) == JOB and "verdict: beats" in err
        return
    lines = out.splitlines()
    assert lines[0] == "job 7 (meta-train): succeeded, 20/20 iterations"
    assert f"loss:    toy:3 (sha256 {'ab' * 6}…)" in lines and "warning: seed 1 diverged" in lines
    assert "verdict: beats the tuned baseline at 10, 100 (meta-validation tasks)" in lines
    assert lines[-1].startswith("details: /v1/jobs/7 (ml3 jobs show 7") and len(lines) == 5


def test_job_summary_of_a_failed_job_and_one_that_published_nothing():
    from app.cli.service import job_summary

    failed = {**JOB, "status": "failed", "result": None, "error": {"code": "diverged", "detail": "nan loss"}}
    assert "error:   diverged: nan loss" in job_summary(failed).splitlines()
    nothing = {**JOB, "result": {"loss": None, "warnings": ["every seed lost"]}}
    lines = job_summary(nothing).splitlines()
    assert "loss:    none registered" in lines and "warning: every seed lost" in lines
