"""Experiment tracking, best effort: a meta-train run's spec, its meta-train curves, its meta-test curves
and horizon ratios, and the published loss go to MLflow and/or TensorBoard as well as to the job's own
output. The libraries are optional (``pip install ml3[tracking]``); a missing library, an unreachable
server or any error of theirs is one warning line and switches that backend off, never fails the run.

Both ``ml3 train`` and the service's jobs (app.jobs.execute) track through ``Tracker``: ``metrics`` where
the run reports progress, ``finish`` with its outcome."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("ml3.tracking")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def _numbers(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration" and v == v}


class Tracker:
    """MLflow (``mlflow_uri``) and TensorBoard (``tensorboard``, a directory); either may be empty."""

    def __init__(self, mlflow_uri: str = "", tensorboard: str = "", experiment: str = "ml3", run_name: str = "ml3",
                 warn=None):
        self.warn = warn or (lambda line: log.warning("%s", line))
        self.mlflow = self.run_id = self.writer = None
        if mlflow_uri:
            self._try("MLflow", lambda: self._start_mlflow(mlflow_uri, experiment, run_name))
        if tensorboard:
            self._try("TensorBoard", lambda: self._start_tensorboard(tensorboard))

    @classmethod
    def for_plan(cls, plan, run_name: str, tensorboard_root: Path | None = None, warn=None) -> Tracker:
        """The plan's ``tracking`` settings (MLflow at $ML3_MLFLOW_URI unless the spec names a server). Under
        ``tensorboard_root`` (a service's data directory) the TensorBoard directory is a relative path below it,
        and MLflow is the operator's $ML3_MLFLOW_URI only: a job writes no file outside its place and makes the
        worker call no address of the submitter's choosing."""
        warn = warn or (lambda line: log.warning("%s", line))
        t = plan.tracking
        uri, board = t.mlflow_uri or os.environ.get("ML3_MLFLOW_URI", ""), t.tensorboard
        if tensorboard_root is not None:
            if t.mlflow_uri and t.mlflow_uri != os.environ.get("ML3_MLFLOW_URI", ""):
                warn(f"tracking: mlflow_uri {t.mlflow_uri!r} ignored: a service job logs to the server's "
                     "ML3_MLFLOW_URI only (set it on the workers)")
                uri = os.environ.get("ML3_MLFLOW_URI", "")
            if board:
                root = tensorboard_root.resolve()
                resolved = (root / board).resolve()
                if not resolved.is_relative_to(root):
                    warn(f"tracking: tensorboard {board!r} ignored: a job's directory is a relative path below {root}")
                    board = ""
                else:
                    board = str(resolved)
        return cls(uri, board, t.experiment, run_name, warn)

    def _try(self, backend: str, action) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 -- tracking never fails a run: one line, then that backend is off
            first = (str(e).splitlines() or [""])[0]
            hint = " (pip install 'ml3[tracking]')" if isinstance(e, ImportError) else ""
            self.warn(f"tracking: {backend} is off for this run: {type(e).__name__}: {first}{hint}")
            if backend == "MLflow":
                self.mlflow = None
            else:
                self.writer = None

    def _start_mlflow(self, uri: str, experiment: str, run_name: str) -> None:
        # an unreachable server is a warning within seconds, not minutes of MLflow's retries (an operator's
        # own MLFLOW_HTTP_REQUEST_* settings win)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else client.create_experiment(experiment)
        self.run_id = client.create_run(exp_id, run_name=run_name).info.run_id
        self.mlflow = client

    def _start_tensorboard(self, directory: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=directory)

    def params(self, spec: dict) -> None:
        """The spec that actually runs: flat key = value params (MLflow) and one JSON text (TensorBoard)."""
        if self.mlflow:
            from mlflow.entities import Param

            params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)[:6000])
                      for k, v in _flat(spec).items()]
            self._try("MLflow", lambda: self.mlflow.log_batch(self.run_id, params=params))
        if self.writer:
            self._try("TensorBoard", lambda: self.writer.add_text("spec", json.dumps(spec, indent=1)))

    def metrics(self, step: int, metrics: dict) -> None:
        """Scalars at one step (the meta-train iteration): the numbers of a progress report."""
        values = _numbers(metrics)
        if self.mlflow and values:
            from mlflow.entities import Metric

            batch = [Metric(k, v, 0, step) for k, v in values.items()]
            self._try("MLflow", lambda: self.mlflow.log_batch(self.run_id, metrics=batch))
        if self.writer:
            def write():
                for k, v in values.items():
                    self.writer.add_scalar(k, v, step)
            self._try("TensorBoard", write)

    def finish(self, outcome) -> None:
        """The meta-test curves (mean over seeds, at their recorded steps), the horizon ratios and the published
        loss bundle (an MLflow artifact), then close."""
        mt = (outcome.report or {}).get("meta_test")
        if mt:
            steps = mt.get("curve_steps") or list(range(mt["steps"] + 1))
            for name, curves in mt["curves"].items():
                for metric, rows in curves.items():
                    for i, k in enumerate(steps):
                        col = [r[i] for r in rows if r[i] is not None]
                        if col:
                            self.metrics(k, {f"meta_test.{name}.{metric}": sum(col) / len(col)})
            for row in outcome.report.get("published_horizon") or []:
                if row["ratio_vs_tuned"] is not None:
                    self.metrics(row["steps"], {"meta_test.ratio_vs_tuned": row["ratio_vs_tuned"]})
        if self.mlflow and outcome.bundle is not None:
            def upload():
                with tempfile.TemporaryDirectory() as tmp:
                    outcome.bundle.write_dir(os.path.join(tmp, "loss"))
                    with open(os.path.join(tmp, "report.json"), "w") as f:
                        json.dump(outcome.report, f)
                    self.mlflow.log_artifacts(self.run_id, tmp)
            self._try("MLflow", upload)
        self.close("FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        if self.mlflow:
            self._try("MLflow", lambda: self.mlflow.set_terminated(self.run_id, status))
        if self.writer:
            self._try("TensorBoard", self.writer.close)
