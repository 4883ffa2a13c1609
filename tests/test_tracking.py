"""Tracking, best effort: a run's spec, curves and published loss go to MLflow (a file store here) and
TensorBoard (event files read back); a missing library or an unreachable server is one warning line."""

import sys

import pytest
import torch

from app.jobs.tracking import Tracker
from ml3core.api import meta_train, parse_spec

torch.set_num_threads(1)

SPEC = {"task": {"family": "sine", "points": 12, "heldout_points": 6, "model_hidden": [8]}, "preset": "paper",
        "seeds": 1, "outer_iterations": 4, "inner_steps": 2, "eval_every": 2, "eval_steps": 3, "validation_tasks": 2,
        "meta_test": {"tasks": 2, "steps": 5, "horizons": [5, 50]}}


def _run(tracker, plan):
    tracker.params(plan.to_dict())
    from ml3core import Hooks

    out = meta_train(plan, Hooks(on_progress=lambda d, t, m: tracker.metrics(d, m), progress_every=2))
    tracker.finish(out)
    return out


def test_mlflow_file_store_holds_params_metrics_and_the_published_loss(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file:// store
    uri = f"file://{tmp_path / 'mlruns'}"
    plan = parse_spec({**SPEC, "tracking": {"mlflow_uri": uri, "experiment": "tracking-test"}})
    warnings = []
    out = _run(Tracker.for_plan(plan, "run-1", warn=warnings.append), plan)
    assert warnings == []
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    assert run.data.params["outer_iterations"] == "4" and run.data.params["task.family"] == "sine"
    history = client.get_metric_history(run.info.run_id, "validation.mse_heldout")
    assert [m.step for m in history] == [2, 4]
    learned = client.get_metric_history(run.info.run_id, "meta_test.learned.mse_heldout")
    mt = out.report["meta_test"]
    assert [m.step for m in learned] == mt["curve_steps"] and learned[-1].step == 50
    assert learned[-1].value == pytest.approx(mt["curves"]["learned"]["mse_heldout"][0][-1], rel=1e-6)
    ratios = client.get_metric_history(run.info.run_id, "meta_test.ratio_vs_tuned")
    assert [m.step for m in ratios] == [h["steps"] for h in out.report["published_horizon"]] == [5, 50]
    assert [m.value for m in ratios] == pytest.approx([h["ratio_vs_tuned"] for h in out.report["published_horizon"]])
    files = {f.path for f in client.list_artifacts(run.info.run_id, "loss")}
    assert files == {"loss/loss.json", "loss/loss.safetensors"}


def test_tensorboard_event_files_hold_the_scalar_series(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plan = parse_spec({**SPEC, "tracking": {"tensorboard": str(tmp_path / "tb")}})
    out = _run(Tracker.for_plan(plan, "run-tb"), plan)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    series = events.Scalars("validation.mse_heldout")
    assert [e.step for e in series] == [2, 4]
    tuned = events.Scalars("meta_test.tuned.mse_heldout")
    mt = out.report["meta_test"]
    assert [e.step for e in tuned] == mt["curve_steps"]
    means = mt["curves"]["tuned"]["mse_heldout"][0]
    assert [e.value for e in tuned] == pytest.approx(means, rel=1e-6)


def test_a_missing_library_or_server_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    plan = parse_spec({**SPEC, "outer_iterations": 2, "tracking": {"mlflow_uri": "file:///nowhere"}})
    warnings = []
    out = _run(Tracker.for_plan(plan, "x", warn=warnings.append), plan)
    assert out.bundle is not None
    assert len(warnings) == 1 and "MLflow is off" in warnings[0] and "ml3[tracking]" in warnings[0]
    monkeypatch.delitem(sys.modules, "mlflow")
    pytest.importorskip("mlflow")
    warnings.clear()
    tracker = Tracker("http://127.0.0.1:9/", warn=warnings.append)  # nothing listens: refused at once
    tracker.metrics(1, {"a": 1.0})
    tracker.close()
    assert len(warnings) == 1 and warnings[0].startswith("tracking: MLflow is off for this run")


def test_a_job_may_not_write_outside_its_data_directory(tmp_path):
    plan = parse_spec({**SPEC, "tracking": {"tensorboard": "../../elsewhere", "mlflow_uri": "file:///tmp/x"}})
    warnings = []
    tracker = Tracker.for_plan(plan, "job-1", tmp_path / "tensorboard", warn=warnings.append)
    assert tracker.writer is None and tracker.mlflow is None and len(warnings) == 2
    assert not (tmp_path.parent / "elsewhere").exists()


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from app.core.config import Settings

    return Settings(data_dir=tmp_path_factory.mktemp("tracking"), runner="none")


def test_a_service_job_tracks_through_the_one_execution_path(client, settings):
    """A job's spec names a TensorBoard directory below the data directory: run_job (the path of both
    runners) writes the scalar series there; a spec that names a file store outside is one warning event."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from app.jobs.execute import run_job

    body = {**SPEC, "tracking": {"tensorboard": "team/run-1", "mlflow_uri": "file:///tmp/elsewhere"}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert run_job(r.json()["id"], "runner-a", settings) == "succeeded"
    events = EventAccumulator(str(settings.data_dir / "tensorboard" / "team" / "run-1"))
    events.Reload()
    assert [e.step for e in events.Scalars("validation.mse_heldout")] == [2, 4]
    stream = client.get(f"/v1/jobs/{r.json()['id']}/events", headers={"Accept": "text/event-stream"}).text
    assert stream.count("event: warning") == 1 and "mlflow_uri" in stream


def test_a_service_job_never_calls_an_mlflow_server_its_spec_names(tmp_path):
    """A spec's http URI would make the worker call any address: a service job logs to ML3_MLFLOW_URI only."""
    plan = parse_spec({**SPEC, "tracking": {"mlflow_uri": "http://169.254.169.254/"}})
    warnings = []
    tracker = Tracker.for_plan(plan, "job-1", tmp_path / "tensorboard", warn=warnings.append)
    assert tracker.mlflow is None and len(warnings) == 1 and "ML3_MLFLOW_URI" in warnings[0]
