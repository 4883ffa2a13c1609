"""Figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LEARNED, PLAIN, SHAPED = "tab:blue", "tab:orange", "tab:green"


def _png(fig, caption: str | None = None) -> bytes:
    """The figure as PNG; ``caption`` goes under the axes (what the band is, what was trained)."""
    buf = io.BytesIO()
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=7.5, color="dimgray", wrap=True, ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.03 + 0.03 * caption.count("\n"), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _band(ax, x, rows, color, label, dashed: bool = False):
    """Mean over rows (seeds) with a min-max band (a dashed line: the mean only)."""
    a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    ax.plot(x, np.nanmean(a, 0), color=color, label=label, linestyle="--" if dashed else "-")
    if len(a) > 1 and not dashed:
        ax.fill_between(x, np.nanmin(a, 0), np.nanmax(a, 0), color=color, alpha=0.2)


def optimizee_text(model: dict | None) -> str:
    """{"model_hidden": [40, 40], "model_activation": "relu"} -> "hidden [40, 40], activation relu"."""
    return ", ".join(f"{k if k == 'model' else k.removeprefix('model_')} {v}" for k, v in (model or {}).items())


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


def meta_train_figure(history: dict, eval_steps: int, metric: str = "mse_heldout",
                      model: dict | None = None) -> bytes:
    """Review Fig. 2, and the same on meta-validation tasks: MSE after ``eval_steps`` SGD steps
    with L_phi at each meta-train iteration (band over seeds), against plain MSE training."""
    groups = list(history["eval"])
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    it = history["iteration"]
    titles = {"train_task": "Meta-train task", "validation": "Meta-validation tasks"}
    for ax, group in zip(axes[0], groups, strict=True):
        per_iter = history["eval"][group][metric]  # [iteration][seed]
        _band(ax, it, list(zip(*per_iter, strict=True)), LEARNED, "trained with learned loss")
        base = [b for b in history["baseline"][group][metric] if b is not None]
        if base:
            _band(ax, it, [[b] * len(it) for b in base], PLAIN, "trained with MSE")
        ax.set_xlabel("meta-train iteration")
        ax.set_ylabel(f"{metric.replace('_', ' ')} after {eval_steps} steps")
        ax.set_title(titles.get(group, group))
        ax.legend()
    seeds = len(history["eval"][groups[0]][metric][0])
    tested = f"\nOptimizee trained: {optimizee_text(model)}." if model else ""
    return _png(fig, f"Each point: fresh models trained {eval_steps} SGD steps with L_φ of that iteration. Line: mean "
                     f"over {_seeds(seeds)} (each the mean over its tasks); band: min-max over seeds.{tested}")


LOSES, WINS, TUNED = "#b42318", "#15803d", "black"  # a horizon where the learned loss loses is red everywhere


def steps_axis(ax, longest: int) -> None:
    """A log-scale steps axis that keeps step 0: log10(1 + k), ticks at 0, 1, 10, ... and the longest horizon."""
    ax.set_xscale("function", functions=(lambda k: np.log10(1 + np.maximum(k, 0)), lambda t: 10 ** t - 1))
    ticks = [0] + [10 ** e for e in range(int(np.log10(max(longest, 1))) + 1) if 10 ** e < 0.8 * longest]
    ax.set_xticks([*ticks, longest], [f"{t:g}" for t in [*ticks, longest]])
    ax.set_xlim(0, longest)


def ratio_verdicts(report: dict) -> list[tuple[int, float | None, bool]]:
    """(steps, learned / tuned baseline over all seeds, loses) per horizon row: loses when the ratio is
    above 1 or not finite (a learned loss that diverged)."""
    out = []
    for row in report.get("horizon", []):
        r = row.get("ratio_vs_tuned")
        out.append((row["steps"], r, r is None or r > 1))
    return out


def meta_test_figure(report: dict, metric: str = "mse_heldout", title: str = "Meta-test tasks") -> bytes:
    """Review Fig. 3 to the longest horizon (``draw_meta_test``); the caption says what the band is and,
    where the report names it, which optimizee was trained."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    draw_meta_test(ax, report, metric)
    ax.set_title(title)
    return _png(fig, meta_test_caption(report))


def draw_meta_test(ax, report: dict, metric: str) -> None:
    """Test-task ``metric`` per SGD step up to the longest horizon (log steps): the learned loss (band over
    seeds) against the plain loss at the same lr and at its best lr for each step count (the tuned baseline
    the horizon report judges by). On the report's own metric each horizon is marked with the ratio
    learned / tuned, red where the learned loss loses."""
    first = next(iter(report["curves"].values()))[metric]
    x = np.array(report.get("curve_steps") or range(len(first[0])))
    names = {"learned": ("learned loss", LEARNED), "mse": ("MSE, same lr", PLAIN), "shaped": ("shaped loss", SHAPED),
             "tuned": ("MSE, best lr for each step count (tuned)", TUNED)}
    for name, curves in report["curves"].items():
        label, color = names.get(name, (name, None))
        _band(ax, x, curves[metric], color, label, dashed=name == "tuned")
    steps_axis(ax, int(x.max()))
    if metric == report.get("metric"):
        for steps, r, loses in ratio_verdicts(report):
            color = LOSES if loses else WINS
            ax.axvline(steps, color=color, linestyle=":", linewidth=1)
            ax.annotate("diverged" if r is None else f"×{r:.2f}", (steps, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, -10), textcoords="offset points", ha="center", fontsize=8, color=color)
    ax.set_xlabel("gradient steps (log scale)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=8, loc="lower left")


def meta_test_caption(report: dict) -> str:
    """What the line and band of a meta-test figure are, and what was trained (as far as the report says)."""
    first = next(iter(report["curves"].values()), {})  # {metric: one row per seed}
    seeds = len(report.get("seed_ids") or next(iter(first.values()), []))
    tasks = f" of the mean over {report['tasks']} new tasks" if "tasks" in report else ""
    caption = f"Line: mean over {_seeds(seeds)}{tasks}; band: min-max over seeds."
    if "lr" in report:
        caption += f" Plain SGD from the same initial models, lr {report['lr']:g}."
    if "tuned" in report["curves"]:
        caption += ("\nTuned: MSE at its best lr of the grid for that many steps. ×r at a horizon: learned / tuned "
                    "(geometric mean over seeds), red where the learned loss loses.")
    tested = (report.get("optimizee") or {}).get("meta_test")
    return caption + (f"\nOptimizee tested: {optimizee_text(tested)}." if tested else "")


def landscape_figure(data: dict) -> bytes:
    """Loss over a grid: one line per curve in ``data['curves']`` ({label: values}); with
    ``data['panels']`` each curve on its own axes (curves of very different scales)."""
    panels = len(data["curves"]) if data.get("panels") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    grid = data["grid"]
    for i, (label, values) in enumerate(data["curves"].items()):
        axes[0][i % panels].plot(grid, values, label=label, color=f"C{i}")
    for ax in axes[0]:
        for x in data.get("markers", []):
            ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(data.get("xlabel", "prediction"))
        ax.set_ylabel("loss")
        ax.set_title(data.get("title", "Loss landscape"))
        ax.legend(fontsize=8)
    return _png(fig)
