"""Meta-test curves reach the horizon report's longest horizon (recorded sparsely past ``steps``, in the
same run), the tuned baseline is drawn beside the learned loss, and a horizon where the learned loss
loses to it is red: in the PNG, in a job's result (for the jobs list) and in the CLI."""

import io
import json

import numpy as np
import pytest
import torch
from matplotlib import image

from app.cli.service import job_summary
from ml3core import plots
from ml3core.api import meta_train
from ml3core.metatest import CURVE_POINTS_PER_DECADE, curve_steps

torch.set_num_threads(1)

TASK = {"family": "sine", "points": 12, "heldout_points": 6, "model_hidden": [8], "model_activation": "tanh",
        "train_task": "sampled", "meta_objective": "heldout"}
TINY = {"task": TASK, "loss": {"form": "weighted_se", "inputs": ["target"], "hidden": [], "output": "exp",
                               "init": "baseline"},
        "seeds": 2, "outer_iterations": 2, "inner_steps": 3, "inner_lr": 0.05, "outer_lr": 0.05, "eval_every": 2,
        "eval_steps": 3, "validation_tasks": 2, "train_horizon": 20,
        "meta_test": {"tasks": 3, "steps": 5, "horizons": [5, 50, 400]}}


def test_curve_steps_are_dense_then_log_spaced_to_the_longest_horizon():
    steps = curve_steps(100, [10, 100, 1000, 5000])
    assert steps[:101] == list(range(101)) and steps[-1] == 5000 and {1000, 5000} <= set(steps)
    beyond = steps[101:]
    assert len(beyond) <= 2 * CURVE_POINTS_PER_DECADE  # 1.7 decades: bounded, not every step
    ratios = np.diff(np.log10([100, *beyond]))
    assert ratios.max() < 2.5 / CURVE_POINTS_PER_DECADE  # about even on a log axis
    assert len(curve_steps(100, [100_000])) <= 101 + 3 * CURVE_POINTS_PER_DECADE + 1
    assert curve_steps(10, [10]) == list(range(11))  # nothing past steps: every step, as before


@pytest.fixture(scope="module")
def run():
    return meta_train(TINY)


def test_curves_reach_the_longest_horizon_with_the_tuned_baseline_in_the_same_run(run):
    mt = run.report["meta_test"]
    assert mt["curve_steps"] == curve_steps(5, [5, 50, 400])  # dense to 5, then log-spaced to 400
    assert len([k for k in mt["curve_steps"] if 50 < k < 400]) >= CURVE_POINTS_PER_DECADE - 1
    assert set(mt["curves"]) == {"learned", "mse", "tuned"}
    for name, curves in mt["curves"].items():
        for rows in curves.values():
            assert len(rows) == 2 and all(len(r) == len(mt["curve_steps"]) for r in rows), name
    at = {h: mt["curve_steps"].index(h) for h in (5, 50, 400)}
    for row in mt["horizon"]:  # the curves at a horizon are the horizon report's numbers
        i = at[row["steps"]]
        for name in ("learned", "mse", "tuned"):
            mean = np.mean([r[i] for r in mt["curves"][name]["mse_heldout"]])
            assert mean == pytest.approx(row[name]["mse_heldout"], rel=1e-5), (name, row["steps"])
    tuned, same = (np.array(mt["curves"][k]["mse_heldout"]) for k in ("tuned", "mse"))
    assert (tuned <= same + 1e-6).all()  # the best lr per step count: never worse than the same lr
    assert mt["final"]["learned"]["mse_heldout"] == [r[5] for r in mt["curves"]["learned"]["mse_heldout"]]


def _red_pixels(png: bytes) -> int:
    rgb = (image.imread(io.BytesIO(png))[..., :3] * 255).round()
    return int((np.abs(rgb - [0xB4, 0x23, 0x18]).max(-1) <= 40).sum())


def test_the_png_marks_a_losing_horizon_red_and_draws_to_the_longest_horizon(run):
    mt = json.loads(json.dumps(run.report["meta_test"]))
    for row, r in zip(mt["horizon"], (0.8, 0.9, 0.7), strict=True):
        row["ratio_vs_tuned"] = r
    fig, ax = plots.plt.subplots()
    plots.draw_meta_test(ax, mt, "mse_heldout")
    assert ax.get_xlim()[1] == 400 and ax.get_xticklabels()[-1].get_text() == "400"
    assert {line.get_label() for line in ax.get_lines()} >= {"learned loss", "MSE, same lr",
                                                             "MSE, best lr for each step count (tuned)"}
    plots.plt.close(fig)
    winning = plots.meta_test_figure(mt)
    mt["horizon"][2]["ratio_vs_tuned"] = 1.3  # the learned loss loses at 400 steps
    losing = plots.meta_test_figure(mt)
    assert _red_pixels(winning) == 0 and _red_pixels(losing) > 20  # the ×1.30 label


def test_a_jobs_result_and_the_cli_say_where_the_published_loss_loses(run, monkeypatch):
    horizon = run.report["published_horizon"]
    chosen = run.result.chosen
    assert [h["steps"] for h in horizon] == [5, 50, 400]
    assert [h["ratio_vs_tuned"] for h in horizon] == [
        row["ratio_vs_tuned_per_seed"][chosen] for row in run.report["meta_test"]["horizon"]]
    job = {"id": 3, "status": "succeeded", "result": {"loss": "sine:1", "horizon": [
        {"steps": 10, "ratio_vs_tuned": 0.8}, {"steps": 1000, "ratio_vs_tuned": 1.25},
        {"steps": 5000, "ratio_vs_tuned": None}]}}
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    line = next(ln for ln in job_summary(job).splitlines() if ln.startswith("vs tuned:"))
    assert line == "vs tuned: \033[32m0.8 @10\033[0m \033[31m1.25 @1000\033[0m \033[31mdiverged @5000\033[0m"
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert "vs tuned: 0.8 @10 1.25 @1000 diverged @5000" in job_summary(job)
